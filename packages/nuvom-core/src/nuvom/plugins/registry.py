"""Backends registered by name. Plugins call these from ``Plugin.start()``."""

from __future__ import annotations

import threading
from typing import TypeVar

from nuvom.errors import BackendError
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

__all__ = [
    "get_queue_backend_class",
    "get_result_backend_class",
    "queue_backend_names",
    "register_queue_backend",
    "register_result_backend",
    "result_backend_names",
]

_lock = threading.Lock()
_queues: dict[str, type[BaseJobQueue]] = {}
_results: dict[str, type[BaseResultBackend]] = {}


def register_queue_backend(name: str, cls: type[BaseJobQueue]) -> None:
    """Make ``cls`` available as ``NUVOM_QUEUE_BACKEND=name`` (last registration wins)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseJobQueue)):
        raise BackendError(f"queue backend {name!r}: {cls!r} does not subclass BaseJobQueue")
    with _lock:
        _queues[name.lower()] = cls


def register_result_backend(name: str, cls: type[BaseResultBackend]) -> None:
    """Make ``cls`` available as ``NUVOM_RESULT_BACKEND=name`` (last registration wins)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseResultBackend)):
        raise BackendError(f"result backend {name!r}: {cls!r} does not subclass BaseResultBackend")
    with _lock:
        _results[name.lower()] = cls


def queue_backend_names() -> list[str]:
    with _lock:
        return sorted(_queues)


def result_backend_names() -> list[str]:
    with _lock:
        return sorted(_results)


def get_queue_backend_class(name: str) -> type[BaseJobQueue]:
    return _lookup(_queues, name, "queue")


def get_result_backend_class(name: str) -> type[BaseResultBackend]:
    return _lookup(_results, name, "result")


B = TypeVar("B")


def _lookup(table: dict[str, B], name: str, role: str) -> B:
    with _lock:
        cls = table.get(name.lower())
        installed = sorted(table)
    if cls is None:
        raise BackendError(
            f"unknown {role} backend {name!r} (NUVOM_{role.upper()}_BACKEND); installed: "
            f"{', '.join(installed) or 'none'}; install the package that provides it "
            "(e.g. pip install nuvom-sqlite)"
        )
    return cls
