"""The queue's contract: :class:`BaseJobQueue`. Re-exported by
:mod:`nuvom.plugins.contracts`, the page a plugin author reads first."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from nuvom._polling import Poller
from nuvom.errors import BackendError
from nuvom.job import DEFAULT_QUEUE, Job
from nuvom.plugins._presence import WorkerInfo

if TYPE_CHECKING:
    from nuvom.config import Settings
    from nuvom.plugins._results import BaseResultBackend

__all__ = ["BaseJobQueue"]


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

    # -- capabilities: a store that keeps more says so; core refuses, before
    # anything is stored, what a store cannot keep (a clear error, not a job
    # silently run by the wrong worker or twice).
    #: Named queues and priorities: ``job.queue`` is kept and :meth:`claim_batch`
    #: takes only jobs of the ``queues`` it is given, the first queue's first,
    #: higher ``job.priority`` first within a queue, then oldest due first.
    supports_queues: ClassVar[bool] = False
    #: :meth:`enqueue_unique` keeps at most one queued-or-running job per key.
    supports_unique: ClassVar[bool] = False
    #: Jobs with a ``flow`` (workflows): stored ``WAITING``, not claimed until
    #: every parent has a final record; released in the same atomic step that
    #: stores the last parent's outcome (:meth:`settle`), so a worker killed at
    #: any instant neither loses a released job nor releases one twice.
    supports_workflows: ClassVar[bool] = False

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

    def claim_batch(
        self,
        limit: int,
        timeout: float | None,
        idle: Callable[[], int],
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> list[Job]:
        """The worker's claim step: up to ``limit`` due jobs, waiting up to
        ``timeout`` seconds for at least one, the first of them start-marked
        for the worker's idle slots, as :meth:`pop_batch_starting` does.
        ``queues``: the named queues the worker serves, in the order it serves
        them (a store without :attr:`supports_queues` is only ever asked for
        ``default``, and ignores it).

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

    def _settle_apart(
        self,
        finished: Sequence[Job],
        requeued: Sequence[Job],
        starting: Sequence[Job],
        results: BaseResultBackend,
    ) -> list[bool]:
        """:meth:`settle` for results kept elsewhere than this store: outcomes
        stored first and the claims acknowledged second (a crash in between
        re-runs a job rather than losing it), then :meth:`requeue` and
        :meth:`mark_started`. For a store whose :meth:`complete` is its
        :meth:`settle` and so cannot be the default's first step."""
        if finished:
            results.store(finished)
            self.ack([job.id for job in finished])
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
    # -- unique jobs, cancelling running jobs, rate limits --------------------
    def enqueue_unique(self, job: Job) -> str:
        """Queue ``job`` unless a queued or running job holds ``job.unique_key``;
        returns the id of the job that holds it (``job.id``: queued now). One
        atomic step: of producers racing for a key, exactly one queues. A key
        is held from the enqueue until its job leaves the queue (outcome
        stored, or cancelled): a retry keeps it. Needs :attr:`supports_unique`."""
        raise BackendError(f"the {type(self).__name__} store cannot keep unique keys")

    def request_cancel(self, job_id: str) -> bool:
        """Ask the worker holding a claimed job to cancel it; ``True`` if the
        job is claimed (running, or waiting in a worker) and the request was
        recorded. Workers ask :meth:`cancel_requested` for the jobs they hold.
        The default records nothing: running jobs of this store cannot be cancelled."""
        return False

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Of ``job_ids`` (held by the calling worker), those whose cancel was
        requested. Called every half second or so by a worker that holds jobs:
        keep it to one cheap read. The default: none."""
        return set()

    def acquire_rate(self, key: str, limit: int, per_secs: float) -> float:
        """Take one of ``limit`` starts per ``per_secs`` seconds for ``key``
        (``@task(rate_limit=...)``): ``0`` when taken, else how many seconds
        until one frees. Shared by every worker of the store: one atomic step.
        The default keeps the count in this object (this process only)."""
        return _local_rate(self.__dict__.setdefault("_rates", {}), key, limit, per_secs)

    def dependents(self, job_id: str) -> list[str]:
        """The jobs waiting for ``job_id`` (workflows; dashboards show them). Default: none known."""
        return []

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """:meth:`counts` by named queue. The default knows one: ``default``."""
        return {DEFAULT_QUEUE: self.counts()}

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

    def claims_held(self) -> tuple[int, float | None]:
        """How many jobs are claimed now (by any worker: running, or held by a
        worker that died until their leases run out), and when the last of
        those leases ends (epoch seconds; ``None``: not known). A worker that
        finds nothing due says so, so that an operator knows what it waits for.
        The default counts ``counts()["running"]`` and knows no lease."""
        return self.counts().get("running", 0), None

    def describe(self) -> str:
        """Where this queue keeps its jobs, for people: ``"sqlite /srv/app/nuvom.db"``,
        ``"redis redis://host:6379/0"``; never a password. Default: the class name."""
        return type(self).__name__

    def close(self) -> None:
        """Release connections and files."""


def _local_rate(rates: dict[str, float], key: str, limit: int, per_secs: float) -> float:
    """GCRA (the generic cell rate algorithm) on one number per key: the time
    the next start would be due if starts came at the steady rate; a start is
    allowed while that is within ``per_secs`` of now (a burst of ``limit``)."""
    now = time.monotonic()
    interval = per_secs / limit
    tat = max(rates.get(key, now), now) + interval
    wait = tat - now - per_secs
    if wait > 0:
        return wait
    rates[key] = tat
    return 0.0
