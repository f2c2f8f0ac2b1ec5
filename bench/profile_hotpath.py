"""Where a job's time goes on the hot path, per phase, measured with yappi (all threads, CPU clock).

    python bench/profile_hotpath.py [--jobs 10000]   # needs `pip install yappi`; sqlite part needs nuvom-sqlite
    python bench/profile_hotpath.py --jobs 5000 --cpu-split 5   # untraced CPU per job by thread (memory)

Two runs, each under yappi:

* memory: in-process ``Worker(app=App(memory settings), max_workers=4)``,
  N ``.delay()`` then ``job.get()`` of each (producer and worker threads).
* sqlite ``.delay()``: the producer side only, N ``.delay()`` one at a time
  into a SQLite queue (no worker), the part the issue names as the bound.

Prints, per phase, the inclusive CPU time (``ttot``) of the function that is
that phase, divided by N, in microseconds. Phases nest (``delay`` contains job
building and the insert), so the lines do not add up to the total.
yappi's own tracing overhead inflates every figure by roughly 2-3x; the
ratios between phases are what to read.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yappi

# (label, module-path suffix, function name): one function per phase.
PHASES = [
    ("Task.delay (whole producer call)", "_task.py", "delay"),
    ("  make_job: job building", "_task.py", "make_job"),
    ("    serialization.dumps (payload size check)", "serialization.py", "dumps"),
    ("    new_job_id", "job.py", "new_job_id"),
    ("    Job.trusted (model construction)", "job.py", "trusted"),
    ("  memory queue enqueue (lock + notify one)", "memory.py", "enqueue"),
    ("  sqlite queue enqueue (row + insert + commit)", "_queue.py", "enqueue"),
    ("    Job.to_bytes (encoding)", "job.py", "to_bytes"),
    ("    Database.write_one (the autocommitted INSERT)", "_db.py", "write_one"),
    ("      sqlite3 execute (statement + commit)", "", "execute"),
    ("Job.get (producer's read-back)", "job.py", "get"),
    ("  MemoryResultBackend.wait", "memory.py", "wait"),
    ("  SQLiteResultBackend.wait", "_results.py", "wait"),
    ("    SQLiteResultBackend.get_full (SELECT + decode)", "_results.py", "get_full"),
    ("    ResultWatcher.wait_for (the wake-up)", "_watch.py", "wait_for"),
    ("  Job.from_bytes (decoding)", "job.py", "from_bytes"),
    ("watcher thread: ResultWatcher._run (data_version + lookups)", "_watch.py", "_run"),
    ("worker: pop_batch (claim)", "memory.py", "pop_batch"),
    ("worker: SQLiteJobQueue.pop_batch (claim, polls included)", "_queue.py", "pop_batch"),
    ("  SQLiteJobQueue._claim (SELECT + UPDATE + decode)", "_queue.py", "_claim"),
    ("  Job.mark_claimed", "job.py", "mark_claimed"),
    ("worker: MemoryResultBackend.store (completion + wake)", "memory.py", "store"),
    ("worker: SQLiteJobQueue.complete (DELETE + INSERT result)", "_queue.py", "complete"),
    ("  Job.mark_succeeded", "job.py", "mark_succeeded"),
    ("worker: Job.mark_started", "job.py", "mark_started"),
]


def work(x: int) -> int:
    return x


def report(title: str, n: int, wall: float) -> None:
    stats = yappi.get_func_stats()
    print(f"\n== {title}: N={n}, wall {wall:.3f} s under yappi ({n / wall:,.0f} jobs/s traced)")
    print(f"{'phase':58} {'us/job':>8} {'calls/job':>10}")
    for label, module, name in PHASES:
        tot, calls = 0.0, 0
        for s in stats:
            short = s.name.rsplit(".", 1)[-1]
            builtin = not module and f"'{name}' of 'sqlite3" in s.name
            if builtin or (module and short == name and s.module.endswith(module)):
                tot += s.ttot
                calls += s.ncall
        if calls:
            print(f"{label:58} {tot / n * 1e6:8.1f} {calls / n:10.2f}")
    top = sorted(stats, key=lambda s: s.tsub, reverse=True)[:12]
    print("top functions by own CPU time (us/job):")
    for s in top:
        print(f"  {s.tsub / n * 1e6:7.1f}  {s.name}  ({Path(s.module).name}:{s.lineno})")


def _profile_delay_get(settings: Any, label: str, n: int) -> None:
    """yappi over all threads: an in-process Worker(max_workers=4), N `.delay()`, then `get()` of each."""
    from nuvom.app import App
    from nuvom.worker import Worker

    app = App(settings)
    noop = app.task(work, name="work")
    with Worker(app=app, max_workers=4):
        noop.delay(-1).get(timeout=60)
        yappi.clear_stats()
        yappi.start(builtins=True, profile_threads=True)
        t0 = time.perf_counter()
        jobs = [noop.delay(i) for i in range(n)]
        for job in jobs:
            job.get(timeout=120)
        wall = time.perf_counter() - t0
        yappi.stop()
    report(label, n, wall)
    app.close()


def profile_memory(n: int) -> None:
    from nuvom.config import Settings

    settings = Settings(queue_backend="memory", result_backend="memory")
    _profile_delay_get(settings, "memory: .delay() x N then job.get() each (all threads)", n)


def profile_sqlite_e2e(n: int) -> None:
    """Producer, worker threads and the result watcher in one process, on one file."""
    from nuvom.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(queue_backend="sqlite", result_backend="sqlite", data_dir=Path(tmp))
        _profile_delay_get(settings, "sqlite in one process: .delay() x N then job.get() each (all threads)", n)


def profile_sqlite_delay(n: int) -> None:
    from nuvom.app import App
    from nuvom.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        app = App(Settings(queue_backend="sqlite", result_backend="sqlite", data_dir=Path(tmp)))
        noop = app.task(work, name="work")
        noop.delay(-1)
        yappi.clear_stats()
        yappi.start(builtins=True, profile_threads=False)
        t0 = time.perf_counter()
        for i in range(n):
            noop.delay(i)
        wall = time.perf_counter() - t0
        yappi.stop()
        report("sqlite: .delay() x N, producer only", n, wall)
        app.close()


def per_call(fn: Any, n: int, *, cpu: bool = False) -> float:
    """Best of 5 runs of ``fn`` n times, microseconds a call, no profiler.
    ``cpu``: this thread's CPU time instead of the wall clock, for phases that
    do no I/O: on a loaded machine it is far steadier (the wall clock also
    counts the time other processes held the core)."""
    clock = time.thread_time if cpu else time.perf_counter
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        for _ in range(n):
            fn()
        best = min(best, clock() - t0)
    return best / n * 1e6


def direct_timings(n: int) -> None:
    """Each phase timed alone, untraced (the figures to quote; yappi's show the shape)."""
    import sqlite3

    from nuvom import serialization
    from nuvom.app import App
    from nuvom.config import Settings
    from nuvom.job import Job, new_job_id

    app = App(Settings(queue_backend="memory", result_backend="memory"))
    noop = app.task(work, name="work")
    job = noop.make_job([1], {}, app)
    values = dict(job.__dict__)
    rows: list[tuple[str, float]] = [
        ("make_job (whole)", per_call(lambda: noop.make_job([1], {}, app), n, cpu=True)),
        (
            "  serialization.dumps([args, kwargs]) (size check)",
            per_call(lambda: serialization.dumps([[1], {}]), n, cpu=True),
        ),
        ("  new_job_id", per_call(new_job_id, n, cpu=True)),
        ("  Job.trusted", per_call(lambda: Job.trusted(dict(values), app), n, cpu=True)),
        ("Job.to_bytes (encoding for a durable queue)", per_call(job.to_bytes, n, cpu=True)),
    ]
    data = job.to_bytes()
    rows.append(("Job.from_bytes (decoding a record)", per_call(lambda: Job.from_bytes(data), n, cpu=True)))
    attempt = job.mark_started("w", time.time())
    job.mark_succeeded(attempt, 1, time.time())
    app.results.store([job])
    rows.append(("memory: job.get() of a finished job", per_call(lambda: job.get(timeout=1), n, cpu=True)))
    rows.append(("memory: results.store([job]) (no waiter)", per_call(lambda: app.results.store([job]), n, cpu=True)))
    rows.append(("memory: Task.delay (make_job + enqueue)", per_call(lambda: noop.delay(1), n, cpu=True)))
    app.close()
    with tempfile.TemporaryDirectory() as tmp:
        fapp = App(Settings(queue_backend="file", result_backend="file", data_dir=Path(tmp) / "file"))
        fnoop = fapp.task(work, name="work")
        rows.append(("file: Task.delay (whole)", per_call(lambda: fnoop.delay(1), n)))
        fapp.results.store([job])
        rows.append(
            (
                "file: job.get() of a finished job (open + read + decode)",
                per_call(lambda: fapp.results.wait(job.id, 1), n),
            )
        )
        fapp.close()
        floor_dir = Path(tmp) / "floor"
        (floor_dir / "queue").mkdir(parents=True)
        names = iter(range(10**9))

        def file_floor() -> None:
            i = next(names)
            tmp_path = f"{floor_dir}/{i}.tmp"
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
            os.replace(tmp_path, f"{floor_dir}/queue/{i:020d}.msgpack")

        rows.append(("bare files: create + write + close + rename of the same bytes", per_call(file_floor, n)))
    try:
        import nuvom.sqlite  # noqa: F401
    except ImportError:
        pass
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sapp = App(Settings(queue_backend="sqlite", result_backend="sqlite", data_dir=Path(tmp)))
            snoop = sapp.task(work, name="work")
            jobs = iter([snoop.make_job([i], {}, sapp) for i in range(6 * n)])
            rows.append(
                (
                    "sqlite: queue.enqueue(job) (encode + insert + commit)",
                    per_call(lambda: sapp.queue.enqueue(next(jobs)), n),
                )
            )
            rows.append(("sqlite: Task.delay (whole)", per_call(lambda: snoop.delay(1), n)))
            sapp.results.store([job])
            rows.append(
                (
                    "sqlite: job.get() of a finished job (read + decode)",
                    per_call(lambda: sapp.results.wait(job.id, 1), n),
                )
            )
            sapp.close()
            conn = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # The queue table's shape (its two indexes cost pages on every insert).
            conn.execute(
                "CREATE TABLE q (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, func_name TEXT NOT NULL, "
                "state INTEGER NOT NULL DEFAULT 0, ready_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
                "timeout_secs REAL, claim_token INTEGER, claimed_by TEXT, created_at REAL NOT NULL, "
                "payload BLOB NOT NULL)"
            )
            conn.execute("CREATE INDEX q_ready ON q (ready_at)")
            insert = (
                "INSERT INTO q (id, func_name, state, ready_at, attempts, timeout_secs, created_at, payload) "
                "VALUES (?, 'work', 0, 1.0, 0, NULL, 1.0, ?)"
            )
            ids = iter([new_job_id() for _ in range(12 * n)])

            def floor_explicit() -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(insert, (next(ids), data))
                conn.execute("COMMIT")

            rows.append(("bare sqlite3: BEGIN IMMEDIATE + INSERT + COMMIT", per_call(floor_explicit, n)))
            rows.append(
                (
                    "bare sqlite3: autocommit INSERT (the floor)",
                    per_call(lambda: conn.execute(insert, (next(ids), data)), n),
                )
            )
            conn.close()
    print(f"\n== direct timings, no profiler (best of 5 x {n} calls; memory and encoding phases in CPU time)")
    for label, us in rows:
        print(f"{label:58} {us:8.2f} us")


def cpu_split(n: int, rounds: int) -> None:
    """Untraced CPU per job of the memory path by thread, against the executor:
    the process's CPU time (``time.process_time``) and the producer thread's
    (``time.thread_time``) over N ``.delay()`` (or one ``.map()``) then ``get()``
    of each; the worker's threads are the difference. Medians of interleaved
    rounds; each round starts after a ``gc.collect()`` (see bench_hotpath)."""
    import gc
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from nuvom.app import App
    from nuvom.config import Settings
    from nuvom.worker import Worker

    def measure(enqueue: Any, get: Any) -> dict[str, float]:
        gc.collect()
        p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
        handles = enqueue()
        t1 = time.thread_time()
        for handle in handles:
            get(handle)
        p2, t2, w2 = time.process_time(), time.thread_time(), time.perf_counter()
        return {
            "total": (p2 - p0) / n * 1e6,
            "producer: enqueue": (t1 - t0) / n * 1e6,
            "producer: get": (t2 - t1) / n * 1e6,
            "worker threads": ((p2 - p0) - (t2 - t0)) / n * 1e6,
            "jobs/s": n / (w2 - w0),
        }

    def nuvom(mode: str) -> dict[str, float]:
        app = App(Settings(queue_backend="memory", result_backend="memory"))
        noop = app.task(work, name="work")
        with Worker(app=app, max_workers=4):
            noop.delay(-1).get(timeout=60)
            if mode == "delay":
                out = measure(lambda: [noop.delay(i) for i in range(n)], lambda j: j.get(timeout=60))
            else:
                out = measure(lambda: noop.map(range(n)), lambda j: j.get(timeout=60))
        app.close()
        return out

    def executor() -> dict[str, float]:
        with ThreadPoolExecutor(4) as pool:
            pool.submit(work, 0).result()
            return measure(lambda: [pool.submit(work, i) for i in range(n)], lambda f: f.result())

    def engine_alone() -> float:
        """The worker's CPU per job with one thread and the collector off: N jobs
        built beforehand, queued at once, the producer blocked on the last; the
        Python the engine runs per job, without GIL hand-offs or collections."""
        app = App(Settings(queue_backend="memory", result_backend="memory"))
        noop = app.task(work, name="work")
        jobs = [noop.make_job([i], {}, app) for i in range(n)]
        with Worker(app=app, max_workers=1):
            noop.delay(-1).get(timeout=60)
            gc.collect()
            gc.disable()
            try:
                p0, t0 = time.process_time(), time.thread_time()
                app.queue.enqueue_many(jobs)
                jobs[-1].get(timeout=60)
                p1, t1 = time.process_time(), time.thread_time()
            finally:
                gc.enable()
        app.close()
        return ((p1 - p0) - (t1 - t0)) / n * 1e6

    nuvom("delay")
    executor()
    alone = sorted(engine_alone() for _ in range(rounds))
    runs: dict[str, list[dict[str, float]]] = {"executor submit+result": [], "nuvom .delay()": [], "nuvom .map()": []}
    for _ in range(rounds):
        runs["executor submit+result"].append(executor())
        runs["nuvom .delay()"].append(nuvom("delay"))
        runs["nuvom .map()"].append(nuvom("map"))
    fields = list(runs["nuvom .delay()"][0])
    print(f"\n== untraced CPU us per job by thread, memory, medians of {rounds} interleaved rounds of {n} jobs")
    print(f"{'':24}" + "".join(f"{f:>20}" for f in fields))
    for name, rows in runs.items():
        print(f"{name:24}" + "".join(f"{statistics.median(r[f] for r in rows):20.1f}" for f in fields))
    print(
        f"engine alone (1 thread, collector off, jobs queued at once): {alone[0]:.1f} us a job at best, "
        f"median {statistics.median(alone):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--direct-only", action="store_true", help="only the untraced timings (no yappi runs)")
    parser.add_argument(
        "--cpu-split", type=int, metavar="ROUNDS", help="only the untraced CPU per job by thread (memory), in ROUNDS"
    )
    args: Any = parser.parse_args()
    if args.cpu_split:
        cpu_split(args.jobs, args.cpu_split)
        return
    direct_timings(min(args.jobs, 5000))
    if args.direct_only:
        return
    yappi.set_clock_type("cpu")
    profile_memory(args.jobs)
    try:
        import nuvom.sqlite  # noqa: F401
    except ImportError:
        print("\nnuvom-sqlite not installed: sqlite part skipped")
    else:
        profile_sqlite_delay(args.jobs)
        profile_sqlite_e2e(min(args.jobs, 3000))


if __name__ == "__main__":
    main()
