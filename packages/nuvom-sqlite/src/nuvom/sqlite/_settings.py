"""nuvom-sqlite's settings: ``NUVOM_SQLITE_*`` and ``NUVOM_RESULT_TTL_SECS``."""

from __future__ import annotations

from pathlib import Path

from nuvom.config import EnvSettings, Settings, get_settings, read_settings
from pydantic import Field

__all__ = ["DEFAULT_FILE_NAME", "SQLiteSettings", "load_sqlite_settings", "resolve_paths"]

DEFAULT_FILE_NAME = "nuvom.db"


class SQLiteSettings(EnvSettings):
    """Read from ``NUVOM_*`` variables, ``.env``, then defaults, like core's settings."""

    sqlite_queue_path: Path | None = Field(
        None, description="SQLite file of the queue (default <NUVOM_DATA_DIR>/nuvom.db)."
    )
    sqlite_db_path: Path | None = Field(
        None,
        description="SQLite file of the results (default <NUVOM_DATA_DIR>/nuvom.db; the queue's file "
        "makes completion one transaction).",
    )
    result_ttl_secs: float | None = Field(
        None, gt=0, description="Delete stored results older than this many seconds (unset: keep them)."
    )


def load_sqlite_settings() -> SQLiteSettings:
    """Read the settings; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(SQLiteSettings)


def resolve_paths(settings: Settings | None = None, sqlite: SQLiteSettings | None = None) -> tuple[Path, Path]:
    """``(queue file, results file)``, absolute, with the defaults applied."""
    core = settings or get_settings()
    sqlite = sqlite or load_sqlite_settings()
    default = core.data_dir / DEFAULT_FILE_NAME
    queue = sqlite.sqlite_queue_path or default
    results = sqlite.sqlite_db_path or default
    return queue.expanduser().absolute(), results.expanduser().absolute()
