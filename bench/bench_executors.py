"""Executors: per-job cost of trivial jobs in threads, on the event loop and in
the process pool, beside huey's thread and process consumers and RQ's forking
worker; and the speed-up of a CPU-bound task in the process pool.

    python bench/bench_executors.py [--jobs 2000] [--rq-jobs 300] [--rounds 3] [--cpu-jobs 8]

A. nuvom alone, memory backends, an in-process ``Worker``: what each executor
   adds per job (no storage cost): thread (4 threads), async (one loop),
   process (2 children).
B. Side by side, each with durable storage and its worker in its own process,
   timed from the first enqueue to the last stored result:
   nuvom on SQLite (``python -m nuvom.worker``: 4 threads / ``--pool process
   --processes 2``), huey on SQLite (``huey_consumer -k thread -w 4`` /
   ``-k process -w 2``), RQ (its forking ``rq worker``: one fork per job) on
   a redis-server started on a free loopback port. huey and RQ are optional
   (``hatch run bench:executors`` installs them); missing ones are skipped.
C. A pure-Python loop (``--cpu-jobs`` jobs): 2 threads vs 2 processes; the
   ratio is the process pool's speed-up (the GIL serialises the threads).
Medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TASKS = """
import asyncio

from nuvom.task import task


@task
def work(x):
    return x + 1


@task
async def awork(x):
    return x + 1


@task(executor="process")
def pwork(x):
    return x + 1


def burn(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


@task(timeout_secs=600)
def burn_thread(n):
    return burn(n)


@task(executor="process", timeout_secs=600)
def burn_process(n):
    return burn(n)
"""

HUEY_TASKS = """
import os

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["HUEY_DB"])


@huey.task()
def work(x):
    return x + 1
"""

HUEY_CONSUMER = [sys.executable, "-m", "huey.bin.huey_consumer", "bench_huey_tasks.huey"]

RQ_TASKS = """
def work(x):
    return x + 1
