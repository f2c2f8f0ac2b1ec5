"""PgQueuer and procrastinate for bench_postgres.py: each run through its own API,
configured as its documentation advises for throughput.

* PgQueuer: a worker ``QueueManager.run(batch_size=100)`` (its docs: raise the
  batch size for throughput; the default is 10), on asyncpg; producers call
  ``Queries.enqueue`` on one asyncpg connection; a job is done when its
  ``pgqueuer_log`` row says ``successful``.
* procrastinate: a worker ``run_worker(concurrency=10)`` (the issue's figures: 549
  jobs/s at 10 against 231 at 1), on its psycopg connector; producers call the
  task's ``defer``; a job is done when its ``procrastinate_jobs`` row says ``succeeded``.

Each system's schema is installed once per run (``setup``); its drain and its
e2e then share it, each counting from what was done before it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import proc_cpu

PEERS = ("pgqueuer", "procrastinate")
BATCH = {"pgqueuer": 100, "procrastinate": 10}
DONE_SQL = {
    "pgqueuer": "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
}

WORKERS = {
    "pgqueuer": """
import asyncio, inspect, sys
import asyncpg
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

async def main():
    conn = await asyncpg.connect(sys.argv[1])
    driver = AsyncpgDriver(conn)
    # PgQueuer 1.x takes its queries object, earlier versions the driver.
    first = next(iter(inspect.signature(QueueManager).parameters))
    qm = QueueManager(Queries(driver) if first == "queries" else driver)

    @qm.entrypoint("noop")
    async def noop(job):
        return None

    await qm.run(batch_size=int(sys.argv[2]))

asyncio.run(main())
""",
    "procrastinate": """
import sys
import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=sys.argv[1]))

@app.task(name="noop")
def noop(i):
    return i

with app.open():
    app.run_worker(concurrency=int(sys.argv[2]), wait=True, install_signal_handlers=True)
""",
}

# Producers: ``python producer.py URL N MODE``. MODE ``queue`` queues N jobs and
# exits (the drain's backlog, queued in batches where the API has them);
# ``e2e`` queues one job and waits for it (the worker is up), then times a loop
# of N single-job calls and the wait for the last of them, and prints
# {"secs": ...}; ``install`` creates the schema (procrastinate).
PRODUCERS = {
    "pgqueuer": """
import asyncio, json, sys, time
import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries

DONE = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"

async def wait_for(conn, target):
    while await conn.fetchval(DONE) < target:
        await asyncio.sleep(0.002)

async def main():
    url, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn = await asyncpg.connect(url)
    q = Queries(AsyncpgDriver(conn))
    if mode == "queue":
        for k in range(0, n, 5000):
            m = min(5000, n - k)
            await q.enqueue(["noop"] * m, [str(k + i).encode() for i in range(m)], [0] * m)
        return
    before = await conn.fetchval(DONE)
    await q.enqueue("noop", b"-1")
    await wait_for(conn, before + 1)
    t0 = time.perf_counter()
    for i in range(n):
        await q.enqueue("noop", str(i).encode())
    await wait_for(conn, before + 1 + n)
    print(json.dumps({"secs": time.perf_counter() - t0}))

asyncio.run(main())
""",
    "procrastinate": """
import json, sys, time
import procrastinate
import psycopg

DONE = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
url, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

@app.task(name="noop")
def noop(i):
    return i

def wait_for(conn, target):
    while conn.execute(DONE).fetchone()[0] < target:
        time.sleep(0.002)

with app.open(), psycopg.connect(url, autocommit=True) as conn:
    if mode == "install":
        app.schema_manager.apply_schema()
    elif mode == "queue":
        for i in range(n):
            noop.defer(i=i)
    else:
        before = conn.execute(DONE).fetchone()[0]
        noop.defer(i=-1)
        wait_for(conn, before + 1)
        t0 = time.perf_counter()
        for i in range(n):
            noop.defer(i=i)
        wait_for(conn, before + 1 + n)
        print(json.dumps({"secs": time.perf_counter() - t0}))
""",
}


def setup(system: str, url: str, folder: Path) -> Path:
    """Write the system's scripts into ``folder`` and install its schema (once per run)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "worker.py").write_text(WORKERS[system])
    (folder / "producer.py").write_text(PRODUCERS[system])
    if system == "pgqueuer":
        # The DSN through the environment: PgQueuer's CLI has moved its --pg-dsn
        # option between versions, and reads PGDSN in all of them.
        done = subprocess.run(
            [sys.executable, "-m", "pgqueuer", "install"],
            env={**os.environ, "PGDSN": url},
            capture_output=True,
            text=True,
        )
    else:
        done = subprocess.run(
            [sys.executable, "producer.py", url, "0", "install"], cwd=folder, capture_output=True, text=True
        )
    if done.returncode != 0:
        sys.exit(f"bench_postgres: installing {system}'s schema failed: {done.stderr.strip()[-300:]}")
    return folder


def _worker(system: str, url: str, folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "worker.py", url, str(BATCH[system])], cwd=folder)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def drain(system: str, url: str, n: int, folder: Path) -> dict[str, float]:
    """Queue ``n`` jobs with the peer's own API, then time one worker process
    draining them: from its first finished job to its last, and its CPU."""
    import psycopg

    subprocess.run([sys.executable, "producer.py", url, str(n), "queue"], cwd=folder, check=True)
    with psycopg.connect(url, autocommit=True) as conn:

        def count() -> int:
            return int(conn.execute(DONE_SQL[system]).fetchone()[0])  # type: ignore[index]

        before = count()
        proc = _worker(system, url, folder)
        try:
            while count() == before:
                time.sleep(0.01)
            t0, cpu0, done0 = time.perf_counter(), proc_cpu(proc.pid), count() - before
            while (done := count() - before) < n:
                time.sleep(0.05)
            secs, cpu = time.perf_counter() - t0, proc_cpu(proc.pid) - cpu0
        finally:
            _stop(proc)
    return {"jobs_per_sec": (done - done0) / secs, "worker_cpu_us_per_job": cpu / (done - done0) * 1e6}


def e2e(system: str, url: str, n: int, folder: Path) -> dict[str, Any]:
    """One worker process running; a producer queues ``n`` jobs one call each,
    then waits for the last to be done: jobs per second from the first call to
    that, and the worker's CPU per job over the producer's life."""
    proc = _worker(system, url, folder)
    try:
        cpu0 = proc_cpu(proc.pid)
        got = subprocess.run(
            [sys.executable, "producer.py", url, str(n), "e2e"], cwd=folder, check=True, capture_output=True, text=True
        )
        cpu = proc_cpu(proc.pid) - cpu0
    finally:
        _stop(proc)
    secs = float(json.loads(got.stdout.strip().splitlines()[-1])["secs"])
    return {"jobs_per_sec": n / secs, "worker_cpu_us_per_job": cpu / (n + 1) * 1e6}
