"""Worker presence of the Redis queue (:class:`nuvom.redis.RedisJobQueue`).

Keys (under the queue's prefix; the layout is in docs/redis.md)::

    <prefix>:w:info     hash: worker id -> its WorkerInfo (JSON)
    <prefix>:w:drop     sorted set: worker id, scored by when its record may go

A heartbeat is one script that replaces the worker's record and deletes the
records past their drop time, so records of workers that died are gone a few
minutes later without anyone sweeping. Times are the workers' clocks (the
record's own ``heartbeat_at``), as on every store.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from nuvom.plugins._presence import WorkerInfo, live_and_gone

if TYPE_CHECKING:
    from nuvom.redis._connection import Connection

__all__ = ["RedisPresence"]

log = logging.getLogger("nuvom.redis")

_PUBLISH = """
local INFO, DROP = ARGV[1] .. ':w:info', ARGV[1] .. ':w:drop'
redis.call('HSET', INFO, ARGV[2], ARGV[3])
redis.call('ZADD', DROP, ARGV[4], ARGV[2])
local old = redis.call('ZRANGEBYSCORE', DROP, '-inf', ARGV[5], 'LIMIT', 0, 100)
for i = 1, #old do
  redis.call('HDEL', INFO, old[i])
  redis.call('ZREM', DROP, old[i])
end
return #old
"""


class RedisPresence:
    """Mixed into :class:`~nuvom.redis.RedisJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue` (needs its ``conn`` and ``prefix``)."""

    conn: Connection
    prefix: str

    def _publish_script(self) -> Any:
        script = self.__dict__.get("_presence_script")
        if script is None:
            script = self.__dict__["_presence_script"] = self.conn.client.register_script(_PUBLISH)
        return script

    def publish_worker(self, info: WorkerInfo) -> None:
        args = [self.prefix, info.worker_id, info.to_json(), repr(info.drop_at), repr(time.time())]
        script = self._publish_script()
        self.conn.run("publishing a worker's presence", lambda: script(args=args))

    def remove_worker(self, worker_id: str) -> None:
        def remove() -> None:
            pipe = self.conn.client.pipeline(transaction=True)
            pipe.hdel(f"{self.prefix}:w:info", worker_id)
            pipe.zrem(f"{self.prefix}:w:drop", worker_id)
            pipe.execute()

        self.conn.run("removing a worker's presence", remove)

    def list_workers(self) -> list[WorkerInfo] | None:
        found = self.conn.run("listing workers", lambda: self.conn.client.hgetall(f"{self.prefix}:w:info"))
        records = []
        for key, data in found.items():
            info = WorkerInfo.from_json(data)
            if info is None:
                worker_id = key.decode(errors="replace") if isinstance(key, bytes) else key
                log.warning("worker %s's presence record is unreadable; dropped", worker_id)
                self.remove_worker(worker_id)
            else:
                records.append(info)
        return live_and_gone(records)

    def describe(self) -> str:
        prefix = "" if self.prefix == "nuvom" else f" (prefix {self.prefix})"
        return f"redis {_without_credentials(self.conn.url)}{prefix}"


def _without_credentials(url: str) -> str:
    """``url`` with no user or password at all (not even a mask): shown to everyone who can see workers."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))
    except ValueError:
        return "<unparsable NUVOM_REDIS_URL>"