"""


def _wait(probe: Callable[[], bool], what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done after {timeout} s")
        time.sleep(0.002)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- A: nuvom executors in process ---------------------------------------------
def nuvom_in_process(tasks: Any, kind: str, n: int) -> float:
    from nuvom.testing import isolated_app
    from nuvom.worker import Worker

    fn = {"thread": tasks.work, "async": tasks.awork, "process": tasks.pwork}[kind]
    with isolated_app(batch_size=256) as app, Worker(app=app, max_workers=4, processes=2) as worker:
        fn.delay(0).get(timeout=120)  # executor up
        if kind == "process":
            worker._executors["process"].wait_ready(120)  # both children started
        start = time.perf_counter()
        jobs = fn.map(range(n))
        for job in jobs:
            job.get(timeout=600)
        return n / (time.perf_counter() - start)


def machine_parallelism(jobs: int, size: int) -> float:
    """The same loop in bare interpreters, one after another vs two at once: what
    this machine gives two processes right now (a noisy shared VM gives less than 2)."""
    code = f"t = 0\nfor i in range({size * jobs // 2}): t += i * i % 7"
    start = time.perf_counter()
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], check=True)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    for p in procs:
        p.wait()
    return sequential / (time.perf_counter() - start)


def cpu_ratio(tasks: Any, jobs: int, size: int) -> tuple[float, float]:
    from nuvom.testing import isolated_app
    from nuvom.worker import Worker

    out = []
    for fn in (tasks.burn_thread, tasks.burn_process):
        with isolated_app() as app, Worker(app=app, max_workers=2, processes=2) as worker:
            fn.delay(10).get(timeout=120)
            if "process" in worker._executors:
                worker._executors["process"].wait_ready(120)  # both children started
            start = time.perf_counter()
            for job in fn.map([size] * jobs):
                job.get(timeout=600)
            out.append(time.perf_counter() - start)
    return out[0], out[1]


# -- B: side by side, durable storage, worker processes ---------------------------
def nuvom_sqlite(workdir: Path, tasks: Any, kind: str, n: int) -> float:
    from nuvom.testing import isolated_app

    data = workdir / f"nuvom-{kind}"
    shutil.rmtree(data, ignore_errors=True)
    env = {**os.environ, "NUVOM_QUEUE_BACKEND": "sqlite", "NUVOM_RESULT_BACKEND": "sqlite"}
    env.update({"NUVOM_DATA_DIR": str(data), "NUVOM_LOG_LEVEL": "WARNING", "PYTHONPATH": str(workdir)})
    args = ["--threads", "4"] if kind == "thread" else ["--pool", "process", "--processes", "2"]
    worker = subprocess.Popen([sys.executable, "-m", "nuvom.worker", "bench_exec_tasks", *args], cwd=workdir, env=env)
    try:
        with isolated_app(queue_backend="sqlite", result_backend="sqlite", data_dir=data) as app:
            tasks.work.delay(0).get(timeout=120)
            start = time.perf_counter()
            jobs = tasks.work.map(range(n))
            for job in jobs:
                job.get(timeout=600)
            rate = n / (time.perf_counter() - start)
            app.close()
        return rate
    finally:
        _stop(worker)


def huey_sqlite(workdir: Path, kind: str, n: int) -> float:
    db = workdir / f"huey-{kind}.db"
    for p in workdir.glob(f"huey-{kind}.db*"):
        p.unlink()
    os.environ["HUEY_DB"] = str(db)
    sys.modules.pop("bench_huey_tasks", None)
    tasks = importlib.import_module("bench_huey_tasks")
    workers = "4" if kind == "thread" else "2"
    consumer = subprocess.Popen(
        [*HUEY_CONSUMER, "-k", kind, "-w", workers, "-m", "0.05", "-n", "-q"],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(workdir)},
    )
    try:
        tasks.work(0)(blocking=True, timeout=120)
        start = time.perf_counter()
        results = [tasks.work(i) for i in range(n)]
        for r in results:
            r(blocking=True, timeout=600)
        return n / (time.perf_counter() - start)
    finally:
        _stop(consumer)


def rq_fork(workdir: Path, n: int) -> float:
    from redis import Redis
    from rq import Queue

    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        conn = Redis(host="127.0.0.1", port=port)
        _wait(lambda: _ping(conn), "redis-server", 30)
        env = {**os.environ, "PYTHONPATH": str(workdir)}
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("rq")), "worker", "--url", f"redis://127.0.0.1:{port}", "-q", "bench"],
            cwd=workdir,
            env=env,
        )
        try:
            sys.modules.pop("bench_rq_tasks", None)
            tasks = importlib.import_module("bench_rq_tasks")
            q = Queue("bench", connection=conn)
            first = q.enqueue(tasks.work, 0)
            _wait(lambda: first.get_status(refresh=True) == "finished", "rq warm-up", 120)
            start = time.perf_counter()
            jobs = [q.enqueue(tasks.work, i) for i in range(n)]
            for job in jobs:
                _wait(lambda job=job: job.get_status(refresh=True) == "finished", "rq")
            return n / (time.perf_counter() - start)
        finally:
            _stop(worker)
    finally:
        _stop(server)


def _ping(conn: Any) -> bool:
    try:
        return bool(conn.ping())
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rq-jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-jobs", type=int, default=8)
    parser.add_argument("--cpu-size", type=int, default=3_000_000)
    args = parser.parse_args()
    logging.getLogger("nuvom").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="nuvom-bench-exec-"))
    (workdir / "bench_exec_tasks.py").write_text(TASKS)
    (workdir / "bench_huey_tasks.py").write_text(HUEY_TASKS)
    (workdir / "bench_rq_tasks.py").write_text(RQ_TASKS)
    sys.path.insert(0, str(workdir))
    os.chdir(workdir)
    tasks = importlib.import_module("bench_exec_tasks")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")

    runs: dict[str, Callable[[], float]] = {
        "A nuvom thread (memory, 4 threads)": lambda: nuvom_in_process(tasks, "thread", args.jobs),
        "A nuvom async (memory, one loop)": lambda: nuvom_in_process(tasks, "async", args.jobs),
        "A nuvom process (memory, 2 children)": lambda: nuvom_in_process(tasks, "process", args.jobs),
        "B nuvom thread (sqlite, 4 threads)": lambda: nuvom_sqlite(workdir, tasks, "thread", args.jobs),
        "B nuvom process (sqlite, 2 children)": lambda: nuvom_sqlite(workdir, tasks, "process", args.jobs),
    }
    if importlib.util.find_spec("huey") is not None:
        runs["B huey thread (sqlite, 4 threads)"] = lambda: huey_sqlite(workdir, "thread", args.jobs)
        runs["B huey process (sqlite, 2 processes)"] = lambda: huey_sqlite(workdir, "process", args.jobs)
    else:
        print("huey not installed: skipped")
    if importlib.util.find_spec("rq") is not None and shutil.which("redis-server"):
        runs["B rq forking worker (redis)"] = lambda: rq_fork(workdir, args.rq_jobs)
    else:
        print("rq or redis-server not installed: skipped")

    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():  # interleaved: load changes hit every system alike
            rates[name].append(run())
    print(f"\ntrivial jobs ({args.jobs}; rq {args.rq_jobs}), jobs/s, median of {args.rounds}:")
    for name, values in rates.items():
        print(f"  {name:40s} {statistics.median(values):8.0f}   ({', '.join(f'{v:.0f}' for v in values)})")

    thread_t, process_t, bare = [], [], []
    for _ in range(args.rounds):
        a, b = cpu_ratio(tasks, args.cpu_jobs, args.cpu_size)
        thread_t.append(a)
        process_t.append(b)
        bare.append(machine_parallelism(args.cpu_jobs, args.cpu_size))
    mt, mp = statistics.median(thread_t), statistics.median(process_t)
    print(f"\nCPU-bound: {args.cpu_jobs} jobs of a {args.cpu_size:,}-step loop, median of {args.rounds}:")
    print(f"  2 threads   {mt:6.2f} s\n  2 processes {mp:6.2f} s\n  speed-up    {mt / mp:6.2f}x")
    ceiling = statistics.median(bare)
    print(f"  bare interpreters, two at once vs one after another: {ceiling:.2f}x (the machine's ceiling)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
