"""Backends by name: the default app's queue and results, and registration.

Backends are found by role through the entry-point groups
``nuvom.queue_backends`` and ``nuvom.result_backends`` (see
:mod:`nuvom.plugins.contracts`). :func:`register_queue_backend` /
:func:`register_result_backend` add a class at run time: from a plugin's
``start()`` into the app that starts it, otherwise into the default app.
Core's own backends are :mod:`nuvom.backends.memory` and :mod:`nuvom.backends.file`.
"""

from __future__ import annotations

from typing import Any

from nuvom._backends import BackendTable, Role, entry_point_names, table_being_started
from nuvom._settings import Settings
from nuvom.app import default_app
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

__all__ = [
    "default_backend_name",
    "get_queue_backend",
    "get_result_backend",
    "installed_backend_names",
    "register_queue_backend",
    "register_result_backend",
    "reset_backends",
    "resolve_backend_names",
    "set_backends",
]


def _table() -> BackendTable:
    return table_being_started() or default_app().backends


def register_queue_backend(name: str, cls: Any, *, override: bool = True) -> None:
    """Make ``cls`` available as ``NUVOM_QUEUE_BACKEND=name``. ``override=False``
    keeps a class already registered under that name."""
    _table().register("queue", name, cls, override=override)


def register_result_backend(name: str, cls: Any, *, override: bool = True) -> None:
    """Make ``cls`` available as ``NUVOM_RESULT_BACKEND=name``; a result backend
    written to the earlier nuvom's interface is adapted."""
    _table().register("result", name, cls, override=override)


def installed_backend_names(role: Role) -> list[str]:
    """Names in the role's entry-point group (nothing imported or started)."""
    return entry_point_names(role)


def default_backend_name() -> tuple[str, str]:
    """``(name, why)`` of the backend used when none is configured."""
    return default_app().backends.default_name()


def resolve_backend_names(settings: Settings | None = None) -> dict[Role, tuple[str, str]]:
    """``{"queue": (name, why), "result": (name, why)}`` for ``settings`` (default:
    the default app's). Starts no plugin."""
    app = default_app() if settings is None else default_app().derive(settings)
    return app.backend_names()


def get_queue_backend() -> BaseJobQueue:
    """The default app's queue."""
    return default_app().queue


def get_result_backend() -> BaseResultBackend:
    """The default app's result backend."""
    return default_app().results


def set_backends(queue: BaseJobQueue | None = None, results: BaseResultBackend | None = None) -> None:
    """Make the default app use these backend instances (embedding and tests)."""
    default_app().set_backends(queue, results)


def reset_backends() -> None:
    """Close the default app's backends; the next use builds them from settings again."""
    default_app().close()
