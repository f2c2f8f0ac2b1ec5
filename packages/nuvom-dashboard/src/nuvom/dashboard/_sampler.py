"""What the overview, Workers and Queues pages show, sampled by the dashboard itself.

One thread per dashboard asks the store for its counts, its workers
(``list_workers``) and the next waiting job every few seconds and keeps the
answers in memory; every browser reads those samples. So the store sees a few
small queries every few seconds however many people watch, and the chart
needs no Prometheus. Per-task run times and the workers seen are computed from
the newest records, only when the number of finished jobs moved.

Rates are read over a trailing window of samples:

* throughput: jobs finished per second between two consecutive samples;
* failure rate: jobs failed / jobs finished over the last
  :data:`RATE_WINDOW_SECS`, stretched back (up to :data:`FAILURE_MAX_WINDOW_SECS`)
  until the window holds :data:`FAILURE_MIN_FINISHED` finished jobs; with fewer
  it has no value. One retried job that fails again is one failure in twenty
  or more, not 100 %;
* a queue's rate in and out: jobs queued and finished per second over the
  last :data:`RATE_WINDOW_SECS`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from nuvom import sdk
from nuvom.app import App, default_app
from nuvom.plugins.contracts import WorkerInfo

__all__ = ["QueueRow", "Sample", "Sampler", "TaskStats", "WorkerSeen"]

log = logging.getLogger("nuvom.dashboard")

#: Records read to compute run-time percentiles and recent workers.
RECENT_RECORDS = 500
#: A worker is "seen recently" when one of its jobs finished this long ago at most.
WORKER_WINDOW_SECS = 600.0
#: Stats are recomputed at least this often even when nothing finished.
STATS_MAX_AGE_SECS = 30.0
#: The trailing window of the failure rate and of the queues' rates.
RATE_WINDOW_SECS = 60.0
#: The failure rate needs this many finished jobs in its window...
FAILURE_MIN_FINISHED = 20
#: ...and stretches its window back this far at most to find them.
FAILURE_MAX_WINDOW_SECS = 600.0
#: Waiting jobs read per sample, on a store with named queues, to find each queue's oldest due job.
HEAD_PEEK = 100


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
    #: The store's workers (live first, then gone); ``None``: it keeps no presence.
    workers: list[WorkerInfo] | None = None
    #: When the next waiting job became due (``None``: none waiting, or none due yet).
    head_due: float | None = None
    #: Jobs by named queue and state (``nuvom.sdk.queue_counts``); ``None``: not read.
    queues: dict[str, dict[str, int]] | None = None
    #: Per queue, when its oldest due job among the next waiting ones became due.
    queue_heads: dict[str, float] | None = None

    @property
    def finished(self) -> int:
        return self.counts.get("SUCCESS", 0) + self.counts.get("FAILED", 0)

    @property
    def total(self) -> int:
        """Every job the store holds, waiting, running or finished: what grows when one is queued."""
        return sum(self.counts.get(k, 0) for k in ("queued", "retrying", "running")) + self.finished

    def live_workers(self) -> list[WorkerInfo]:
        return [w for w in self.workers or [] if w.is_live(self.at)]


@dataclass(frozen=True)
class QueueRow:
    """One named queue on the Queues page (``default`` alone on a store without named queues)."""

    name: str
    waiting: int
    retrying: int | None
    running: int | None
    #: How long its oldest due job has been due, seconds (``None``: nothing due,
    #: or not among the next :data:`HEAD_PEEK` waiting jobs of the store).
    latency: float | None
    #: Jobs queued / finished per second over the last window (``None``: too few samples yet).
    rate_in: float | None
    rate_out: float | None
    #: Live workers serving it (``None``: the store keeps no presence).
    workers: int | None = None


@dataclass
class Stats:
    tasks: list[TaskStats] = field(default_factory=list)
    workers: list[WorkerSeen] = field(default_factory=list)
    at: float = 0.0
    finished: int = -1
    #: Of the records read, how many finished in the last RATE_WINDOW_SECS, by queue.
    recent_by_queue: dict[str, int] = field(default_factory=dict)


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
        self._side_error: str | None = None

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
            workers, head_due, queues, heads = self._side_reads() if error is None else (None, None, None, None)
            now = time.time()
            took = (time.perf_counter() - started) * 1000
            sample = Sample(now, counts, took, error, workers, head_due, queues, heads)
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

    def _side_reads(
        self,
    ) -> tuple[list[WorkerInfo] | None, float | None, dict[str, dict[str, int]] | None, dict[str, float] | None]:
        """The store's workers, when its next waiting job became due, its named
        queues' counts and each queue's oldest due job; a failure leaves them out
        of the sample (logged once per change)."""
        try:
            workers = sdk.list_workers(app=self.app)
            queues = sdk.queue_counts(app=self.app)
            # Without named queues (and so priorities) the next job is the oldest due (FIFO);
            # with them, read further to find each queue's oldest.
            named = (self.app or default_app()).queue.supports_queues
            head = sdk.queued_jobs(limit=HEAD_PEEK if named else 1, app=self.app)
        except Exception as exc:
            if str(exc) != self._side_error:
                self._side_error = str(exc)
                log.warning("reading the workers, the queues or the next queued jobs failed: %s", exc)
            return None, None, None, None
        self._side_error = None
        now = time.time()
        heads: dict[str, float] = {}
        for job in head:
            if job.due_at <= now and job.due_at < heads.get(job.queue, now + 1):
                heads[job.queue] = job.due_at
        next_due = head[0].due_at if head else None
        return workers, next_due if next_due is not None and next_due <= now else None, queues, heads

    def latest(self, max_age: float | None = None) -> Sample:
        """The newest sample, taken now when there is none younger than ``max_age``
        (default: two sampling periods)."""
        limit = 2 * self.every if max_age is None else max_age
        if self.samples:
            newest = self.samples[-1]
            if time.time() - newest.at <= limit:
                return newest
        return self.take()

    # -- rates ---------------------------------------------------------------
    def series(self, after: float = 0.0) -> list[dict[str, float | None]]:
        """Throughput (finished jobs per second) between consecutive samples and
        the failure rate over its window (see the module's docstring), for
        samples taken after ``after``. ``failure_rate`` is ``None`` where its
        window holds too few finished jobs."""
        samples = list(self.samples)
        times = [s.at for s in samples]
        finished, failed = _cumulative(samples)
        out: list[dict[str, float | None]] = []
        for i, (prev, cur) in enumerate(itertools.pairwise(samples), start=1):
            if cur.at <= after or cur.error is not None or prev.error is not None:
                continue
            dt = cur.at - prev.at
            done = finished[i] - finished[i - 1]
            out.append(
                {
                    "t": cur.at,
                    "throughput": done / dt if dt > 0 else 0.0,
                    "failure_rate": _failure_rate(times, finished, failed, i),
                }
            )
        return out

    def queue_rows(self) -> list[QueueRow]:
        """The Queues page's rows: one per named queue holding jobs or served by
        a live worker. With one queue its rates are the store's totals; with
        several, a queue's rate out is the total split by the queues of the
        newest records finished in the window, and its rate in that rate plus
        the change of its depth over the window."""
        samples = list(self.samples)
        if not samples:
            samples = [self.take()]
        cur = samples[-1]
        start = bisect.bisect_left([s.at for s in samples], cur.at - RATE_WINDOW_SECS)
        first = samples[min(start, len(samples) - 1)]
        span = cur.at - first.at
        serving: dict[str, int] = {}
        for info in cur.live_workers():
            for name in info.queues:
                serving[name] = serving.get(name, 0) + 1
        queues = cur.queues or {}
        names = sorted(set(queues) | set(serving))
        if len(names) <= 1:
            return [self._single_row(names[0] if names else "default", cur, first, span, serving)]
        total_out = max(0, cur.finished - first.finished) / span if span > 0 else None
        recent = self.stats.recent_by_queue
        recent_total = sum(recent.values())
        rows = []
        for name in names:
            counts = queues.get(name, {})
            rate_out = rate_in = None
            if total_out is not None and (recent_total or not total_out):
                rate_out = total_out * recent.get(name, 0) / recent_total if recent_total else 0.0
                if first.queues is not None:
                    rate_in = max(0.0, rate_out + (_depth(counts) - _depth(first.queues.get(name, {}))) / span)
            head = (cur.queue_heads or {}).get(name)
            rows.append(
                QueueRow(
                    name=name,
                    waiting=counts.get("queued", 0) + counts.get("retrying", 0),
                    retrying=counts.get("retrying", 0 if name not in queues else None),
                    running=counts.get("running", 0 if name not in queues else None),
                    latency=None if head is None else max(0.0, cur.at - head),
                    rate_in=rate_in,
                    rate_out=rate_out,
                    workers=None if cur.workers is None else serving.get(name, 0),
                )
            )
        return rows

    @staticmethod
    def _single_row(name: str, cur: Sample, first: Sample, span: float, serving: dict[str, int]) -> QueueRow:
        """The one queue in use (every job of a store without named queues): the store's totals."""
        c = cur.counts
        due = cur.head_due if cur.queue_heads is None else cur.queue_heads.get(name)
        rate_in = rate_out = None
        if span > 0:
            # Pruned results or a cleared queue lower the totals: no negative rates.
            rate_in = max(0, cur.total - first.total) / span
            rate_out = max(0, cur.finished - first.finished) / span
        return QueueRow(
            name=name,
            waiting=c.get("queued", 0) + c.get("retrying", 0),
            retrying=c.get("retrying"),
            running=c.get("running"),
            latency=None if due is None else max(0.0, cur.at - due),
            rate_in=rate_in,
            rate_out=rate_out,
            workers=None if cur.workers is None else serving.get(name, 0),
        )


def _depth(counts: dict[str, int]) -> int:
    return sum(counts.get(k, 0) for k in ("queued", "retrying", "running"))


def _cumulative(samples: list[Sample]) -> tuple[list[int], list[int]]:
    """Jobs finished and failed since the first sample, summing only increases
    (pruning or a result stored again can lower a count)."""
    finished, failed = [0], [0]
    for prev, cur in itertools.pairwise(samples):
        finished.append(finished[-1] + max(0, cur.finished - prev.finished))
        failed.append(failed[-1] + max(0, cur.counts.get("FAILED", 0) - prev.counts.get("FAILED", 0)))
    return finished, failed


def _failure_rate(times: list[float], finished: list[int], failed: list[int], i: int) -> float | None:
    """Failed / finished over the window ending at sample ``i``: the last
    RATE_WINDOW_SECS, or as much further back (up to FAILURE_MAX_WINDOW_SECS)
    as it takes to hold FAILURE_MIN_FINISHED finished jobs."""
    now = times[i]
    # The window starts at the newest sample at least RATE_WINDOW_SECS old (or the first).
    j = max(0, bisect.bisect_right(times, now - RATE_WINDOW_SECS, 0, i) - 1)
    if finished[i] - finished[j] < FAILURE_MIN_FINISHED:
        oldest = bisect.bisect_left(times, now - FAILURE_MAX_WINDOW_SECS, 0, i)
        # The newest start that still holds enough: finished[] never decreases.
        j = bisect.bisect_right(finished, finished[i] - FAILURE_MIN_FINISHED, oldest, j + 1) - 1
        if j < oldest or finished[i] - finished[j] < FAILURE_MIN_FINISHED:
            return None
    done = finished[i] - finished[j]
    return min(1.0, (failed[i] - failed[j]) / done)


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
    recent: dict[str, int] = {}
    for job in jobs:
        if job.finished_at is not None and now - job.finished_at <= RATE_WINDOW_SECS:
            recent[job.queue] = recent.get(job.queue, 0) + 1
    return Stats(tasks, seen_list, now, finished, recent)
