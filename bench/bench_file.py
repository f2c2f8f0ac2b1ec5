"""File backends end to end, beside huey's FileHuey: 20,000 trivial jobs.

    python bench/bench_file.py [--jobs 20000] [--rounds 3] [--workers 4]
    python bench/bench_file.py --history 100000     # list_jobs(limit=10) over N records

Each round, alternating, in fresh directories:

* nuvom: one worker process (``Worker().run_forever()`` with
  ``NUVOM_QUEUE_BACKEND=file NUVOM_RESULT_BACKEND=file``) is started and
  warmed up with one job; this process then enqueues N jobs with ``.map()``
  and waits until every result is stored.
* huey: one ``huey_consumer`` process (``-k thread -w <workers>``) on a
  ``FileHuey`` is started and warmed up the same way; this process enqueues
  the same N calls with ``.map()`` and waits until every result is stored.

Timed from the first enqueue to the last stored result. Both consumers poll
an empty queue at most every 50 ms (huey: ``-m 0.05``; its default 10 s
ceiling would make it sleep through the start). huey is needed only here
(``pip install huey``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NUVOM_TASKS = """
from nuvom.task import task


@task
def work(x):
    return x + 1
"""

HUEY_TASKS = """
import os

from huey import FileHuey

huey = FileHuey("bench", path=os.environ["HUEY_PATH"])


@huey.task()
def work(x):
    return x + 1
