"""The ``redis`` plugin: registers the backends under the name ``redis``.

Cores that find backends through the ``nuvom.queue_backends`` /
``nuvom.result_backends`` entry-point groups load the classes directly; older
cores start this plugin, which registers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from nuvom.plugins.contracts import Plugin
from nuvom.plugins.registry import register_queue_backend, register_result_backend
from nuvom.redis._queue import RedisJobQueue
from nuvom.redis._results import RedisResultBackend
from nuvom.redis._settings import RedisSettings

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["RedisPlugin"]


class RedisPlugin(Plugin):
    """Entry point ``redis`` in the ``nuvom`` group."""

    name = "redis"
    provides: ClassVar[list[str]] = ["queue_backend", "result_backend"]
    settings_class = RedisSettings

    def start(self, settings: Settings, extras: dict[str, Any] | None = None) -> None:
        register_queue_backend("redis", RedisJobQueue)
        register_result_backend("redis", RedisResultBackend)
