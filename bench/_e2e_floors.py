"""Floors of bench_engine.py's producer rows (2: SQLite, 5: Redis): a producer and a
worker each doing the least it must, at once, on the same cores, as a producer
loop and a worker process do.

* The producer (this process): one committed write a call, as one ``.delay()``
  makes (SQLite: an ``INSERT`` in autocommit; Redis: one ``RPUSH`` round trip),
  then the results read back 256 to a read, as ``get()`` reads ahead.
* The worker (a process of its own): floor (c) of the drain rows, 4 threads
  each running one empty job at a time, one transaction or script call a round
  that stores the round's outcomes and claims the next jobs start-marked
  (:mod:`_slots`); while the queue is empty it looks again every 0.2 ms.

jobs/s from the first call to the last result read: what a producer of
single-job calls and a worker with durable start marks and 4 thread slots
cannot pass together on this machine. The producer's floor alone is no such
bound: it has both cores to itself.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import _redis_floors
import bench_hotpath
from _common import join_beside, start_beside
from _slots import drain_by_slots

__all__ = ["redis_e2e", "sqlite_e2e"]

Row = TypeVar("Row")

_POLL = 0.0002  # how often an empty queue, or a result not there yet, is looked at again
_READ = 256  # results a read


def _until(n: int, step: Callable[[list[Row]], Sequence[Row]]) -> Callable[[list[Row]], Sequence[Row]]:
    """``step``, made to claim again while the queue is empty until ``n`` jobs are done."""
    done = 0

    def polling(rows_done: list[Row]) -> Sequence[Row]:
        nonlocal done
        while True:
            rows = step(rows_done)
            done += len(rows_done)
            rows_done = []
            if rows or done >= n:
                return rows
            time.sleep(_POLL)

    return polling


def _spin(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> None:
    """``sql`` until it gets the write lock: 50 us to 1 ms between tries, as
    nuvom-sqlite waits (SQLite's busy handler sleeps 1, 2, 5, 10 ms...)."""
    pause = 0.00005
    while True:
        try:
            conn.execute(sql, params)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.001)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=0")  # _spin waits
    return conn


def _sqlite_worker(path: str, n: int, ready: Any) -> None:
    conn = _connect(path)
    claim, complete = bench_hotpath.sqlite_steps(conn, 4)

    def step(rows_done: list[tuple[int, str]]) -> list[tuple[int, str]]:
        _spin(conn, "BEGIN IMMEDIATE")
        if rows_done:
            complete(rows_done)
        rows = claim()
        _spin(conn, "COMMIT")
        return rows

    ready.set()
    drain_by_slots(4, _until(n, step))


def _redis_worker(url: str, n: int, ready: Any) -> None:
    import redis

    step = _redis_floors.fused_step(redis.Redis.from_url(url))
    ready.set()
    drain_by_slots(4, _until(n, step))


def sqlite_e2e(base: Path, n: int) -> dict[str, float]:
    """The SQLite floor of row 2, on a new file with nuvom-sqlite's schema."""
    path = bench_hotpath.sqlite_floor_file(base, "e2e")
    proc = start_beside(_sqlite_worker, str(path), n)
    conn = _connect(str(path))
    payload = os.urandom(250)
    ids = [uuid.uuid4().hex for _ in range(n)]
    insert = (
        "INSERT INTO nuvom_queue (id, func_name, state, ready_at, attempts, created_at, payload) "
        "VALUES (?, 'noop', 0, ?, 0, ?, ?)"
    )
    start = time.perf_counter()
    for job_id in ids:
        now = time.time()
        _spin(conn, insert, (job_id, now, now, payload))
    for k in range(0, n, _READ):
        chunk = ids[k : k + _READ]
        read = f"SELECT id, payload FROM nuvom_results WHERE id IN ({','.join('?' * len(chunk))})"
        while len(conn.execute(read, chunk).fetchall()) < len(chunk):
            time.sleep(_POLL)
    elapsed = time.perf_counter() - start
    conn.close()
    join_beside(proc)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"rate": n / elapsed}


def redis_e2e(url: str, n: int) -> dict[str, float]:
    """The Redis floor of row 5, on the keys of :mod:`_redis_floors`."""
    import redis

    client = redis.Redis.from_url(url)
    client.delete("fused:q", "fused:started", *client.keys("fused:res:*"))
    proc = start_beside(_redis_worker, url, n)
    payloads = [_redis_floors.payload_of(i) for i in range(n)]
    keys = [f"fused:res:{i:016d}" for i in range(n)]
    start = time.perf_counter()
    for payload in payloads:
        client.rpush("fused:q", payload)
    for k in range(0, n, _READ):
        while any(value is None for value in client.mget(keys[k : k + _READ])):
            time.sleep(_POLL)
    elapsed = time.perf_counter() - start
    join_beside(proc)
    left = client.zcard("fused:started")
    client.delete("fused:q", "fused:started", *client.keys("fused:res:*"))
    client.close()
    if left:
        raise RuntimeError(f"redis e2e floor: {left} start marks left")
    return {"rate": n / elapsed}
