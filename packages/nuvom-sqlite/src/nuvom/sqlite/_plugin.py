"""The ``sqlite`` plugin: registers the backends under the name ``sqlite``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from nuvom.plugins.contracts import Plugin
from nuvom.plugins.registry import register_queue_backend, register_result_backend
from nuvom.sqlite._queue import SQLiteJobQueue
from nuvom.sqlite._results import SQLiteResultBackend
from nuvom.sqlite._settings import SQLiteSettings

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["SQLitePlugin"]


class SQLitePlugin(Plugin):
    """Entry point ``sqlite`` in the ``nuvom`` group."""

    name = "sqlite"
    provides: ClassVar[list[str]] = ["queue_backend", "result_backend"]
    settings_class = SQLiteSettings

    def start(self, settings: Settings, extras: dict[str, Any] | None = None) -> None:
        register_queue_backend("sqlite", SQLiteJobQueue)
        register_result_backend("sqlite", SQLiteResultBackend)
