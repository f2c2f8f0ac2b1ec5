"""The contracts between nuvom-core and every plugin: the one page a plugin author reads.

Three kinds of objects cross the boundary:

* :class:`BaseJobQueue`: where jobs wait, and how workers claim them.
* :class:`BaseResultBackend`: where finished jobs are recorded and read back.
* :class:`BaseScheduleStore`: optional, a queue that also keeps schedules
  and claims their ticks (``task.schedule(...)``).
* :class:`Plugin`: something with a lifecycle (an exporter, hooks, a task
  source), named by an entry point in the ``nuvom`` group or a
  ``module:Class`` line in ``.nuvom_plugins.toml``. Core instantiates it with
  no arguments, calls :meth:`Plugin.start` once and :meth:`Plugin.stop` at
  shutdown.

Backends are found by role: an entry point in the group
``nuvom.queue_backends`` or ``nuvom.result_backends`` whose name is the value
of ``NUVOM_QUEUE_BACKEND`` / ``NUVOM_RESULT_BACKEND`` and whose value is the
class (``sqlite = "nuvom.sqlite:SQLiteJobQueue"``). Choosing a backend loads
that one class and starts no plugin; core's own ``memory`` and ``file``
backends are found exactly that way. A plugin may still register backends
from ``start()`` with :func:`nuvom.backends.register_queue_backend` /
:func:`~nuvom.backends.register_result_backend`, as the earlier nuvom's did.
Backends are constructed as ``cls(settings)`` where ``settings`` is
:class:`nuvom.config.Settings`; a class may name its own settings class as
``settings_class`` (``nuvom config`` lists its variables).

A job's state changes only through :class:`~nuvom.job.Job`'s ``mark_*``
methods (``mark_claimed`` when a backend hands it to a worker), and a lease
is always :func:`nuvom.job.lease_secs_for` of the job's timeout.

Jobs travel as :class:`nuvom.job.Job`; a backend that persists them should use
``job.to_bytes()`` / ``Job.from_bytes()`` (msgpack) unless it stores columns.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from nuvom._legacy_results import MISSING, legacy_record
from nuvom._polling import Poller
from nuvom.errors import BackendError
from nuvom.job import TERMINAL_STATUSES, Job, JobError, JobStatus
from nuvom.plugins._presence import GONE_KEEP_SECS, WorkerInfo

if TYPE_CHECKING:
    from nuvom.config import Settings
    from nuvom.schedule import Schedule

__all__ = [
    "API_VERSION",
    "GONE_KEEP_SECS",
    "BaseJobQueue",
    "BaseResultBackend",
    "BaseScheduleStore",
    "Cursor",
    "JobHooks",
    "Plugin",
    "WorkerInfo",
]

#: The contract version this core implements. A plugin whose ``api_version``
#: has a different major number is refused with a clear message.
API_VERSION = "1.0"


class Plugin:
    """Base class (and protocol) of every plugin.

    Class attributes:

    ``api_version``
        The contract version the plugin was written for, e.g. ``"1.0"``.
    ``name``
        A short unique name; a plugin found twice (entry point and
        ``.nuvom_plugins.toml``) is loaded once.
    ``provides``
        What it contributes. Known roles: ``"queue_backend"``,
        ``"result_backend"`` (started in every process that uses backends,
        producers included), and ``"tasks"``, ``"hooks"``, ``"metrics"``,
        ``"exporter"`` (started only by a worker). A plugin that provides
        only worker roles never runs in a producer process.
    ``requires``
        Names of plugins that must be started first.

    ``start(settings, extras)`` is called once. Backend plugins register their
    classes there. Worker plugins receive ``extras``:

    ``extras["worker"]``: the running :class:`nuvom.worker.Worker`;
    ``extras["app"]``: the :class:`nuvom.app.App` the worker belongs to;
    ``extras["registry"]``: its task registry (:class:`nuvom.registry.TaskRegistry`);
    ``extras["metrics_provider"]``: a callable returning a dict with
    ``worker_count``, ``inflight_jobs``, ``queue_size``, ``started_at``;
    ``extras["dev"]``: ``True`` when the worker runs with ``--dev``;
    ``extras["enabled_in_file"]`` (every plugin): ``True`` when the plugin is
    listed in ``.nuvom_plugins.toml``, i.e. explicitly enabled by the user.

    A plugin may also define any of the :class:`JobHooks` methods; a worker
    calls them for every job. A plugin that sets ``hooks_enabled = False`` by
    the end of ``start()`` (e.g. an exporter that is installed but not enabled)
    has none of its hooks called, so it costs nothing per job. Installing a
    plugin must never open a port or start a thread by itself: do that in
    ``start()`` and only when enabled by configuration.
    """

    api_version: ClassVar[str] = API_VERSION
    name: ClassVar[str] = ""
    provides: ClassVar[list[str]] = []
    requires: ClassVar[list[str]] = []

    def start(self, settings: Settings, extras: dict[str, Any] | None = None) -> None:
        """Begin work: register backends, open servers, start threads."""

    def stop(self) -> None:
        """Release everything ``start`` acquired. Called once, at shutdown."""


@runtime_checkable
class JobHooks(Protocol):
    """Lifecycle hooks. Each is optional, on a plugin, on a task or global.

    Hooks run in the worker thread that runs the job; a hook that raises is
    logged and ignored, it never fails the job.
    """

    def before_job(self, job: Job) -> None:
        """Called right before an attempt starts."""

    def after_job(self, job: Job, result: Any) -> None:
        """Called after an attempt returned ``result``."""

    def on_error(self, job: Job, error: BaseException) -> None:
        """Called after an attempt raised (or timed out: ``TimeoutError``)."""

    def on_job_finished(self, job: Job, outcome: str, duration: float) -> None:
        """Called once per attempt when its fate is decided.

        ``outcome`` is one of ``"success"``, ``"failure"``, ``"timeout"`` or
        ``"retry"``; ``duration`` is the attempt's run time in seconds.
        Metrics exporters use this one.
        """


class BaseJobQueue(abc.ABC):
    """Where jobs wait until a worker claims them.

    Delivery contract (at-least-once):

    * :meth:`pop_batch` *claims* jobs: each returned job is marked
      ``RUNNING`` with its ``attempts`` incremented (``Job.mark_claimed``),
      and it is invisible to other claimers until it is acknowledged, handed
      back, or its lease runs out.
    * Each claimed job gets a *start mark* (:meth:`mark_started`) before its
      code runs: with its claim, for jobs claimed for slots already idle
      (:meth:`pop_batch_starting`); otherwise in the worker's next group write
      (:meth:`settle`), together with the outcomes of the jobs that ran before
      it, and the job waits for that write. Only a claim that started counts
      as an attempt in storage: when an expired claim is recovered, a run is
      recorded as lost only if that claim had started; a claim that never
      started (its worker died with the job still waiting in its buffer) is
      handed back as if never made. A backend without a start mark counts
      every claim instead.
    * A claimed job leaves the queue only through :meth:`ack` (its outcome is
      stored) or :meth:`requeue` (it goes back, possibly with a not-before
      time). Nothing is ever deleted on claim.
    * Durable backends give claims a lease of
      :func:`nuvom.job.lease_secs_for` (``max(NUVOM_LEASE_SECS, timeout *$
      1.1 + 2 s)``) and make a job whose lease expired claimable again. :meth:`extend_leases` is called
      periodically by a live worker for the jobs it still holds.
    * Only *due* jobs are claimed (``job.not_before`` is ``None`` or in the
      past), oldest due first.

    All methods must be safe to call from several threads; durable backends
    must also be safe across processes sharing the same store.
    """

    #: True when producers and workers in *different processes* see the same
    #: jobs. The memory backend is not shared; the worker warns about it.
    shared_between_processes: ClassVar[bool] = True

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    # -- producing ----------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, job: Job) -> None:
        """Store ``job`` as ``PENDING``; it is due at ``job.not_before`` if set."""

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        """Store several jobs, in one round trip where the store allows it."""
        for job in jobs:
            self.enqueue(job)

    def enqueue_in(self, connection: Any, jobs: Sequence[Job]) -> None:
        """Store jobs through the caller's own open database ``connection``, in
        its current transaction (:meth:`nuvom.task.Task.delay_in`): they exist
        if and only if that transaction commits. Which connections a backend
        accepts is its own (a queue in that same database). The default has
        no such store and says so."""
        raise BackendError(
            f"the {type(self).__name__} queue cannot queue jobs in your database transaction; "
            "task.delay_in() needs a queue in that database (NUVOM_QUEUE_BACKEND=postgres), "
            "or call task.delay() once the transaction has committed"
        )

    # -- claiming -----------------------------------------------------------
    @abc.abstractmethod
    def claim(self, batch_size: int) -> list[Job]:
        """Claim up to ``batch_size`` due jobs now, without waiting."""

    def pop_batch(self, batch_size: int, timeout: float | None = 0.0) -> list[Job]:
        """Claim up to ``batch_size`` due jobs, waiting up to ``timeout`` seconds
        (``None``: forever) for at least one. Returns ``[]`` on timeout.

        The default polls :meth:`claim` with a :class:`Poller`; backends that
        can be woken (in-process queues) override it to block instead.
        """
        return self._poller().until(lambda: self.claim(batch_size) or None, timeout) or []

    def pop_batch_starting(self, batch_size: int, timeout: float | None = 0.0, *, start: int = 0) -> list[Job]:
        """:meth:`pop_batch`, with the first ``start`` jobs also start-marked.

        The worker calls it with ``start`` = how many of its threads wait with
        nothing queued: the jobs those threads get start as soon as they arrive,
        so their start marks go with the claim instead of one write each later.
        Of the jobs returned, the first ``min(start, len(jobs))`` are marked as
        by :meth:`mark_started` (fenced by the claim, lease renewed to
        :func:`nuvom.job.lease_secs_for` of each job's timeout from now); the
        worker does not mark them again. A worker that dies between this claim
        and the jobs' first instruction (microseconds, on an idle thread) counts
        one lost run for each, as it would just after :meth:`mark_started`.

        The default claims with :meth:`pop_batch`, then calls :meth:`mark_started`
        in order, dropping a job whose mark returns ``False`` (taken over) until
        ``start`` are marked. A backend that can mark in the claim's own atomic
        step overrides it (a separate method, not an argument of :meth:`pop_batch`,
        so that backends overriding :meth:`pop_batch` keep working unchanged).
        """
        jobs = self.pop_batch(batch_size, timeout)
        if start <= 0 or not jobs:
            return jobs
        return self._started_first([], jobs, start)

    def claim_batch(self, limit: int, timeout: float | None, idle: Callable[[], int]) -> list[Job]:
        """The worker's claim step: up to ``limit`` due jobs, waiting up to
        ``timeout`` seconds for at least one, the first of them start-marked
        for the worker's idle slots, as :meth:`pop_batch_starting` does.

        ``idle()`` says how many slots would start a job the moment it
        arrived. A backend asks it when its claim takes the jobs, not when the
        call begins: a wait in the queue may last while slots become idle.

        The default claims with :meth:`pop_batch`, asks ``idle()`` and marks
        those jobs with :meth:`mark_started`; a backend that overrides
        :meth:`pop_batch_starting` (marks in its claim's atomic step) is asked
        ``idle()`` first and called with it. A backend that claims in steps of
        its own overrides this method.
        """
        if type(self).pop_batch_starting is not BaseJobQueue.pop_batch_starting:
            return self.pop_batch_starting(limit, timeout, start=idle())
        jobs = self.pop_batch(limit, timeout)
        start = idle() if jobs else 0
        return self._started_first([], jobs, start) if start > 0 else jobs

    def _started_first(self, marked: list[Job], rest: list[Job], start: int) -> list[Job]:
        """The jobs of a claim for :meth:`pop_batch_starting`: ``marked`` (start-marked
        already), then ``rest``, of which jobs are marked in order with
        :meth:`mark_started` (one whose mark returns ``False``, taken over, is
        dropped) until the first ``start`` returned are marked, or none is left.
        A backend that marks in its claim calls it for what its claim could not
        mark (a payload that could not be decoded among the marked ones)."""
        marked = list(marked)
        for k, job in enumerate(rest):
            if len(marked) >= start:
                return marked + rest[k:]
            if self.mark_started(job):
                marked.append(job)
        return marked

    def _poller(self) -> Poller:
        return Poller()

    def dequeue(self, timeout: float | None = 1.0) -> Job | None:
        """Claim a single job (the seeds' name), waiting up to ``timeout`` seconds
        (1 s by default, as in the earlier nuvom; ``None``: forever); ``None`` on timeout."""
        jobs = self.pop_batch(1, timeout)
        return jobs[0] if jobs else None

    # -- settling claims ----------------------------------------------------
    @abc.abstractmethod
    def ack(self, job_ids: Sequence[str]) -> None:
        """Remove claimed jobs whose outcome has been stored. Unknown ids are ignored."""

    @abc.abstractmethod
    def requeue(self, jobs: Sequence[Job]) -> None:
        """Put claimed jobs back exactly as given (status, attempts, history,
        ``not_before``) and release their claim. Used for retries (with a
        not-before time) and for handing back jobs at shutdown (the worker
        undoes the claim's attempt first for jobs that never started)."""

    def complete(self, jobs: Sequence[Job], results: BaseResultBackend) -> None:
        """Record finished jobs and remove them from the queue.

        The default stores outcomes first and acknowledges second, so a crash
        in between re-runs a job rather than losing it. A backend whose queue
        and results share a store overrides this to do both atomically and
        to ignore a completion whose claim has since been taken over.
        """
        results.store(jobs)
        self.ack([job.id for job in jobs])

    def extend_leases(self, job_ids: Sequence[str]) -> None:
        """Renew the leases of claimed jobs still being run (no-op without leases)."""

    def mark_started(self, job: Job) -> bool:
        """Record, before its code runs, that this worker starts the claimed ``job``.

        Called by the worker in the thread (or event loop, or feeder of a child
        process) about to run the job, after :meth:`pop_batch` returned it and
        before any hook or user code. A backend that implements it must:

        * write a *started* mark on the claim, fenced by the claim (nothing is
          written if the claim is no longer this worker's), durable against a
          crash of this process (an OS crash may lose it) before returning;
        * renew the claim's lease to :func:`nuvom.job.lease_secs_for` of the
          job's timeout from now, so the lease of a running job follows its
          timeout however long the job waited in the worker's buffer;
        * count the claim as an attempt in storage only from here on: when an
          expired claim is claimed again, a claim with the mark counts as a run
          lost with its worker (``Job.mark_lost_runs`` records it as a ``lost``
          attempt); one without is handed back with its attempt undone;
        * return ``False`` when the claim was lost (its lease ran out and
          another worker claimed the job): the worker then does not run it.

        It is on every job's path: keep it to one cheap write. The default
        writes nothing and returns ``True``: every claim then counts as an
        attempt, as before this method existed, and a claim that expired in a
        worker's buffer may still run there as well as in its new holder.
        """
        return True

    def settle(
        self,
        finished: Sequence[Job],
        requeued: Sequence[Job],
        starting: Sequence[Job],
        results: BaseResultBackend,
    ) -> list[bool]:
        """Write one group of a worker's changes in one step, and return for each
        job of ``starting`` what its start mark returned.

        The worker's outcome writer calls it with everything its executors
        produced since the last call: ``finished`` jobs (terminal: as
        :meth:`complete`), ``requeued`` jobs (retries with a not-before time and
        hand-backs: as :meth:`requeue`) and the start marks of claimed jobs in
        ``starting`` (as :meth:`mark_started`). A job appears in at most one of
        the three. A backend whose writes are transactions or pipelines
        overrides it to write the whole group in one (one commit, one round
        trip), which is what lets a worker settle many jobs a second; each part
        keeps its own method's promises (fencing by the claim, outcomes stored
        before the claim is released). If it raises, the worker writes the
        whole group again later: every part must be safe to write twice.

        The default makes the calls one after another: :meth:`complete`, then
        :meth:`requeue`, then :meth:`mark_started` for each starting job.
        """
        if finished:
            self.complete(finished, results)
        if requeued:
            self.requeue(requeued)
        return [self.mark_started(job) for job in starting]

    # -- reading ------------------------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None:
        """Return the queued or claimed job with this id, or ``None``."""

    @abc.abstractmethod
    def qsize(self) -> int:
        """Number of jobs waiting to be claimed (due or not)."""

    @abc.abstractmethod
    def clear(self) -> int:
        """Drop every waiting job; returns how many. Claimed jobs are kept."""

    # -- looking and steering (dashboards, the CLI) -------------------------
    # Optional: each has a default built on the methods above; backends
    # override them where their store answers faster.
    def counts(self) -> dict[str, int]:
        """How many jobs the queue holds, by state: ``"queued"`` (waiting, never
        run), ``"retrying"`` (waiting after a failed attempt) and ``"running"``
        (claimed). A key the backend cannot tell cheaply is left out; the
        default knows only the waiting total, reported as ``"queued"``."""
        return {"queued": self.qsize()}

    def peek(self, limit: int = 50) -> list[Job]:
        """Up to ``limit`` waiting (unclaimed) jobs, next due first, without
        claiming them. The default sees none."""
        return []

    def cancel(self, job_id: str) -> Job | None:
        """Remove a waiting, unclaimed job so that no worker runs it, and return
        it; ``None`` if it is not waiting (unknown, claimed or finished).
        :func:`nuvom.sdk.cancel_job` then records it as failed ("Cancelled").
        The default cannot remove one job and says so."""
        raise BackendError(
            f"the {type(self).__name__} queue cannot cancel a single job; use a backend that can "
            "(sqlite, file, memory) or let the job run"
        )

    # -- worker presence (dashboards, nuvom.sdk.list_workers) -------------------
    # Optional: the defaults keep nothing, and list_workers() says so with None.
    def publish_worker(self, info: WorkerInfo) -> None:
        """Record ``info`` as this worker's presence, replacing its earlier record
        (same ``worker_id``). A worker calls it at start and every
        ``NUVOM_HEARTBEAT_SECS``; shared stores make it visible to every process.
        Keep it to one small write. Default: nothing is kept."""

    def remove_worker(self, worker_id: str) -> None:
        """Forget the worker's record at once: it stopped cleanly. Unknown ids
        are ignored. Default: nothing."""

    def list_workers(self) -> list[WorkerInfo] | None:
        """Every worker record not older than its own ``ttl_secs`` plus
        :data:`GONE_KEEP_SECS`: live ones (``info.is_live()``) and gone ones, kept
        that long so that they can be shown greyed; older records are never
        returned (a store may delete them here or when publishing). Live ones
        first (:func:`nuvom.plugins._presence.live_and_gone` sorts and filters).
        ``None`` (the default): this store keeps no presence."""
        return None

    def describe(self) -> str:
        """Where this queue keeps its jobs, for people: ``"sqlite /srv/app/nuvom.db"``,
        ``"redis redis://host:6379/0"``; never a password. Default: the class name."""
        return type(self).__name__

    def close(self) -> None:
        """Release connections and files."""


#: ``(finished_at, job id)`` of the last job of a page: where the next page starts.
Cursor = tuple[float, str]


class BaseResultBackend(abc.ABC):
    """Where finished jobs are recorded: status, result, error, attempts, timings.

    Records are :class:`~nuvom.job.Job` objects in a terminal status
    (``SUCCESS`` or ``FAILED``). :meth:`store` is the only write; the seeds'
    ``set_result`` / ``set_error`` are thin helpers over it.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    @abc.abstractmethod
    def store(self, jobs: Sequence[Job]) -> None:
        """Persist finished jobs, replacing any earlier record with the same id."""

    @abc.abstractmethod
    def get_full(self, job_id: str) -> Job | None:
        """Return the stored record of a finished job, or ``None``."""

    @abc.abstractmethod
    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        """Finished jobs, newest (``finished_at``) first, optionally filtered."""

    # -- conveniences over the three methods above ----------------------------
    def set_result(
        self,
        job: Job | str | None = None,
        *positional: Any,
        result: Any = MISSING,
        job_id: str | None = None,
        func_name: str | None = None,
        **meta: Any,
    ) -> None:
        """Record ``job`` as succeeded with ``result``: ``set_result(job, result)``.

        The earlier nuvom's call is accepted too: ``set_result(job_id,
        func_name, result, *, args=None, kwargs=None, retries_left=None,
        attempts=None, created_at=None, completed_at=None)`` records a job of
        that id with those fields."""
        record, value = legacy_record("set_result", "result", job, positional, result, job_id, func_name, meta)
        record.status, record.result, record.error = JobStatus.SUCCESS, value, None
        self.store([record])

    def set_error(
        self,
        job: Job | str | None = None,
        *positional: Any,
        error: Any = MISSING,
        job_id: str | None = None,
        func_name: str | None = None,
        **meta: Any,
    ) -> None:
        """Record ``job`` as failed with ``error`` (an exception or a
        :class:`~nuvom.job.JobError`): ``set_error(job, error)``; or, as the
        earlier nuvom, ``set_error(job_id, func_name, error, *, args=...,
        kwargs=..., retries_left=..., attempts=..., created_at=...,
        completed_at=...)``."""
        record, value = legacy_record("set_error", "error", job, positional, error, job_id, func_name, meta)
        if isinstance(value, BaseException):
            value = JobError.from_exception(value)
        elif not isinstance(value, JobError):
            value = JobError(type="Error", message=str(value))
        record.status, record.error = JobStatus.FAILED, value
        self.store([record])

    def get_result(self, job_id: str) -> Any:
        record = self.get_full(job_id)
        return None if record is None else record.result

    def get_error(self, job_id: str) -> JobError | None:
        record = self.get_full(job_id)
        return None if record is None else record.error

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has a record or ``timeout`` passes (``None``: forever)."""
        return Poller(0.002, 0.1).until(lambda: self.get_full(job_id), timeout)

    async def wait_async(self, job_id: str, timeout: float | None = None) -> Job | None:
        """:meth:`wait` for ``async`` callers (``await job.aget()``): must not block
        the event loop. The default looks with :meth:`get_full` in a thread,
        backing off from 2 ms to 100 ms, so a waiting job holds no thread
        between looks; a backend that can be told when a job is stored
        should override it."""
        import asyncio

        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.002
        while True:
            record = await asyncio.to_thread(self.get_full, job_id)
            if record is not None:
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            await asyncio.sleep(interval if left is None else min(interval, left))
            interval = min(interval * 2, 0.1)

    def count(self) -> int:
        """Number of stored records (backends should override with a cheap count)."""
        return len(self.list_jobs(limit=2**62))

    # -- looking (dashboards, the CLI) ----------------------------------------
    # Optional: the defaults read through list_jobs(); backends override them
    # where their store answers faster.
    def counts(self) -> dict[str, int]:
        """Number of stored records by status: ``{"SUCCESS": n, "FAILED": m}``."""
        return {status.value: len(self.list_jobs(status=status, limit=2**62)) for status in TERMINAL_STATUSES}

    def query(
        self,
        status: JobStatus | str | None = None,
        task: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: Cursor | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Finished jobs, newest first (by ``finished_at``, then id), filtered by
        status, task name, tag and finish time (``since <= finished_at < until``).

        Pages are keyset-paginated: pass the ``(finished_at, id)`` of the last
        job of a page as ``before`` to get the next page, so reading page 1000
        costs what page 1 does on a backend with an index on ``finished_at``.
        """
        wanted = None if status is None else JobStatus(str(getattr(status, "value", status)).upper())
        window = max(limit * 4, 100)
        while True:
            records = self.list_jobs(status=wanted, limit=window, task=task)
            out = [job for job in records if _matches(job, tag, since, until, before)]
            out.sort(key=_cursor_of, reverse=True)
            if len(out) >= limit or len(records) < window:
                return out[:limit]
            window *= 4

    def close(self) -> None:
        """Release connections and files."""


def _cursor_of(job: Job) -> Cursor:
    return (job.finished_at or 0.0, job.id)


def _matches(job: Job, tag: str | None, since: float | None, until: float | None, before: Cursor | None) -> bool:
    finished = job.finished_at or 0.0
    if tag is not None and tag not in job.tags:
        return False
    if since is not None and finished < since:
        return False
    if until is not None and finished >= until:
        return False
    return before is None or (finished, job.id) < before


class BaseScheduleStore(abc.ABC):
    """Schedules, kept by a queue backend: a queue class that supports
    ``task.schedule(...)`` derives from both :class:`BaseJobQueue` and this
    class (``class MyQueue(BaseJobQueue, BaseScheduleStore)``). A queue that
    does not gets a clear error at ``.schedule()``.

    A schedule (:class:`nuvom.schedule.Schedule`) is named by its ``key``.
    Core computes every time (ticks, misfires, cron, time zones); a store only
    keeps records and makes one promise:

    **Each tick becomes at most one job.** :meth:`claim_tick` records the pair
    (schedule key, tick) and queues the tick's job *in one atomic step*: when
    several workers race for a tick, exactly one call returns ``True`` and
    exactly one job is queued; a crash never leaves a tick recorded without
    its job (or the store repairs that, see :meth:`repair_ticks`) nor a job
    without its tick. A tick's job has a deterministic id
    (:func:`nuvom.schedule.tick_job_id`), so a repair can be idempotent.

    Ticks are floats (epoch seconds); stores compare them in whole
    milliseconds (:func:`nuvom.schedule.tick_ms`). Methods must be safe across
    threads and, for shared stores, across processes. ``nuvom plugin test``
    checks this contract for a queue class that derives from it.
    """

    @abc.abstractmethod
    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        """Store ``schedule`` under its key, replacing the record with that key.

        Core has already merged it with the stored one
        (:func:`nuvom.schedule.merge`); the store writes it as given and
        returns what it stored."""

    @abc.abstractmethod
    def get_schedule(self, key: str) -> Schedule | None:
        """The schedule with this key, with its current progress, or ``None``."""

    @abc.abstractmethod
    def list_schedules(self) -> list[Schedule]:
        """Every schedule, ordered by key."""

    @abc.abstractmethod
    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        """Pause or resume; returns the updated schedule, ``None`` if unknown."""

    @abc.abstractmethod
    def delete_schedule(self, key: str) -> bool:
        """Remove the schedule (its queued jobs stay); ``False`` if unknown."""

    @abc.abstractmethod
    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        """Claim ``tick`` of schedule ``key`` and queue ``job`` atomically.

        Returns ``False`` (and queues nothing) when the tick was claimed
        before, when the schedule is gone or paused, or when ``tick`` is older
        than the stored ``next_run_at`` (another process got further).
        Otherwise records the claim, queues ``job`` (``None``: the tick is
        skipped, by the misfire policy or ``overlap=False``) and sets the
        schedule's ``next_run_at`` to ``next_run_at`` (``None``: no tick
        left), ``last_run_at`` to ``tick`` and, with a job, ``last_job_id``."""

    def due_schedules(self, now: float) -> list[Schedule]:
        """Schedules not paused whose ``next_run_at`` is at or before ``now``."""
        return [s for s in self.list_schedules() if not s.paused and s.next_run_at is not None and s.next_run_at <= now]

    def next_due_at(self) -> float | None:
        """The earliest ``next_run_at`` of the schedules not paused (``None``: none);
        a firing loop sleeps until then. Called often: keep it cheap."""
        times = [s.next_run_at for s in self.list_schedules() if not s.paused and s.next_run_at is not None]
        return min(times) if times else None

    # -- waking firing loops in this process (concrete; stores need not override) --
    def watch_schedules(self, event: threading.Event) -> None:
        """Set ``event`` whenever a schedule is changed through this object."""
        self.__dict__.setdefault("_schedule_watchers", []).append(event)

    def unwatch_schedules(self, event: threading.Event) -> None:
        watchers = self.__dict__.get("_schedule_watchers", [])
        if event in watchers:
            watchers.remove(event)

    def schedules_changed(self) -> None:
        """Wake this process's firing loops (core calls it after a change)."""
        for event in list(self.__dict__.get("_schedule_watchers", ())):
            event.set()

    def repair_ticks(self) -> int:
        """Queue the jobs of ticks claimed without their job (a store whose claim
        is two steps, repaired after a crash between them); returns how many.
        Firing loops call it every few seconds. Default: nothing to repair."""
        return 0