"""


def _wait_until(probe: Any, what: str, timeout: float = 600.0) -> None:
    # A tight poll on a cheap probe: the end of a run is seen within ~2 ms.
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


def run_nuvom(workdir: Path, n: int, workers: int) -> tuple[float, float]:
    from nuvom.backends import reset_backends
    from nuvom.backends.file import FileResultBackend
    from nuvom.config import reset_settings

    data_dir = workdir / "nuvom-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    env = {
        **os.environ,
        "NUVOM_QUEUE_BACKEND": "file",
        "NUVOM_RESULT_BACKEND": "file",
        "NUVOM_DATA_DIR": str(data_dir),
        "NUVOM_MAX_WORKERS": str(workers),
        "NUVOM_LOG_LEVEL": "WARNING",
    }
    os.environ.update({k: env[k] for k in ("NUVOM_QUEUE_BACKEND", "NUVOM_RESULT_BACKEND", "NUVOM_DATA_DIR")})
    reset_settings()
    reset_backends()
    tasks = importlib.import_module("bench_nuvom_tasks")
    worker = subprocess.Popen(
        [sys.executable, "-c", "from nuvom.worker import Worker; Worker().run_forever()"],
        cwd=workdir,
        env=env,
    )
    try:
        tasks.work.delay(0).get(timeout=60)  # worker up, imports done
        results = FileResultBackend()
        start = time.perf_counter()
        jobs = tasks.work.map(range(n))
        enqueued = time.perf_counter() - start
        for job in jobs:
            _wait_until(lambda job=job: results.get_full(job.id) is not None, "nuvom")
        elapsed = time.perf_counter() - start
        assert results.count() == n + 1, results.count()
        return elapsed, enqueued
    finally:
        _stop(worker)
        reset_backends()


def run_huey(workdir: Path, n: int, workers: int) -> tuple[float, float]:
    huey_path = workdir / "huey-data"
    shutil.rmtree(huey_path, ignore_errors=True)
    os.environ["HUEY_PATH"] = str(huey_path)
    sys.modules.pop("bench_huey_tasks", None)
    tasks = importlib.import_module("bench_huey_tasks")
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "bench_huey_tasks.huey",
            "-k",
            "thread",
            "-w",
            str(workers),
            "-m",
            "0.05",
            "-n",
            "-q",
        ],
        cwd=workdir,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tasks.work(0).get(blocking=True, timeout=60)
        storage = tasks.huey.storage
        from huey.constants import EmptyData

        start = time.perf_counter()
        handles = tasks.work.map(range(n))
        enqueued = time.perf_counter() - start
        for handle in handles:
            _wait_until(lambda h=handle: storage.peek_data(h.id) is not EmptyData, "huey")
        elapsed = time.perf_counter() - start
        return elapsed, enqueued
    finally:
        _stop(consumer)


def run_history(workdir: Path, records: int) -> None:
    """Time list_jobs(limit=10) (and a filtered one) over ``records`` stored jobs."""
    from nuvom.backends.file import FileResultBackend
    from nuvom.config import load_settings
    from nuvom.job import Job, JobStatus

    data_dir = workdir / "history-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    backend = FileResultBackend(load_settings(data_dir=data_dir))
    now = time.time()
    batch: list[Job] = []
    t0 = time.perf_counter()
    for i in range(records):
        failed = i % 100 == 0
        batch.append(
            Job(
                func_name="work",
                args=[i],
                status=JobStatus.FAILED if failed else JobStatus.SUCCESS,
                result=None if failed else i + 1,
                attempts=1,
                finished_at=now - records + i,
            )
        )
        if len(batch) == 500:
            backend.store(batch)
            batch = []
    backend.store(batch)
    print(f"stored {records:,} records in {time.perf_counter() - t0:.1f} s")
    backend.close()
    for label, kwargs in (
        ("list_jobs(limit=10)", {"limit": 10}),
        ("list_jobs(limit=10, status=FAILED)", {"limit": 10, "status": "FAILED"}),
        ("list_jobs(limit=100)", {"limit": 100}),
    ):
        fresh = FileResultBackend(load_settings(data_dir=data_dir))  # a new process's first call: no warm state
        times = []
        for _ in range(7):
            t = time.perf_counter()
            got = fresh.list_jobs(**kwargs)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t)
        assert len(got) == kwargs["limit"], len(got)
        assert got[0].finished_at == max(j.finished_at or 0 for j in got)
        print(f"{label:<38} median {statistics.median(times) * 1000:.2f} ms over {records:,} records")
    t = time.perf_counter()
    count = FileResultBackend(load_settings(data_dir=data_dir)).count()
    print(f"{'count()':<38} {(time.perf_counter() - t) * 1000:.1f} ms ({count:,})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--history", type=int, default=0, help="time list_jobs over this many records instead")
    parser.add_argument("--only", choices=("nuvom", "huey"), default=None)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    workdir = Path(tempfile.mkdtemp(prefix="nuvom-bench-file-"))
    try:
        if args.history:
            run_history(workdir, args.history)
            return
        (workdir / "bench_nuvom_tasks.py").write_text(NUVOM_TASKS)
        (workdir / "bench_huey_tasks.py").write_text(HUEY_TASKS)
        sys.path.insert(0, str(workdir))
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(args.rounds):
            if args.only != "huey":
                elapsed, enqueued = run_nuvom(workdir, args.jobs, args.workers)
                ours.append(elapsed)
                print(f"round {i + 1}: nuvom file    {elapsed:6.2f} s (enqueue done at {enqueued:.2f} s)", flush=True)
            if args.only != "nuvom":
                elapsed, enqueued = run_huey(workdir, args.jobs, args.workers)
                theirs.append(elapsed)
                print(f"round {i + 1}: huey FileHuey {elapsed:6.2f} s (enqueue done at {enqueued:.2f} s)", flush=True)
        print(f"jobs={args.jobs} workers={args.workers} rounds={args.rounds}")
        if ours:
            m = statistics.median(ours)
            print(f"nuvom file backends : median {m:.2f} s = {args.jobs / m:,.0f} jobs/s")
        if theirs:
            m = statistics.median(theirs)
            print(f"huey FileHuey       : median {m:.2f} s = {args.jobs / m:,.0f} jobs/s")
        if ours and theirs:
            print(f"ratio nuvom/huey throughput: {statistics.median(theirs) / statistics.median(ours):.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
