"""Floors of a drain for bench_postgres.py: bare psycopg on nuvom-postgres's own
schema, no task run, no payload decoded, one connection, statements prepared.

* ``batch100``: PgQueuer's shape. One statement claims 100 due rows (``FOR UPDATE
  SKIP LOCKED``, the claim index's order), one statement deletes those 100 from
  the queue and stores their results, fenced by the claim's token. No start mark.
* ``durable4``: what any queue that makes start marks durable before running, with
  4 slots, must commit: one statement (one transaction, one WAL flush) per 4 jobs
  that stores the previous 4 outcomes and claims 4 more with their start marks.

* ``calls``: the e2e's floor, what the producer's side alone costs with no
  worker: one committed ``INSERT`` of a job row per call (autocommit: one
  transaction, one WAL flush each), then the stored results read 256 to a
  ``SELECT`` (as ``get()`` reads ahead). A worker can only add to that time.
* ``beside``: ``calls`` with a worker beside it doing ``durable4``'s steps in a
  process of its own (looking again every 0.2 ms while the queue is empty),
  the results read as they are stored: the producer and a worker with durable
  start marks at the least each must do, sharing the cores and the server.

A figure above a floor is out of reach for nuvom's worker with that shape of
commits, whatever its Python does; the client CPU a job is what that shape costs
the client with nothing else on top (the server's CPU is not counted).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from _common import join_beside, start_beside

NOW = "date_part('epoch', statement_timestamp())"
_OPTIONS = "-c plan_cache_mode=force_generic_plan -c jit=off"


def _claim(q: str, start: bool) -> str:
    started = f"{NOW}" if start else "NULL"
    return (
        f"UPDATE {q} AS j SET state = 1, attempts = j.attempts + 1, started_at = {started}, "
        f"claim_token = %(token)s, claimed_by = 'floor', ready_at = {NOW} + 60 "
        f"WHERE j.id = ANY(ARRAY(SELECT id FROM {q} WHERE queue = 'default' AND ready_at <= {NOW} "
        "ORDER BY priority DESC, ready_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED)) "
        "RETURNING j.id, j.attempts, j.payload"
    )


def _store(q: str, r: str) -> str:
    """CTEs ``done`` and ``stored``: the claimed rows out of the queue, their results in."""
    return (
        f"done AS (DELETE FROM {q} AS j WHERE j.id = ANY(%(done)s::text[]) AND j.claim_token = %(prev)s "
        "RETURNING j.id, j.func_name, j.attempts, j.created_at, j.started_at, j.payload), "
        f"stored AS (INSERT INTO {r} (id, func_name, status, attempts, worker_id, created_at, started_at, "
        f"finished_at, payload) SELECT id, func_name, 'SUCCESS', attempts, 'floor', created_at, "
        f"coalesce(started_at, {NOW}), {NOW}, payload FROM done)"
    )


def _ids(rows: list[Any]) -> str:
    return "{" + ",".join(row[0] for row in rows) + "}"  # nuvom's ids are hex: no quoting


def batch100(conn: Any, schema: str, n: int) -> dict[str, float]:
    q, r = f'"{schema}".nuvom_queue', f'"{schema}".nuvom_results'
    claim, complete = _claim(q, start=False), f"WITH {_store(q, r)} SELECT count(*) FROM done"
    done = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        token = secrets.randbits(62)
        rows = conn.execute(claim, {"token": token, "n": 100}, prepare=True).fetchall()
        if not rows:
            break
        conn.execute(complete, {"done": _ids(rows), "prev": token}, prepare=True).fetchall()
        done += len(rows)
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert done == n, (done, n)
    return {"jobs_per_sec": done / secs, "client_cpu_us_per_job": cpu / done * 1e6}


def durable4(conn: Any, schema: str, n: int, poll: bool = False) -> dict[str, float]:
    """The *durable4* floor on ``n`` queued jobs; ``poll``: while fewer than ``n``
    are done, an empty queue is looked at again every 0.2 ms (jobs still coming)."""
    q, r = f'"{schema}".nuvom_queue', f'"{schema}".nuvom_results'
    step = f"WITH {_store(q, r)}, claimed AS ({_claim(q, start=True)}) SELECT id, attempts, payload FROM claimed"
    done, held, prev = 0, "{}", 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        token = secrets.randbits(62)
        rows = conn.execute(step, {"token": token, "n": 4, "done": held, "prev": prev}, prepare=True).fetchall()
        if held != "{}":
            done += held.count(",") + 1
        if rows:
            held, prev = _ids(rows), token
        elif poll and done < n:
            held, prev = "{}", 0
            time.sleep(0.0002)
        else:
            break
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert done == n, (done, n)
    return {"jobs_per_sec": done / secs, "client_cpu_us_per_job": cpu / done * 1e6}


def _insert(q: str) -> str:
    """One job row queued, as a ``.delay()`` writes it (``calls``, ``beside``)."""
    return f"INSERT INTO {q} (id, func_name, ready_at, created_at, payload) VALUES (%s, 'noop', {NOW}, {NOW}, %s)"


def calls(url: str, schema: str, n: int) -> dict[str, float]:
    """The ``calls`` floor on ``n`` jobs (the rows it queues are removed after)."""
    import psycopg
    from nuvom.job import new_job_id

    q, r = f'"{schema}".nuvom_queue', f'"{schema}".nuvom_results'
    ids = [new_job_id() for _ in range(n)]
    payload = bytes(80)  # about a no-op job's record
    insert, read = _insert(q), f"SELECT id, payload FROM {r} WHERE id = ANY(%s)"
    with psycopg.connect(url, autocommit=True, options=_OPTIONS) as conn:
        t0, cpu0 = time.perf_counter(), time.process_time()
        for job_id in ids:
            conn.execute(insert, (job_id, payload), prepare=True)
        queued, cpu_queued = time.perf_counter() - t0, time.process_time() - cpu0
        # Not timed: the results a worker would have stored, and the queue left empty.
        conn.execute(
            f"INSERT INTO {r} (id, func_name, status, attempts, finished_at, payload) "
            f"SELECT id, func_name, 'SUCCESS', 1, {NOW}, payload FROM {q} WHERE id = ANY(%s)",
            (ids,),
        )
        conn.execute(f"DELETE FROM {q} WHERE id = ANY(%s)", (ids,))
        t1, cpu1 = time.perf_counter(), time.process_time()
        for k in range(0, n, 256):
            conn.execute(read, (ids[k : k + 256],), prepare=True).fetchall()
        secs = queued + time.perf_counter() - t1
        cpu = cpu_queued + time.process_time() - cpu1
        conn.execute(f"DELETE FROM {r} WHERE id = ANY(%s)", (ids,))
    return {"jobs_per_sec": n / secs, "client_cpu_us_per_job": cpu / n * 1e6, "insert_us": queued / n * 1e6}


def _drainer(url: str, schema: str, n: int, ready: Any) -> None:
    """``durable4`` until ``n`` jobs are done, as they come (for :func:`beside`)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, options=_OPTIONS) as conn:
        ready.set()
        durable4(conn, schema, n, poll=True)


