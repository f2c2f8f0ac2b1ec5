"""The metrics: per-job series fed by the worker's hooks, and worker gauges
read at scrape time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from nuvom.job import Job
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

__all__ = ["OTHER_TASK", "OUTCOMES", "QUEUE_STATES", "JobMetrics", "QueueCollector", "WorkerCollector"]

log = logging.getLogger("nuvom.prometheus")

#: The outcomes core reports through ``on_job_finished``.
OUTCOMES = ("success", "failure", "timeout", "retry")
#: The task label of tasks beyond ``NUVOM_PROMETHEUS_MAX_TASKS``.
OTHER_TASK = "_other"
#: The ``state`` label of ``nuvom_queue_jobs``: the keys of ``BaseJobQueue.queue_counts()``.
QUEUE_STATES = ("queued", "retrying", "running")


class JobMetrics:
    """Counters and histograms labelled by task (and outcome), with a bounded
    number of task labels. Safe to call from every worker thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_tasks: int = 500,
        duration_buckets: Sequence[float],
        queue_wait_buckets: Sequence[float],
    ) -> None:
        self.max_tasks = max_tasks
        self.finished = Counter(
            "nuvom_jobs_finished",
            "Job attempts finished, by task and outcome (success, failure, timeout, retry).",
            ["task", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "nuvom_job_duration_seconds",
            "Run time of job attempts, by task.",
            ["task"],
            buckets=duration_buckets,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "nuvom_job_queue_wait_seconds",
            "Time from when a job was due (enqueued, or its retry delay over) to when an attempt started, by task.",
            ["task"],
            buckets=queue_wait_buckets,
            registry=registry,
        )
        # Label children cached per task name: the per-job path is a dict lookup.
        self._children: dict[str, _TaskSeries] = {}
        self._labels = 0
        self._lock = threading.Lock()

    def _task(self, name: str) -> _TaskSeries:
        series = self._children.get(name)
        if series is not None:
            return series
        with self._lock:
            series = self._children.get(name)
            if series is not None:
                return series
            if self._labels < self.max_tasks or name == OTHER_TASK:
                label = name
                self._labels += name != OTHER_TASK
            else:
                label = OTHER_TASK
                series = self._children.get(OTHER_TASK)
                if series is None:
                    log.warning(
                        "more than %d task names seen; further tasks are counted as task=%r "
                        "(NUVOM_PROMETHEUS_MAX_TASKS)",
                        self.max_tasks,
                        OTHER_TASK,
                    )
            if series is None:
                series = _TaskSeries(self, label)
                self._children[label] = series
            self._children[name] = series
            return series

    def add_tasks(self, names: Iterable[str]) -> None:
        """Create the series of known tasks at zero, before their first job."""
        for name in names:
            if self._labels >= self.max_tasks:
                break
            self._task(name)

    def job_started(self, job: Job) -> None:
        started = job.started_at or time.time()
        due = job.not_before if job.not_before is not None else job.created_at
        self._task(job.func_name).queue_wait.observe(max(0.0, started - due))

    def job_finished(self, job: Job, outcome: str, duration: float) -> None:
        series = self._task(job.func_name)
        counter = series.finished.get(outcome)
        if counter is None:  # an outcome a newer core may add
            counter = self.finished.labels(series.label, outcome)
        counter.inc()
        series.duration.observe(max(0.0, duration))


class _TaskSeries:
    __slots__ = ("duration", "finished", "label", "queue_wait")

    def __init__(self, metrics: JobMetrics, label: str) -> None:
        self.label = label
        # Every outcome exists from the start, so rate() and increase() see the first event.
        self.finished = {outcome: metrics.finished.labels(label, outcome) for outcome in OUTCOMES}
        self.duration = metrics.duration.labels(label)
        self.queue_wait = metrics.queue_wait.labels(label)


class WorkerCollector:
    """Gauges read from the worker's ``metrics_provider`` at every scrape."""

    def __init__(self, provider: Callable[[], dict[str, Any]], *, version: str = "") -> None:
        self.provider = provider
        self.version = version

    def describe(self) -> list[Metric]:
        # Names only (no samples): lets the registry detect duplicates without
        # calling the provider at registration time.
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        try:
            figures = self.provider()
        except Exception:
            log.exception("reading the worker's figures failed; this scrape has no worker gauges")
            return
        yield from self._families(figures)

    def _families(self, figures: dict[str, Any] | None = None) -> Iterator[Metric]:
        f = figures or {}
        now = time.time()
        worker_count = GaugeMetricFamily("nuvom_worker_count", "Worker threads of this worker process.")
        inflight = GaugeMetricFamily("nuvom_inflight_jobs", "Jobs running now in this worker process.")
        queue_size = GaugeMetricFamily(
            "nuvom_queue_size",
            "Jobs waiting in the queue this worker reads (shared by every worker of that queue).",
        )
        start_time = GaugeMetricFamily(
            "nuvom_worker_start_time_seconds", "When this worker started, seconds since the Unix epoch."
        )
        uptime = GaugeMetricFamily("nuvom_worker_uptime_seconds", "Seconds since this worker started.")
        info = InfoMetricFamily("nuvom_worker", "This worker process: its id and nuvom version.")
        loop_blocked = CounterMetricFamily(
            "nuvom_event_loop_blocked",
            "Times an async job held this worker's event loop past NUVOM_ASYNC_BLOCKED_WARN_SECS (blocking code).",
        )
        if figures is not None:
            if f.get("worker_count") is not None:
                worker_count.add_metric([], float(f["worker_count"]))
            if f.get("inflight_jobs") is not None:
                inflight.add_metric([], float(f["inflight_jobs"]))
            # A negative size means the queue could not be read: no sample rather than a false one.
            if f.get("queue_size") is not None and f["queue_size"] >= 0:
                queue_size.add_metric([], float(f["queue_size"]))
            started = f.get("started_at")
            if started is not None:
                start_time.add_metric([], float(started))
                uptime.add_metric([], max(0.0, now - float(started)))
            info.add_metric([], {"worker_id": str(f.get("worker_id") or ""), "version": self.version})
            loop_blocked.add_metric([], float(f.get("loop_blocked_total") or 0))
        yield from (worker_count, inflight, queue_size, start_time, uptime, info, loop_blocked)


class QueueCollector:
    """``nuvom_queue_jobs{queue, state}``: the store's jobs by named queue and
    state, read from ``queue_counts()`` at every scrape (one store call). A state
    the store cannot tell has no sample; a store that cannot be read, none at all."""

    def __init__(self, read: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.read = read

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self.read()
        except Exception as exc:
            log.warning("reading the queues' counts failed; this scrape has no nuvom_queue_jobs: %s", exc)
            return
        family = self._family()
        for queue, by_state in sorted(counts.items()):
            for state in QUEUE_STATES:
                if by_state.get(state) is not None:
                    family.add_metric([queue, state], float(by_state[state]))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "nuvom_queue_jobs",
            "Jobs in the store by named queue and state: queued (waiting, due or not, and workflow jobs waiting "
            "for others), retrying (waiting after a failed attempt), running (claimed by a worker). Shared by "
            "every worker of the store.",
            labels=["queue", "state"],
        )
