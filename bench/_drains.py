"""One measurement each of bench_engine.py: a worker draining a queued backlog, a producer loop, a floor.

Each function runs one system once and returns its figures (``rate``: jobs/s;
``cpu``: microseconds of CPU a job; RSS in bytes); bench_engine.py interleaves
them in rounds. They reuse bench_hotpath.py (producer loops, tuned huey,
floors), bench_drain.py (the stamping task) and bench_redis.py (the server, the
bare consumer).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import bench_drain
import bench_hotpath
import bench_redis
from _common import Sample, import_fresh, sample_until, spawn, stop_processes

# Queued before the worker starts, 10,000 a call (a .map() of 200,000 would hold them all in memory).
QUEUE = """
import sys, tasks

n = int(sys.argv[1])
for start in range(0, n, 10_000):
    tasks.stamp.map([(i,) for i in range(start, min(n, start + 10_000))])
"""

# bench_hotpath's huey module (tuned storage) plus the task bench_drain.TASKS defines for nuvom.
HUEY_STAMP = """

@huey.task()
def stamp(i):
    import time

    return time.time()
"""

HUEY_QUEUE = """
import sys, hueytasks

for i in range(int(sys.argv[1])):
    hueytasks.stamp(i)
"""

WORKER = ["-m", "nuvom.worker", "tasks", "--threads", "4"]
# Sampling intervals: drains timed by their jobs' stamps; the bare consumer, timed by its samples; RSS watched.
FAST, FINE, SLOW = 0.01, 0.002, 0.5


# -- figures from samples ---------------------------------------------------------------
def drain_figures(samples: list[Sample], n: int, stamps: list[float] | None) -> dict[str, float]:
    """jobs/s from the first job's run to the last's (``stamps``, each job's run
    time) or, without stamps, between the first sample that saw a stored job
    and the one that saw all; worker CPU a job between those two samples."""
    moving = [s for s in samples if s.done > 0]
    first, last = moving[0], samples[-1]
    jobs = last.done - first.done
    # /proc counts CPU in clock ticks (10 ms): a drain shorter than a few ticks has no CPU figure.
    cpu = (last.cpu - first.cpu) / jobs * 1e6 if jobs > 0 and last.cpu > first.cpu else math.nan
    if stamps is None:
        rate = jobs / (last.t - first.t) if jobs > 0 else math.nan
    elif len(stamps) < n:
        raise RuntimeError(f"only {len(stamps)} of {n} results read back")
    else:
        rate = (len(stamps) - 1) / (max(stamps) - min(stamps))
    return {"rate": rate, "cpu": cpu}


def rss_figures(samples: list[Sample], n: int) -> dict[str, float]:
    """RSS (bytes) at the first stored job, after warm-up (a tenth of the jobs
    done), at its peak and at the end; growth: the peak after warm-up less warm-up."""
    live = [s for s in samples if s.done > 0] or samples
    warm = next((s for s in live if s.done >= n / 10), live[-1])
    return {
        "rss_start": live[0].rss,
        "rss_warm": warm.rss,
        "rss_peak": max(s.rss for s in live),
        "rss_end": samples[-1].rss,
        "rss_growth": max(s.rss for s in live if s.t >= warm.t) - warm.rss,
    }


# -- helpers ----------------------------------------------------------------------------
def workdir_in(base: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))


def queue_jobs(workdir: Path, env: dict[str, str], code: str, n: int) -> None:
    out = subprocess.run([sys.executable, "-c", code, str(n)], cwd=workdir, env=env, capture_output=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"queueing failed: {out.stderr.decode()[-1000:]}")


def watch(workdir: Path, procs: list[subprocess.Popen[bytes]], count: Any, n: int, interval: float) -> list[Sample]:
    """Samples until ``count()`` reaches ``n``; a failure names the end of the processes' logs."""
    try:
        return sample_until(count, n, [p.pid for p in procs], interval, procs=procs)
    except RuntimeError as exc:
        logs = " | ".join(p.read_text(errors="replace")[-300:].strip() for p in sorted(workdir.glob("*.log")))
        raise RuntimeError(f"{exc}; logs: {logs or '(empty)'}") from None


def open_results(store: str, workdir: Path, redis_url: str | None) -> Any:
    """nuvom's result backend of a worker run with bench_hotpath.nuvom_env(workdir, store, redis_url)."""
    from nuvom.config import Settings

    settings = Settings(queue_backend=store, result_backend=store, data_dir=workdir / "data")
    if store == "redis":
        from nuvom.redis import RedisResultBackend, RedisSettings

        if redis_url is None:
            raise ValueError("the redis store needs the server's URL")
        return RedisResultBackend(settings, redis=RedisSettings(redis_url=redis_url))
    if store == "sqlite":
        from nuvom.sqlite import SQLiteResultBackend

        return SQLiteResultBackend(settings)
    from nuvom.backends.file import FileResultBackend

    return FileResultBackend(settings)


# -- drains: a backlog queued first, then one (or two) worker processes ---------------
def nuvom_drain(
    base: Path, store: str, n: int, redis_url: str | None, *, workers: int = 1, interval: float = FAST
) -> dict[str, float]:
    """``python -m nuvom.worker tasks --threads 4`` process(es) draining ``n`` queued jobs.
    Sampled slowly (``interval=SLOW``, the RSS row), the rate is from the samples:
    reading back 200,000 results would take longer than the drain."""
    workdir = workdir_in(base, f"drain-{store}")
    (workdir / "tasks.py").write_text(bench_drain.TASKS)
    env = bench_hotpath.nuvom_env(workdir, store, redis_url)
    if redis_url:
        bench_redis.flush(redis_url)
    queue_jobs(workdir, env, QUEUE, n)
    results = open_results(store, workdir, redis_url)
    procs = [spawn(WORKER, workdir, env, f"worker-{i}.log") for i in range(workers)]
    try:
        samples = watch(workdir, procs, results.count, n, interval)
    finally:
        stop_processes(procs)
    stamps = [job.result for job in results.list_jobs(limit=n + 1)] if interval < SLOW else None
    results.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return {**drain_figures(samples, n, stamps), **rss_figures(samples, n)}


