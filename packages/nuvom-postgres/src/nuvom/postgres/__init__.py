"""nuvom-postgres: a queue and result store in PostgreSQL, shared by workers
and producers on any number of hosts, with jobs queued in the application's
own transaction (``task.delay_in(connection, ...)``).

``NUVOM_QUEUE_BACKEND=postgres`` / ``NUVOM_RESULT_BACKEND=postgres`` with
``NUVOM_POSTGRES_URL=postgresql://user@host/dbname``. See docs/postgres.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nuvom.postgres._queue import PostgresJobQueue
    from nuvom.postgres._results import PostgresResultBackend
    from nuvom.postgres._schema import SCHEMA_VERSION, SchemaTooNew
    from nuvom.postgres._settings import PostgresSettings, load_postgres_settings, redact_url

__all__ = [
    "SCHEMA_VERSION",
    "PostgresJobQueue",
    "PostgresResultBackend",
    "PostgresSettings",
    "SchemaTooNew",
    "load_postgres_settings",
    "redact_url",
]

# Each name is imported from its module on first use: a command that reads
# nothing but the settings (``nuvom config``) does not import psycopg.
_HOMES = {
    "SCHEMA_VERSION": "_schema",
    "SchemaTooNew": "_schema",
    "PostgresJobQueue": "_queue",
    "PostgresResultBackend": "_results",
    "PostgresSettings": "_settings",
    "load_postgres_settings": "_settings",
    "redact_url": "_settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nuvom.postgres' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nuvom.postgres.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
