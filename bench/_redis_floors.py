"""Floors (b) and (c) of the Redis drain (bench_engine.py row 4), beside the bare
consumer of :mod:`bench_redis` (floor (a): no start marks, 64 jobs a round trip).

* (b): one script call per 4 jobs that stores the previous 4 outcomes (a result
  each, its start mark removed) and claims 4 more with their start marks (a
  sorted set of started ids, as nuvom-redis keeps): the least a queue must send
  whose start marks are stored before a job runs and whose batches are no larger
  than its 4 slots.
* (c): (b) run by 4 threads, each job waiting for its step (:mod:`_slots`).

No task runs and nothing is decoded: a figure above a floor is out of reach for
any worker with that shape of round trips, whatever its Python does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from _slots import drain_by_slots

__all__ = ["fused_drain", "fused_step", "payload_of"]

_STEP = """
for i = 2, #ARGV, 2 do
  redis.call('SET', 'fused:res:' .. ARGV[i], ARGV[i + 1])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
local got = redis.call('LMPOP', 1, KEYS[1], 'LEFT', 'COUNT', 4)
if not got then return {} end
local ids = {}
for i, payload in ipairs(got[2]) do
  ids[i] = string.sub(payload, 1, 16)
  redis.call('ZADD', KEYS[2], ARGV[1], ids[i])
end
return ids
"""


def payload_of(i: int) -> bytes:
    """A 250-byte job payload whose first 16 bytes are its id."""
    return f"{i:016d}".encode() + os.urandom(234)


def fused_step(client: Any) -> Callable[[list[Any]], list[Any]]:
    """The step of floors (b) and (c): stores the outcomes of the ids it is given,
    claims up to 4 more start-marked, and returns their ids."""
    result = os.urandom(300)
    script = client.register_script(_STEP)
    keys = ["fused:q", "fused:started"]

    def step(done: list[Any]) -> list[Any]:
        args: list[Any] = [time.time()]
        for job_id in done:
            args += (job_id, result)  # each outcome sent, as a worker sends its results
        return list(script(keys=keys, args=args))

    return step


def fused_drain(url: str, n: int, slots: int = 0) -> dict[str, float]:
    """Floor (b) (``slots=0``: one thread) or (c) (``slots`` threads) on ``n``
    queued 250-byte payloads: jobs/s and the client's CPU a job (us)."""
    import redis

    client = redis.Redis.from_url(url)
    client.delete("fused:q", "fused:started", *client.keys("fused:res:*"))
    for k in range(0, n, 1000):
        client.rpush("fused:q", *(payload_of(i) for i in range(k, min(n, k + 1000))))
    step = fused_step(client)
    start = time.perf_counter()
    if slots:
        cpu = time.process_time()
        drain_by_slots(slots, step)
        cpu = time.process_time() - cpu
    else:
        cpu = time.thread_time()
        held: list[Any] = step([])
        while held:
            held = step(held)
        cpu = time.thread_time() - cpu
    elapsed = time.perf_counter() - start
    stored = sum(1 for _ in client.scan_iter("fused:res:*", count=5000))
    left = client.zcard("fused:started")
    client.delete("fused:q", "fused:started", *client.keys("fused:res:*"))
    client.close()
    if stored != n or left:
        raise RuntimeError(f"redis fused floor: {stored} results stored of {n}, {left} marks left")
    return {"rate": n / elapsed, "cpu": cpu / n * 1e6}
