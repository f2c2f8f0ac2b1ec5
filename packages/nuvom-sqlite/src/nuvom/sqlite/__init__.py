"""nuvom-sqlite: a durable queue and result store in one SQLite file.

``NUVOM_QUEUE_BACKEND=sqlite`` / ``NUVOM_RESULT_BACKEND=sqlite`` (the default
once this package is installed). See docs/sqlite.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nuvom.sqlite._db import Database
    from nuvom.sqlite._queue import SQLiteJobQueue
    from nuvom.sqlite._results import SQLiteResultBackend
    from nuvom.sqlite._schema import SCHEMA_VERSION, SchemaTooNew
    from nuvom.sqlite._settings import SQLiteSettings

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "SQLiteJobQueue",
    "SQLiteResultBackend",
    "SQLiteSettings",
    "SchemaTooNew",
]

# Each name is imported from its module on first use: a command that reads
# results (``nuvom status``) does not import the queue and the schedules.
_HOMES = {
    "SCHEMA_VERSION": "_schema",
    "Database": "_db",
    "SchemaTooNew": "_schema",
    "SQLiteJobQueue": "_queue",
    "SQLiteResultBackend": "_results",
    "SQLiteSettings": "_settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nuvom.sqlite' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nuvom.sqlite.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
