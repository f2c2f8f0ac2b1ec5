"""nuvom-redis: a queue and result store on a Redis server, shared by workers
and producers on any number of hosts.

``NUVOM_QUEUE_BACKEND=redis`` / ``NUVOM_RESULT_BACKEND=redis`` with
``NUVOM_REDIS_URL=redis://host:6379/0``. See docs/redis.md.
"""

from __future__ import annotations

from nuvom.redis._queue import RedisJobQueue
from nuvom.redis._results import RedisResultBackend
from nuvom.redis._settings import RedisSettings, load_redis_settings, redact_url

__all__ = [
    "RedisJobQueue",
    "RedisResultBackend",
    "RedisSettings",
    "load_redis_settings",
    "redact_url",
]
