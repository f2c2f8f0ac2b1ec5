"""Backends by role, the OpenTelemetry way: an entry-point group per role
(``nuvom.queue_backends``, ``nuvom.result_backends``) whose entry name is the
configuration value, e.g. in nuvom-sqlite's ``pyproject.toml``::

    [project.entry-points."nuvom.queue_backends"]
    sqlite = "nuvom.sqlite:SQLiteJobQueue"

Choosing a backend loads that one class; nothing else is imported or started.
Classes registered at run time (``register_queue_backend`` from a plugin's
``start()``, as the earlier nuvom's plugins did, or from user code) are kept
per app in a :class:`BackendTable` and win over entry points.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from nuvom.errors import BackendError
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

__all__ = [
    "DEFAULT_ORDER",
    "GROUPS",
    "BackendTable",
    "Role",
    "entry_point_names",
    "registering_into",
]

Role = Literal["queue", "result"]
GROUPS: dict[Role, str] = {"queue": "nuvom.queue_backends", "result": "nuvom.result_backends"}
_BASES: dict[Role, type] = {"queue": BaseJobQueue, "result": BaseResultBackend}

#: Preferred when nothing is configured: durable first, so that a job queued
#: by one process is seen by a worker in another.
DEFAULT_ORDER = ("sqlite", "file")


def _entry_points(role: Role) -> dict[str, EntryPoint]:
    return _scan()[role]


def _scan() -> dict[Role, dict[str, EntryPoint]]:
    """Both roles' entry points from one read of the installed distributions'
    metadata (each read opens every distribution: ~5-15 ms in a large environment)."""
    every = entry_points()
    found: dict[Role, dict[str, EntryPoint]] = {}
    for role, group in GROUPS.items():
        found[role] = {}
        for ep in every.select(group=group):
            found[role].setdefault(ep.name.lower(), ep)
    return found


def entry_point_names(role: Role) -> list[str]:
    """Backend names installed for ``role`` (read from metadata; nothing imported)."""
    return sorted(_entry_points(role))


class BackendTable:
    """The backend classes an app knows by name: registered ones, then entry points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registered: dict[Role, dict[str, type[Any]]] = {"queue": {}, "result": {}}
        # Read once per table: a command that opens a queue and a result backend
        # would otherwise read the metadata of every installed distribution three times.
        self._installed: dict[Role, dict[str, EntryPoint]] | None = None

    def _entry_points(self, role: Role, *, fresh: bool = False) -> dict[str, EntryPoint]:
        installed = self._installed
        if installed is None or fresh:
            installed = self._installed = _scan()
        return installed[role]

    def register(self, role: Role, name: str, cls: Any, *, override: bool = True) -> None:
        """Make ``cls`` the ``role`` backend called ``name``. With ``override=False``
        a name already registered keeps its class."""
        adapted = adapt_backend_class(role, name, cls)
        with self._lock:
            table = self._registered[role]
            if not override and name.lower() in table:
                return
            table[name.lower()] = adapted

    def registered_names(self, role: Role) -> list[str]:
        """Names registered at run time (not entry points)."""
        with self._lock:
            return sorted(self._registered[role])

    def names(self, role: Role) -> list[str]:
        with self._lock:
            registered = set(self._registered[role])
        return sorted(registered | set(self._entry_points(role)))

    def find(self, role: Role, name: str) -> type[Any] | None:
        """The class for ``name``, loading only its entry point; ``None`` if unknown."""
        key = name.lower()
        with self._lock:
            cls = self._registered[role].get(key)
        if cls is not None:
            return cls
        ep = self._entry_points(role).get(key)
        if ep is None:
            # Installed since the table read the metadata (a test, a notebook)?
            ep = self._entry_points(role, fresh=True).get(key)
        if ep is None:
            return None
        try:
            loaded = ep.load()
        except Exception as exc:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "its distribution"
            raise BackendError(
                f"{role} backend {name!r} ({ep.value}, from {dist}) could not be imported: "
                f"{type(exc).__name__}: {exc}; reinstall that package"
            ) from None
        return adapt_backend_class(role, name, loaded)

    def lookup(self, role: Role, name: str) -> type[Any]:
        cls = self.find(role, name)
        if cls is None:
            raise BackendError(
                f"unknown {role} backend {name!r} (NUVOM_{role.upper()}_BACKEND); installed: "
                f"{', '.join(self.names(role)) or 'none'}; install the package that provides it "
                "(e.g. pip install nuvom-sqlite)"
            )
        return cls

    def default_name(self) -> tuple[str, str]:
        """``(name, why)`` of the backend used when none is configured."""
        available = set(self.names("queue"))
        for name in DEFAULT_ORDER:
            if name in available:
                why = "nuvom-sqlite is installed" if name == "sqlite" else "nuvom-sqlite is not installed"
                return name, f"default: {why}"
        return "memory", "default: no durable backend is installed"


def adapt_backend_class(role: Role, name: str, cls: Any) -> type[Any]:
    """``cls`` if it implements the role's base class; a backend written to the
    earlier nuvom's interface without subclassing (a result backend with
    ``set_result``/``set_error``/``get_result``, a queue with ``enqueue``/
    ``dequeue``/``pop_batch``/``qsize``/``clear``) is wrapped by an adapter;
    anything else is refused."""
    base = _BASES[role]
    if isinstance(cls, type) and issubclass(cls, base):
        return cls
    if role == "result" and isinstance(cls, type):
        from nuvom._compat import LegacyResultBackend, looks_like_legacy_result_backend

        if looks_like_legacy_result_backend(cls):
            return LegacyResultBackend.wrapping(cls)
    if role == "queue" and isinstance(cls, type):
        from nuvom._compat import LegacyJobQueue, looks_like_legacy_queue

        if looks_like_legacy_queue(cls):
            return LegacyJobQueue.wrapping(cls)
    raise BackendError(f"{role} backend {name!r}: {cls!r} does not subclass {base.__name__}")


_current_table: contextvars.ContextVar[BackendTable | None] = contextvars.ContextVar(
    "nuvom_backend_table", default=None
)


@contextlib.contextmanager
def registering_into(table: BackendTable) -> Iterator[None]:
    """While a plugin of an app starts, ``register_*_backend`` calls go to that app's table."""
    token = _current_table.set(table)
    try:
        yield
    finally:
        _current_table.reset(token)


def table_being_started() -> BackendTable | None:
    return _current_table.get()
