"""The process's queue and result backends, chosen by name from settings.

Names resolve through :mod:`nuvom.plugins.registry`, which backend plugins
(core's own ``memory`` and ``file`` included) fill from their ``start()``.
"""

from __future__ import annotations

import threading

from nuvom.config import Settings, get_settings
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend
from nuvom.plugins.loader import get_plugin_manager
from nuvom.plugins.registry import (
    get_queue_backend_class,
    get_result_backend_class,
    queue_backend_names,
)

__all__ = [
    "default_backend_name",
    "get_queue_backend",
    "get_result_backend",
    "reset_backends",
    "resolve_backend_names",
    "set_backends",
]

_lock = threading.RLock()
_queue: BaseJobQueue | None = None
_results: BaseResultBackend | None = None

# Preferred when nothing is configured: durable first, so that a job queued
# by one process is seen by a worker in another.
_DEFAULT_ORDER = ("sqlite", "file")


def default_backend_name() -> tuple[str, str]:
    """``(name, why)`` of the backend used when none is configured."""
    available = queue_backend_names()
    for name in _DEFAULT_ORDER:
        if name in available:
            why = "nuvom-sqlite is installed" if name == "sqlite" else "nuvom-sqlite is not installed"
            return name, f"default: {why}"
    return "memory", "default: no durable backend is installed"


def resolve_backend_names(settings: Settings) -> dict[str, tuple[str, str]]:
    """``{"queue": (name, why), "result": (name, why)}`` after starting backend plugins."""
    get_plugin_manager().start(settings, backends_only=True)
    default = default_backend_name()
    return {
        "queue": (settings.queue_backend, "NUVOM_QUEUE_BACKEND") if settings.queue_backend else default,
        "result": (settings.result_backend, "NUVOM_RESULT_BACKEND") if settings.result_backend else default,
    }


def get_queue_backend() -> BaseJobQueue:
    global _queue
    if _queue is None:
        with _lock:
            if _queue is None:
                settings = get_settings()
                name = resolve_backend_names(settings)["queue"][0]
                _queue = get_queue_backend_class(name)(settings)
    return _queue


def get_result_backend() -> BaseResultBackend:
    global _results
    if _results is None:
        with _lock:
            if _results is None:
                settings = get_settings()
                name = resolve_backend_names(settings)["result"][0]
                _results = get_result_backend_class(name)(settings)
    return _results


def set_backends(queue: BaseJobQueue | None = None, results: BaseResultBackend | None = None) -> None:
    """Use these backend instances in this process (embedding and tests)."""
    global _queue, _results
    with _lock:
        if queue is not None:
            _queue = queue
        if results is not None:
            _results = results


def reset_backends() -> None:
    """Close and forget the backends; the next use builds them from settings again."""
    global _queue, _results
    with _lock:
        for backend in (_queue, _results):
            if backend is not None:
                backend.close()
        _queue = _results = None
