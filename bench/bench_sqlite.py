"""nuvom-sqlite benchmarks, beside huey's SqliteHuey in the same run.

    python bench/bench_sqlite.py                  # everything (a few minutes)
    python bench/bench_sqlite.py --only e2e --jobs 5000
    python bench/bench_sqlite.py --only history --rows 100000

Parts:

* ``e2e``: 20,000 trivial jobs, from the first enqueue until every result is
  stored, with one and with two worker processes (``Worker(max_workers=4)
  .run_forever()``, what ``nuvom runworker`` runs), then huey's SqliteHuey with
  its thread consumer (4 threads) doing the same work: its defaults, and with
  ``synchronous=NORMAL`` like nuvom-sqlite. Rounds are interleaved; medians reported.
* ``latency``: enqueue -> start at 50 jobs/s (p50, p99), and the worker's CPU
  use while doing that and while idle.
* ``raw``: the same claim -> complete cycle with no engine: through the
  backend's methods, and as bare SQL on pre-encoded rows (SQLite's own limit here).
* ``history``: ``list_jobs`` by status / task / time with 1,000,000 stored results.

Needs nuvom-core, nuvom-sqlite and huey installed. Figures go to stdout and
to ``bench/results/sqlite.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from _common import import_fresh, proc_cpu, start_processes, stop_processes, wait_for_count

ROOT = Path(__file__).resolve().parent

NUVOM_TASKS = """
from nuvom.task import task

@task
def noop(i):
    return i
"""

HUEY_TASKS = """
import os
from huey import SqliteHuey
from huey.storage import SqliteStorage


class NormalSyncStorage(SqliteStorage):
    # synchronous=NORMAL, as nuvom-sqlite uses: same durability, a fair comparison.
    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=1")
        return conn


huey = SqliteHuey(filename=os.environ["HUEY_DB"], {storage})

@huey.task()
def noop(i):
    return i
"""

NUVOM_WORKER = (
    "import os, pathlib, tasks; from nuvom.worker import Worker; "
    "w = Worker(max_workers={threads}); w.start(); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); w.run_forever()"
)

HUEY_CONSUMER = (
    "import os, pathlib, hueytasks; "
    "c = hueytasks.huey.create_consumer(workers={threads}, worker_type='thread', periodic=False); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); c.run()"
)


# -- helpers --------------------------------------------------------------------
def nuvom_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(
        NUVOM_QUEUE_BACKEND="sqlite",
        NUVOM_RESULT_BACKEND="sqlite",
        NUVOM_DATA_DIR=str(workdir / "data"),
        NUVOM_LOG_LEVEL="WARNING",
        PYTHONPATH=str(workdir),
    )
    env.update(extra)
    return env


def reset_nuvom(workdir: Path) -> None:
    """Point this process's nuvom at ``workdir`` (the bench is a producer too)."""
    os.environ.update(nuvom_env(workdir))
    sys.path.insert(0, str(workdir))
    from nuvom.testing import reset_process_state

    reset_process_state()


