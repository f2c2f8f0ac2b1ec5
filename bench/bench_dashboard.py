"""nuvom-dashboard benchmarks: pages with 1,000,000 results in SQLite, and
what the dashboard's own polling costs the store.

    python bench/bench_dashboard.py                # 1,000,000 results (~1-2 minutes to fill)
    python bench/bench_dashboard.py --rows 100000
    python bench/bench_dashboard.py --only pages --reuse DIR   # a folder an earlier run filled
    python bench/bench_dashboard.py --only store

Parts (``--only``, comma-separated; all by default):

* ``pages``: the overview (cold: the counts are read from the store for the
  request, not from a sample), the overview fragment htmx polls, the jobs page
  (first page, a page deep in the history through its cursor, by status, task,
  a common and a rare tag, each tag also 15 days deep) and a job's page, through the ASGI app in process
  (Starlette's test client: routing, store, template; no network).
* ``polling``: the dashboard's sampler at its default period (2 s) for 30 s
  while the store is idle and while a writer stores 200 results a second:
  SQL statements sent to the store per second and CPU seconds used per second
  by the sampling thread.
* ``store``: what storing results costs, jobs without tags and with two tags
  (``SQLiteResultBackend.store`` of 32 jobs per transaction, as a worker's
  completion groups; rounds interleaved, medians), the write side of the tag index.

Needs nuvom-core, nuvom-sqlite, nuvom-dashboard and httpx installed. Figures go
to stdout and to ``bench/results/dashboard.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def fill(db: Path, rows: int) -> float:
    from nuvom import serialization
    from nuvom.job import Job, JobError, JobStatus
    from nuvom.sqlite import SQLiteResultBackend, _results

    # Schema 3 stores the tags as a column and in the tag index (insert_results);
    # the fill also runs against older nuvom-sqlite trees for "before" figures.
    with_tags_column = hasattr(_results, "insert_results")

    results = SQLiteResultBackend(path=db)
    rng = random.Random(7)
    now = time.time()
    ok = Job(func_name="t0", args=[1], status=JobStatus.SUCCESS, attempts=1, result=2).model_dump(mode="json")
    bad = Job(
        func_name="t0",
        args=[1],
        status=JobStatus.FAILED,
        attempts=3,
        error=JobError(type="ValueError", message="bad input", traceback="Traceback ...\nValueError: bad input\n"),
    ).model_dump(mode="json")
    started = time.perf_counter()
    chunk = 50_000
    for first in range(0, rows, chunk):
        batch = []
        for i in range(first, min(rows, first + chunk)):
            template = bad if rng.random() < 0.05 else ok
            finished = now - rng.random() * 30 * 86400
            record = dict(template)
            record.update(
                id=f"{i:032x}",
                func_name=f"t{i % 10}",
                finished_at=finished,
                started_at=finished - rng.random() * 0.5,
                created_at=finished - 1,
                worker_id=f"host:{i % 4}",
                # 1 in 2 jobs "common", 1 in 10,000 "rare"
                tags=(["common"] if i % 2 else []) + (["rare"] if i % 10_000 == 0 else []),
            )
            err = record["error"]
            row = (
                record["id"],
                record["func_name"],
                record["status"],
                record["attempts"],
                record["worker_id"],
                record["created_at"],
                record["started_at"],
                finished,
                None if err is None else err["type"],
                None if err is None else err["message"],
                serialization.dumps(record),
            )
            if with_tags_column:
                row += (json.dumps(record["tags"]) if record["tags"] else None,)
            batch.append(row)
        with results.db.write() as conn:
            if with_tags_column:
                _results.insert_results(conn, batch)
            else:
                conn.executemany(_results.INSERT_RESULT, batch)
    results.close()
    return time.perf_counter() - started


def timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pages(repeat: int) -> list[dict[str, Any]]:
    from nuvom.dashboard import create_app
    from nuvom.sqlite import SCHEMA_VERSION
    from starlette.testclient import TestClient

    slow_tags = SCHEMA_VERSION < 3  # before the tag index a rare tag takes seconds: fewer rounds

    app = create_app(token="", sample_every=3600)  # no background sampling: each cold request reads the store
    sampler = app.state.dashboard.sampler
    out = []
    with TestClient(app) as client:
        first = client.get("/jobs").text
        deep = time.time() - 15 * 86400
        deep_cursor = f"{deep!r}:{'f' * 32}"

        from nuvom.backends import get_result_backend

        def cold_overview() -> None:
            # Forces the request to read counts (past their cache), percentiles and workers from the store.
            sampler.samples.clear()
            sampler.stats.finished = -2
            get_result_backend()._counts = None  # type: ignore[attr-defined]
            assert client.get("/").status_code == 200

        cases = [
            ("overview, cold (counts + p50/p95 + workers read for the request)", cold_overview),
            ("overview fragment (htmx poll, from the sample)", lambda: client.get("/fragments/overview")),
            ("/api/samples (chart poll)", lambda: client.get("/api/samples")),
            ("jobs, first page", lambda: client.get("/jobs")),
            ("jobs, a page 15 days deep (cursor)", lambda: client.get(f"/jobs?before={deep_cursor}")),
            ("jobs, status=FAILED", lambda: client.get("/jobs?status=FAILED")),
            ("jobs, task=t3", lambda: client.get("/jobs?task=t3")),
            ("jobs, tag=common (1 in 2)", lambda: client.get("/jobs?tag=common")),
            ("jobs, tag=rare (1 in 10,000)", lambda: client.get("/jobs?tag=rare")),
            ("jobs, tag=common, 15 days deep (cursor)", lambda: client.get(f"/jobs?tag=common&before={deep_cursor}")),
            ("jobs, tag=rare, 15 days deep (cursor)", lambda: client.get(f"/jobs?tag=rare&before={deep_cursor}")),
            ("jobs, tag=common + status=FAILED", lambda: client.get("/jobs?tag=common&status=FAILED")),
            ("job page", lambda: client.get("/jobs/" + f"{12345:032x}")),
        ]
        assert "older" in first
        for label, fn in cases:
            fn()  # one warm-up: the first read of a cold file is the disk's figure, not ours
            reps = 3 if "rare" in label and slow_tags else repeat
            ms = timed(fn, reps)
            out.append({"case": label, "median_ms": round(statistics.median(ms), 2), "max_ms": round(max(ms), 2)})
            print(f"  {label:<70} median {statistics.median(ms):8.2f} ms   max {max(ms):8.2f} ms", flush=True)
        # The store's query alone (no routing or template): what the tag index changes.
        results = get_result_backend()
        for label, kwargs in (
            ("results.query(), first page", {}),
            ("results.query(tag=common)", {"tag": "common"}),
            ("results.query(tag=rare)", {"tag": "rare"}),
            ("results.query(tag=common), 15 days deep", {"tag": "common", "before": (deep, "f" * 32)}),
            ("results.query(tag=rare), 15 days deep", {"tag": "rare", "before": (deep, "f" * 32)}),
            ("results.query(tag=common, status=FAILED)", {"tag": "common", "status": "FAILED"}),
        ):

            def run(kwargs: dict[str, Any] = kwargs) -> None:
                results.query(limit=50, **kwargs)

            run()
            reps = 3 if "rare" in label and slow_tags else repeat
            ms = timed(run, reps)
            out.append({"case": label, "median_ms": round(statistics.median(ms), 3), "max_ms": round(max(ms), 3)})
            print(f"  {label:<70} median {statistics.median(ms):8.3f} ms   max {max(ms):8.2f} ms", flush=True)
        # The counts alone, without and with the cache keyed on the file's data_version.
        results._counts = None  # type: ignore[attr-defined]
        uncached = []
        for _ in range(5):
            results._counts = None  # type: ignore[attr-defined]
            t = time.perf_counter()
            results.counts()
            uncached.append((time.perf_counter() - t) * 1000)
        cached = timed(results.counts, repeat)
        for label, ms in (("results.counts(), file changed", uncached), ("results.counts(), unchanged", cached)):
            out.append({"case": label, "median_ms": round(statistics.median(ms), 3), "max_ms": round(max(ms), 3)})
            print(f"  {label:<70} median {statistics.median(ms):8.3f} ms", flush=True)
    return out


def polling(db: Path, secs: float) -> list[dict[str, Any]]:
    import sqlite3

    from nuvom.dashboard._sampler import Sampler
    from nuvom.job import Job, JobStatus
    from nuvom.sqlite import SQLiteResultBackend
    from nuvom.sqlite._db import Database

    statements = [0]
    sampler_thread = [0]
    opened = Database._open

    def count(_sql: str) -> None:
        # Only the statements the sampling thread sends; the writer's are its own.
        if threading.get_ident() == sampler_thread[0]:
            statements[0] += 1

    def counting_open(self: Database) -> sqlite3.Connection:
        conn = opened(self)
        conn.set_trace_callback(count)
        return conn

    Database._open = counting_open  # type: ignore[method-assign]
    out = []
    for mode in ("idle store", "writer storing 200 results/s"):
        from nuvom.testing import reset_process_state

        reset_process_state()
        stop = threading.Event()
        writer = None
        if mode != "idle store":
            other = SQLiteResultBackend(path=db)

            def write() -> None:
                while not stop.wait(0.05):
                    now = time.time()
                    other.store([Job(func_name="w", status=JobStatus.SUCCESS, finished_at=now) for _ in range(10)])

            writer = threading.Thread(target=write)
            writer.start()
        sampler = Sampler(every=2.0)
        cpu = [0.0]
        done = threading.Event()

        def run() -> None:
            sampler_thread[0] = threading.get_ident()
            sampler.take()  # the first look (cold cache) is not what polling costs
            statements[0] = 0
            t0 = time.thread_time()
            while not done.wait(sampler.every):
                sampler.take()
            cpu[0] = time.thread_time() - t0

        thread = threading.Thread(target=run)
        t = time.monotonic()
        thread.start()
        time.sleep(secs)  # the measurement window itself
        done.set()
        thread.join()
        elapsed = time.monotonic() - t
        stop.set()
        if writer is not None:
            writer.join()
        total = statements[0]
        samples = int(elapsed / sampler.every)
        row = {
            "mode": mode,
            "samples": samples,
            "sql_statements_per_s": round(total / elapsed, 2),
            "sampler_cpu_percent_of_a_core": round(cpu[0] / elapsed * 100, 3),
            "last_sample_ms": round(sampler.samples[-1].took_ms, 2),
        }
        out.append(row)
        print(f"  {mode:<32} {row}", flush=True)
    Database._open = opened  # type: ignore[method-assign]
    return out


def store_cost(base: Path, jobs: int, rounds: int) -> list[dict[str, Any]]:
    from nuvom.job import Job, JobStatus
    from nuvom.sqlite import SQLiteResultBackend

    wall: dict[str, list[float]] = {"no tags": [], "2 tags": []}
    cpu: dict[str, list[float]] = {"no tags": [], "2 tags": []}
    for r in range(rounds):
        for label, tags in (("no tags", []), ("2 tags", ["tenant-7", "nightly"])):
            results = SQLiteResultBackend(path=base / f"store-{r}-{len(tags)}.db")
            results.count()  # the schema, outside the timing
            now = time.time()
            # Finish times increase, as a worker's do.
            todo = [
                Job(func_name="t", args=[i], status=JobStatus.SUCCESS, finished_at=now + i * 1e-4, tags=tags)
                for i in range(jobs)
            ]
            t, c = time.perf_counter(), time.process_time()
            for first in range(0, jobs, 32):
                results.store(todo[first : first + 32])
            wall[label].append((time.perf_counter() - t) / jobs * 1e6)
            cpu[label].append((time.process_time() - c) / jobs * 1e6)
            results.close()
    rows = []
    for label in wall:
        row = {
            "case": f"store(), 32 jobs per transaction, {label}",
            "median_us_per_job": round(statistics.median(wall[label]), 2),
            "median_cpu_us_per_job": round(statistics.median(cpu[label]), 2),
            "rounds_us": [round(x, 2) for x in wall[label]],
            "rounds_cpu_us": [round(x, 2) for x in cpu[label]],
        }
        rows.append(row)
        print(
            f"  {row['case']:<50} median {row['median_us_per_job']:7.2f} us/job, "
            f"CPU {row['median_cpu_us_per_job']:7.2f} us/job   {row['rounds_cpu_us']}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--poll-secs", type=float, default=30.0)
    parser.add_argument("--reuse", type=Path, help="a folder filled by an earlier run (skips the fill)")
    parser.add_argument("--only", default="pages,polling,store", help="comma-separated parts to run")
    parser.add_argument("--store-jobs", type=int, default=20_000)
    parser.add_argument("--store-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dashboard.json")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    base = args.reuse or Path(tempfile.mkdtemp(prefix="nuvom-bench-dashboard-"))
    db = base / "nuvom.db"
    os.environ.update(
        NUVOM_DATA_DIR=str(base),
        NUVOM_QUEUE_BACKEND="sqlite",
        NUVOM_RESULT_BACKEND="sqlite",
        NUVOM_SQLITE_DB_PATH=str(db),
    )
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
        f"Python {sys.version.split()[0]}",
    }
    if parts & {"pages", "polling"}:
        print(f"filling {args.rows:,} results into {db} ...", flush=True)
        fill_secs = 0.0 if args.reuse else fill(db, args.rows)
        size = sum(p.stat().st_size for p in base.glob("nuvom.db*")) / 1e6
        print(f"  filled in {fill_secs:.1f} s, {size:.0f} MB", flush=True)
        report.update(rows=args.rows, db_mb=round(size))
    if "pages" in parts:
        print("pages:", flush=True)
        report["pages"] = pages(args.repeat)
    if "polling" in parts:
        print("polling:", flush=True)
        report["polling"] = polling(db, args.poll_secs)
    if "store" in parts:
        print("store:", flush=True)
        report["store"] = store_cost(base, args.store_jobs, args.store_rounds)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