def beside(url: str, schema: str, n: int) -> dict[str, float]:
    """The ``beside`` floor on ``n`` jobs (the results it stores are removed after)."""
    import psycopg
    from nuvom.job import new_job_id

    q, r = f'"{schema}".nuvom_queue', f'"{schema}".nuvom_results'
    worker = start_beside(_drainer, url, schema, n)
    ids = [new_job_id() for _ in range(n)]
    payload = bytes(80)
    insert, read = _insert(q), f"SELECT id, payload FROM {r} WHERE id = ANY(%s)"
    with psycopg.connect(url, autocommit=True, options=_OPTIONS) as conn:
        t0 = time.perf_counter()
        for job_id in ids:
            conn.execute(insert, (job_id, payload), prepare=True)
        for k in range(0, n, 256):
            while len(conn.execute(read, (ids[k : k + 256],), prepare=True).fetchall()) < len(ids[k : k + 256]):
                time.sleep(0.0002)
        secs = time.perf_counter() - t0
        join_beside(worker)
        conn.execute(f"DELETE FROM {r} WHERE id = ANY(%s)", (ids,))
    return {"jobs_per_sec": n / secs}


def floors(url: str, schema: str, fill: Any, n: int) -> dict[str, dict[str, float]]:
    """Each floor on ``n`` jobs queued by ``fill(n)`` (nuvom's own ``.map()``)."""
    import psycopg

    out: dict[str, dict[str, float]] = {}
    with psycopg.connect(url, autocommit=True, options=_OPTIONS) as conn:
        for name, run in (("batch100", batch100), ("durable4", durable4)):
            fill(n)
            conn.execute(f'VACUUM ANALYZE "{schema}".nuvom_queue')
            out[name] = run(conn, schema, n)
    return out