def fresh_dir(base: Path, name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    return d


# -- end to end -----------------------------------------------------------------
def e2e_nuvom(base: Path, jobs: int, workers: int, threads: int, use_map: bool) -> dict[str, Any]:
    workdir = fresh_dir(base, f"nuvom-e2e-{workers}")
    (workdir / "tasks.py").write_text(NUVOM_TASKS)
    reset_nuvom(workdir)
    from nuvom.registry import get_registry

    get_registry().unregister("noop")
    tasks = import_fresh("tasks", workdir)
    from nuvom.backends import get_queue_backend, get_result_backend

    queue, results = get_queue_backend(), get_result_backend()
    procs = start_processes(NUVOM_WORKER.format(threads=threads), workers, workdir, nuvom_env(workdir))
    try:
        t0 = time.perf_counter()
        if use_map:
            tasks.noop.map(range(jobs))
        else:
            for i in range(jobs):
                tasks.noop.delay(i)
        t_enq = time.perf_counter() - t0
        done = wait_for_count(results.count, jobs)
        elapsed = time.perf_counter() - t0
        cpu = [proc_cpu(p.pid) for p in procs]
    finally:
        stop_processes(procs)
        queue.close()
        results.close()
    ok = len(results.list_jobs(status="SUCCESS", limit=jobs + 1))
    return {
        "system": "nuvom-sqlite",
        "workers": workers,
        "threads": threads,
        "enqueue": ".map()" if use_map else ".delay() loop",
        "jobs": jobs,
        "succeeded": ok,
        "complete": done == jobs,
        "enqueue_secs": round(t_enq, 3),
        "elapsed_secs": round(elapsed, 3),
        "jobs_per_sec": round(jobs / elapsed),
        "worker_cpu_secs": [round(c, 2) for c in cpu],
    }


HUEY_VARIANTS = {
    "default (synchronous=FULL)": "",
    "synchronous=NORMAL": "storage_class=NormalSyncStorage",
}


def e2e_huey(base: Path, jobs: int, threads: int, variant: str) -> dict[str, Any]:
    workdir = fresh_dir(base, "huey-e2e")
    (workdir / "hueytasks.py").write_text(HUEY_TASKS.format(storage=HUEY_VARIANTS[variant]))
    env = {**os.environ, "HUEY_DB": str(workdir / "huey.db"), "PYTHONPATH": str(workdir)}
    os.environ["HUEY_DB"] = env["HUEY_DB"]
    mod = import_fresh("hueytasks", workdir)
    procs = start_processes(HUEY_CONSUMER.format(threads=threads), 1, workdir, env)
    try:
        t0 = time.perf_counter()
        for i in range(jobs):
            mod.noop(i)
        t_enq = time.perf_counter() - t0
        done = wait_for_count(mod.huey.result_count, jobs)
        elapsed = time.perf_counter() - t0
        cpu = [proc_cpu(p.pid) for p in procs]
    finally:
        stop_processes(procs, signal.SIGINT)
    return {
        "system": f"huey SqliteHuey, {variant}",
        "workers": 1,
        "threads": threads,
        "enqueue": "task() loop",
        "jobs": jobs,
        "succeeded": mod.huey.result_count(),
        "complete": done == jobs,
        "consumer_log_tracebacks": sum(
            f.read_text(errors="replace").count("Traceback") for f in workdir.glob("process-*.log")
        ),
        "enqueue_secs": round(t_enq, 3),
        "elapsed_secs": round(elapsed, 3),
        "jobs_per_sec": round(jobs / elapsed),
        "worker_cpu_secs": [round(c, 2) for c in cpu],
    }


# -- latency ----------------------------------------------------------------------
def latency(base: Path, rate: float, seconds: float, idle_secs: float) -> dict[str, Any]:
    workdir = fresh_dir(base, "nuvom-latency")
    (workdir / "tasks.py").write_text(NUVOM_TASKS)
    reset_nuvom(workdir)
    from nuvom.registry import get_registry

    get_registry().unregister("noop")
    tasks = import_fresh("tasks", workdir)
    procs = start_processes(NUVOM_WORKER.format(threads=4), 1, workdir, nuvom_env(workdir))
    pid = procs[0].pid
    try:
        n = int(rate * seconds)
        jobs = []
        cpu0, t0 = proc_cpu(pid), time.perf_counter()
        for i in range(n):
            target = t0 + i / rate
            pause = target - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            jobs.append(tasks.noop.delay(i))
        for job in jobs:
            job.get(timeout=30)
        busy_cpu = (proc_cpu(pid) - cpu0) / (time.perf_counter() - t0)
        # Idle: right after the last job (fast polling for a while), then later (backed off).
        c1, w1 = proc_cpu(pid), time.perf_counter()
        time.sleep(idle_secs)
        recent_idle = (proc_cpu(pid) - c1) / (time.perf_counter() - w1)
        time.sleep(5)
        c2, w2 = proc_cpu(pid), time.perf_counter()
        time.sleep(idle_secs)
        idle = (proc_cpu(pid) - c2) / (time.perf_counter() - w2)
    finally:
        stop_processes(procs)
    lat = sorted((j.started_at - j.created_at) * 1000 for j in jobs if j.started_at)
    return {
        "rate_per_sec": rate,
        "jobs": len(lat),
        "p50_ms": round(statistics.median(lat), 2),
        "p90_ms": round(lat[int(len(lat) * 0.9)], 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
        "worker_cpu_at_rate_pct": round(busy_cpu * 100, 1),
        "worker_cpu_first_idle_secs_pct": round(recent_idle * 100, 2),
        "worker_cpu_idle_pct": round(idle * 100, 2),
    }


# -- raw ---------------------------------------------------------------------------
def raw_backend(base: Path, jobs: int, batch: int) -> dict[str, Any]:
    from nuvom.job import Job, JobStatus
    from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend

    workdir = fresh_dir(base, "raw-backend")
    queue = SQLiteJobQueue(path=workdir / "nuvom.db")
    results = SQLiteResultBackend(path=workdir / "nuvom.db")
    todo = [Job(func_name="noop", args=[i]) for i in range(jobs)]
    t0 = time.perf_counter()
    queue.enqueue_many(todo)
    t_enq = time.perf_counter() - t0
    t1 = time.perf_counter()
    done = 0
    while True:
        claimed = queue.claim(batch)
        if not claimed:
            break
        now = time.time()
        for job in claimed:
            job.status, job.result, job.started_at, job.finished_at = JobStatus.SUCCESS, job.args[0], now, now
        queue.complete(claimed, results)
        done += len(claimed)
    cycle = time.perf_counter() - t1
    assert results.count() == jobs
    return {
        "what": "backend methods, no engine (claim -> complete, Job decode/encode included)",
        "jobs": jobs,
        "batch": batch,
        "enqueue_many_per_sec": round(jobs / t_enq),
        "claim_complete_per_sec": round(done / cycle),
    }


def raw_sql(base: Path, jobs: int, batch: int) -> dict[str, Any]:
    """The claim -> complete cycle as bare SQL on pre-encoded rows: SQLite's own limit."""
    from nuvom.job import Job
    from nuvom.sqlite import SQLiteJobQueue

    workdir = fresh_dir(base, "raw-sql")
    path = workdir / "nuvom.db"
    SQLiteJobQueue(path=path).qsize()  # create the schema
    payload = Job(func_name="noop", args=[1]).to_bytes()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    now = time.time()
    rows = [(uuid.uuid4().hex, "noop", now, 0, None, now, payload) for i in range(jobs)]  # random, as real ids
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO nuvom_queue (id, func_name, state, ready_at, attempts, timeout_secs, created_at, payload) "
        "VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    t_enq = time.perf_counter() - t0
    t1 = time.perf_counter()
    done = 0
    while True:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        got = conn.execute(
            "SELECT seq, id, attempts, payload FROM nuvom_queue WHERE ready_at <= ? ORDER BY ready_at, seq LIMIT ?",
            (now, batch),
        ).fetchall()
        if not got:
            conn.execute("COMMIT")
            break
        conn.execute(
            f"UPDATE nuvom_queue SET state = 1, attempts = attempts + 1, ready_at = ? WHERE seq IN "
            f"({','.join('?' * len(got))})",
            (now + 30, *(r[0] for r in got)),
        )
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("DELETE FROM nuvom_queue WHERE id = ?", [(r[1],) for r in got])
        conn.executemany(
            "INSERT INTO nuvom_results (id, func_name, status, attempts, worker_id, created_at, started_at, "
            "finished_at, error_type, error_message, payload) VALUES (?, 'noop', 'SUCCESS', 1, 'w', ?, ?, ?, "
            "NULL, NULL, ?)",
            [(r[1], now, now, now, r[3]) for r in got],
        )
        conn.execute("COMMIT")
        done += len(got)
    cycle = time.perf_counter() - t1
    return {
        "what": "bare SQL on pre-encoded rows (SQLite's limit for this schema)",
        "jobs": jobs,
        "batch": batch,
        "insert_per_sec": round(jobs / t_enq),
        "claim_complete_per_sec": round(done / cycle),
    }


# -- history ------------------------------------------------------------------------
def history(base: Path, rows: int) -> dict[str, Any]:
    import random

    from nuvom.job import Job, JobError, JobStatus
    from nuvom.sqlite import SQLiteResultBackend
    from nuvom.sqlite._results import INSERT_RESULT, result_row

    workdir = fresh_dir(base, "history")
    results = SQLiteResultBackend(path=workdir / "nuvom.db")
    rng = random.Random(7)
    now = time.time()
    ok = Job(func_name="t0", args=[1], status=JobStatus.SUCCESS, attempts=1, result=2, finished_at=now)
    bad = Job(
        func_name="t0",
        args=[1],
        status=JobStatus.FAILED,
        attempts=3,
        error=JobError(type="ValueError", message="bad input", traceback="Traceback ...\nValueError: bad input\n"),
        finished_at=now,
    )
    ok_row, bad_row = result_row(ok), result_row(bad)
    t0 = time.perf_counter()
    chunk = 50_000
    ids = []
    for start in range(0, rows, chunk):
        batch = []
        for i in range(start, min(rows, start + chunk)):
            template = bad_row if rng.random() < 0.05 else ok_row
            finished = now - rng.random() * 30 * 86400
            job_id = f"{i:032x}"
            ids.append(job_id)
            row = list(template)
            row[0], row[1], row[7], row[5], row[6] = job_id, f"t{i % 10}", finished, finished - 1, finished - 0.5
            batch.append(tuple(row))
        with results.db.write() as conn:
            conn.executemany(INSERT_RESULT, batch)
    t_fill = time.perf_counter() - t0
    size_mb = sum(p.stat().st_size for p in workdir.glob("nuvom.db*")) / 1e6

    def timed(label: str, fn: Any, repeat: int = 20) -> dict[str, Any]:
        fn()  # warm the cache: a CLI's first query pays one cold read, not the scan
        t = time.perf_counter()
        for _ in range(repeat):
            out = fn()
        ms = (time.perf_counter() - t) / repeat * 1000
        return {"query": label, "ms": round(ms, 2), "returned": out if isinstance(out, int) else len(out)}

    some = rng.sample(ids, 20)
    cold = SQLiteResultBackend(path=workdir / "nuvom.db")
    t = time.perf_counter()
    first = cold.list_jobs(status="FAILED", limit=100)
    cold_ms = (time.perf_counter() - t) * 1000
    queries = [
        timed("list_jobs(limit=100)", lambda: results.list_jobs(limit=100)),
        timed("list_jobs(status=FAILED, limit=100)", lambda: results.list_jobs(status="FAILED", limit=100)),
        timed("list_jobs(status=SUCCESS, limit=100)", lambda: results.list_jobs(status="SUCCESS", limit=100)),
        timed("list_jobs(task='t3', limit=100)", lambda: results.list_jobs(task="t3", limit=100)),
        timed(
            "list_jobs(status=FAILED, task='t3', limit=100)",
            lambda: results.list_jobs(status="FAILED", task="t3", limit=100),
        ),
        timed("list_jobs(status=FAILED, limit=1000)", lambda: results.list_jobs(status="FAILED", limit=1000), 5),
        timed("get_full(id) x20", lambda: [results.get_full(i) for i in some]),
        timed("count()", results.count, 5),
    ]
    plans = {}
    conn = results.db.connection()
    for label, sql in {
        "newest": "SELECT payload FROM nuvom_results ORDER BY finished_at DESC LIMIT 100",
        "by status": "SELECT payload FROM nuvom_results WHERE status = 'FAILED' ORDER BY finished_at DESC LIMIT 100",
        "by task": "SELECT payload FROM nuvom_results WHERE func_name = 't3' ORDER BY finished_at DESC LIMIT 100",
    }.items():
        plans[label] = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    return {
        "rows": rows,
        "fill_secs": round(t_fill, 1),
        "file_mb": round(size_mb, 1),
        "first_query_new_connection_ms": round(cold_ms, 2),
        "first_query_returned": len(first),
        "queries": queries,
        "plans": plans,
    }


# -- main ------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="e2e,latency,raw,history", help="comma-separated parts to run")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--rows", type=int, default=1_000_000, help="stored results for the history part")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    parser.add_argument("--no-huey", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the end-to-end part")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "sqlite.json")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    base = Path(tempfile.mkdtemp(prefix="nuvom-bench-sqlite-"))
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        }
    }
    print(json.dumps(report["machine"]))
    if "e2e" in parts:
        # Rounds interleave the systems, so that a busy moment on the machine
        # hits all of them rather than one; each row reports every round.
        runs: dict[str, list[dict[str, Any]]] = {}
        configs: list[tuple[str, Any]] = [
            ("nuvom-sqlite, 1 worker process, .map()", lambda: e2e_nuvom(base, args.jobs, 1, args.threads, True)),
            ("nuvom-sqlite, 2 worker processes, .map()", lambda: e2e_nuvom(base, args.jobs, 2, args.threads, True)),
            (
                "nuvom-sqlite, 1 worker process, .delay() loop",
                lambda: e2e_nuvom(base, args.jobs, 1, args.threads, False),
            ),
        ]
        if not args.no_huey:
            for variant in HUEY_VARIANTS:
                configs.append(
                    (f"huey SqliteHuey, {variant}", lambda v=variant: e2e_huey(base, args.jobs, args.threads, v))
                )
        for _ in range(args.repeat):
            for name, run in configs:
                row = run()
                runs.setdefault(name, []).append(row)
                print(json.dumps({"config": name, **row}))
        summary = []
        for name, rows in runs.items():
            rates = sorted(r["jobs_per_sec"] for r in rows)
            summary.append(
                {
                    "config": name,
                    "median_jobs_per_sec": rates[len(rates) // 2],
                    "best_jobs_per_sec": rates[-1],
                    "rounds": rates,
                    "worker_cpu_secs_median": sorted(sum(r["worker_cpu_secs"]) for r in rows)[len(rows) // 2],
                }
            )
            print(json.dumps(summary[-1]))
        report["e2e"] = {"summary": summary, "runs": runs}
    if "latency" in parts:
        report["latency"] = latency(base, args.rate, args.seconds, idle_secs=5.0)
        print(json.dumps(report["latency"]))
    if "raw" in parts:
        report["raw"] = [raw_backend(base, args.jobs, 32), raw_sql(base, args.jobs, 32)]
        for row in report["raw"]:
            print(json.dumps(row))
    if "history" in parts:
        report["history"] = history(base, args.rows)
        print(json.dumps(report["history"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"written to {args.out}")
    print(textwrap.dedent(f"(scratch files in {base}; delete at will)"))


if __name__ == "__main__":
    main()
