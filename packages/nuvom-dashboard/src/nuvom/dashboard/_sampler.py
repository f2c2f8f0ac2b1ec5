"""What the overview shows, sampled by the dashboard itself.

One thread per dashboard asks the store for its counts every few seconds and
keeps the answers in memory; every browser reads those samples. So the store
sees one small query every few seconds however many people watch, and the
chart needs no Prometheus. Per-task run times and the workers seen are
computed from the newest records, only when the number of finished jobs moved.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from nuvom import sdk
from nuvom.app import App

__all__ = ["Sample", "Sampler", "TaskStats", "WorkerSeen"]

log = logging.getLogger("nuvom.dashboard")

#: Records read to compute run-time percentiles and recent workers.
RECENT_RECORDS = 500
#: A worker is "seen recently" when one of its jobs finished this long ago at most.
WORKER_WINDOW_SECS = 600.0
#: Stats are recomputed at least this often even when nothing finished.
STATS_MAX_AGE_SECS = 30.0


@dataclass(frozen=True)
class TaskStats:
    task: str
    jobs: int
    failed: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class WorkerSeen:
    worker_id: str
    last_seen: float
    jobs: int


@dataclass(frozen=True)
class Sample:
    at: float
    counts: dict[str, int]
    took_ms: float
    error: str | None = None

    @property
    def finished(self) -> int:
        return self.counts.get("SUCCESS", 0) + self.counts.get("FAILED", 0)


@dataclass
class Stats:
    tasks: list[TaskStats] = field(default_factory=list)
    workers: list[WorkerSeen] = field(default_factory=list)
    at: float = 0.0
    finished: int = -1


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil
    return sorted_values[int(rank) - 1]


class Sampler:
    """Takes a sample every ``every`` seconds while started; keeps ``keep`` of them."""

    def __init__(self, every: float = 2.0, keep: int = 1800, *, app: App | None = None) -> None:
        self.app = app
        self.every = every
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._take_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running -------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the sampling thread once (on first use: a mounted Starlette app
        gets no lifespan events of its own)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="nuvom-dashboard-sampler", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.take()
            self._stop.wait(self.every)

    # -- sampling ------------------------------------------------------------
    def take(self) -> Sample:
        """Ask the store now; a failure is kept as a sample with its message."""
        with self._take_lock:
            started = time.perf_counter()
            try:
                counts = sdk.job_counts(app=self.app)
                error = None
            except Exception as exc:  # shown on the page; the dashboard keeps running
                log.warning("sampling the job counts failed: %s", exc)
                counts, error = (dict(self.samples[-1].counts) if self.samples else {}), f"{type(exc).__name__}: {exc}"
            sample = Sample(time.time(), counts, (time.perf_counter() - started) * 1000, error)
            stats = self.stats
            if error is None and (sample.finished != stats.finished or sample.at - stats.at > STATS_MAX_AGE_SECS):
                try:
                    self.stats = compute_stats(sample.finished, self.app)
                except Exception as exc:
                    log.warning("reading recent jobs failed: %s", exc)
            # Published after its stats: latest() reads samples without the lock, and a
            # page showing this sample's counts must not show the stats of an older one.
            self.samples.append(sample)
            return sample

    def latest(self, max_age: float | None = None) -> Sample:
        """The newest sample, taken now when there is none younger than ``max_age``
        (default: two sampling periods)."""
        limit = 2 * self.every if max_age is None else max_age
        if self.samples:
            newest = self.samples[-1]
            if time.time() - newest.at <= limit:
                return newest
        return self.take()

    def series(self, after: float = 0.0) -> list[dict[str, float]]:
        """Throughput (finished jobs per second) and failure rate between
        consecutive samples taken after ``after``."""
        samples = list(self.samples)
        out: list[dict[str, float]] = []
        for prev, cur in itertools.pairwise(samples):
            if cur.at <= after or cur.error is not None or prev.error is not None:
                continue
            dt = cur.at - prev.at
            # Pruning or a result stored again can lower a count: no negative rates.
            done = max(0, cur.finished - prev.finished)
            failed = max(0, cur.counts.get("FAILED", 0) - prev.counts.get("FAILED", 0))
            out.append(
                {
                    "t": cur.at,
                    "throughput": done / dt if dt > 0 else 0.0,
                    "failure_rate": min(1.0, failed / done) if done else 0.0,
                }
            )
        return out


def compute_stats(finished: int, app: App | None = None) -> Stats:
    now = time.time()
    jobs = sdk.query_jobs(limit=RECENT_RECORDS, app=app)
    durations: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    workers: dict[str, list[float]] = {}
    for job in jobs:
        durations.setdefault(job.func_name, [])
        if job.status.value == "FAILED":
            failures[job.func_name] = failures.get(job.func_name, 0) + 1
        if job.started_at is not None and job.finished_at is not None:
            durations[job.func_name].append(max(0.0, job.finished_at - job.started_at))
        if job.worker_id and job.finished_at is not None and now - job.finished_at <= WORKER_WINDOW_SECS:
            seen = workers.setdefault(job.worker_id, [0.0, 0])
            seen[0] = max(seen[0], job.finished_at)
            seen[1] += 1
    tasks = []
    for name, values in sorted(durations.items()):
        values.sort()
        count = sum(1 for job in jobs if job.func_name == name)
        tasks.append(TaskStats(name, count, failures.get(name, 0), percentile(values, 50), percentile(values, 95)))
    seen_list = [WorkerSeen(wid, last, int(n)) for wid, (last, n) in workers.items()]
    seen_list.sort(key=lambda w: w.last_seen, reverse=True)
    return Stats(tasks, seen_list, now, finished)
