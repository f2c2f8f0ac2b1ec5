"""nuvom-sqlite: a durable queue and result store in one SQLite file.

``NUVOM_QUEUE_BACKEND=sqlite`` / ``NUVOM_RESULT_BACKEND=sqlite`` (the default
once this package is installed). See docs/sqlite.md.
"""

from __future__ import annotations

from nuvom.sqlite._db import SCHEMA_VERSION, Database, SchemaTooNew
from nuvom.sqlite._queue import SQLiteJobQueue
from nuvom.sqlite._results import SQLiteResultBackend
from nuvom.sqlite._settings import SQLiteSettings

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "SQLiteJobQueue",
    "SQLiteResultBackend",
    "SQLiteSettings",
    "SchemaTooNew",
]