def huey_drain(base: Path, kind: str, n: int, redis_url: str | None) -> dict[str, float]:
    """bench_hotpath's tuned huey consumer (4 threads) draining ``n`` queued tasks."""
    workdir = workdir_in(base, f"huey-drain-{kind}")
    (workdir / "hueytasks.py").write_text(bench_hotpath.HUEY_TASKS + HUEY_STAMP)
    path = redis_url or str(workdir / "huey.db")
    env = bench_hotpath.clean_env(PYTHONPATH=str(workdir), HUEY_KIND=kind, HUEY_PATH=path)
    if redis_url:
        bench_redis.flush(redis_url)
    queue_jobs(workdir, env, HUEY_QUEUE, n)
    os.environ.update(HUEY_KIND=kind, HUEY_PATH=path)  # read by hueytasks, imported here to count
    huey = import_fresh("hueytasks", workdir).huey
    procs = [spawn(["-c", bench_hotpath.HUEY_CONSUMER], workdir, env, "consumer.log")]
    try:
        samples = watch(workdir, procs, huey.result_count, n, FAST)
    finally:
        stop_processes(procs, signal.SIGINT)
    stamps = [huey.serializer.deserialize(v) for v in huey.all_results().values()]
    shutil.rmtree(workdir, ignore_errors=True)
    return drain_figures(samples, n, stamps)


def redis_floor_drain(base: Path, n: int, redis_url: str) -> dict[str, float]:
    """bench_redis's bare redis-py consumer (BLMPOP 64, pipelined SETs) draining ``n`` queued payloads;
    it stores no run times, so its rate is from samples taken every 2 ms (at most two
    intervals short of the truth: a 20,000-job drain takes about a second)."""
    import redis

    bench_redis.flush(redis_url)
    client = redis.Redis.from_url(redis_url)
    payloads = bench_redis.floor_payloads(n)
    for k in range(0, n, 1000):
        client.rpush("floor:q", *payloads[k : k + 1000])
    workdir = workdir_in(base, "floor-drain")
    procs = [
        spawn(["-c", bench_redis.FLOOR_CONSUMER], workdir, bench_hotpath.clean_env(BENCH_REDIS_URL=redis_url), "c.log")
    ]
    try:
        samples = watch(workdir, procs, lambda: int(client.get("floor:done") or 0), n, FINE)
    finally:
        stop_processes(procs)
    client.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return drain_figures(samples, n, None)


def sqlite_floor_drain(base: Path, n: int, batch: int, fused: bool, slots: int = 0) -> dict[str, float]:
    wall, cpu = bench_hotpath.sqlite_drain_floor(base, n, batch, fused, slots)
    return {"rate": 1 / wall, "cpu": cpu * 1e6}


# -- producer loops: N calls, then get() of each (bench_hotpath) ------------------------
def nuvom_e2e(base: Path, store: str, n: int, modes: list[str], redis_url: str | None) -> dict[str, float]:
    if redis_url:
        bench_redis.flush(redis_url)
    return {
        mode: n / fig["total"] for mode, fig in bench_hotpath.run_nuvom_e2e(base, store, n, modes, redis_url).items()
    }


def huey_e2e(base: Path, kind: str, n: int, modes: list[str], redis_url: str | None) -> dict[str, float]:
    if redis_url:
        bench_redis.flush(redis_url)
    figures = bench_hotpath.run_huey_e2e(base, kind, n, redis_url, tuple(modes))
    return {mode: n / fig["total"] for mode, fig in figures.items()}


def rq_e2e(base: Path, n: int, modes: list[str], redis_url: str) -> dict[str, float]:
    bench_redis.flush(redis_url)
    return {mode: n / fig["total"] for mode, fig in bench_hotpath.run_rq_e2e(base, n, redis_url, tuple(modes)).items()}


# -- memory, in this process ------------------------------------------------------------
def memory_rss(n: int, chunk: int = 1000) -> dict[str, float]:
    """This process's RSS while a memory-backed ``Worker(max_workers=4)`` runs ``n``
    jobs fed ``chunk`` at a time with ``.map()``, each result read with ``get()``;
    ``held``: the records the memory result store holds at the end."""
    from nuvom.app import App
    from nuvom.config import Settings
    from nuvom.worker import Worker

    app = App(Settings(queue_backend="memory", result_backend="memory"))
    noop = app.task(bench_hotpath.work, name="work")
    done = [0]
    samples: list[Sample] = []
    errors: list[BaseException] = []

    def sampler() -> None:
        try:
            samples.extend(sample_until(lambda: done[0], n, [os.getpid()], SLOW))
        except BaseException as exc:
            errors.append(exc)

    gc.collect()
    with Worker(app=app, max_workers=4):
        noop.delay(-1).get(timeout=60)
        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        for start in range(0, n, chunk):
            jobs = noop.map(range(start, min(n, start + chunk)))
            for i, job in enumerate(jobs, start):
                if job.get(timeout=120) != i:
                    raise RuntimeError(f"memory: wrong result for job {i}")
            done[0] += len(jobs)
        thread.join()
        held = app.results.count()
    app.close()
    if errors:
        raise errors[0]
    return {**rss_figures(samples, n), "held": held}
