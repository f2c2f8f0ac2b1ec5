"""The threaded engine: a dispatcher feeding a pool of worker threads.

::

    queue --pop_batch--> dispatcher --least busy--> thread inbox --> runner
                                                                       |
    results <--complete (grouped)-- finished jobs <--------------------+

* The dispatcher claims jobs in batches and appends each to the inbox of the
  least busy thread; it claims only while the pool has room, so a process
  never hoards jobs other workers could run.
* Finished jobs are written in groups: whichever thread finishes a job while
  no write is in progress writes everything waiting (group commit), so a
  durable backend sees one transaction per group, not per job.
* A watchdog enforces timeouts. A Python thread cannot be killed, so a job
  past its deadline is settled by the watchdog, its thread is abandoned
  (whatever it returns later is discarded) and a fresh thread takes its
  place, keeping the pool at ``max_workers``.
* The watchdog also renews leases on claimed jobs, for durable queues.
* Jobs of ``async def`` tasks go to the async executor (one event loop
  thread, :mod:`nuvom._async_executor`), jobs of process tasks to the process
  pool (:mod:`nuvom._process_pool`); both start on the first such job. The
  dispatcher routes each claimed job by :meth:`Worker.executor_for`.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from types import FrameType
from typing import Any, Literal

from nuvom._hooks import Hooks
from nuvom._registry import TaskRegistry
from nuvom._runner import JobRunner, error_of
from nuvom._scheduler import SchedulerLoop, register_declared
from nuvom._settings import Settings
from nuvom.app import App, default_app
from nuvom.backends.memory import MemoryJobQueue
from nuvom.errors import SerializationError
from nuvom.job import Executor, Job, JobError, JobStatus, effective_timeout
from nuvom.plugins._presence import CURRENT_MAX, core_version
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend, WorkerInfo

__all__ = ["Worker"]

log = logging.getLogger("nuvom.worker")

# How often the dispatcher re-checks for a stop while waiting on the queue.
_DISPATCH_WAIT = 0.2
# How often run_forever() looks whether a signal asked it to stop.
_SIGNAL_POLL = 0.1
# Longest the watchdog sleeps; bounds how late a timeout is noticed.
_WATCHDOG_TICK = 0.1
# Longest a thread parked in the memory queue sleeps before looking again for a delayed job.
_MAX_PARK = 3600.0
# Storing finished jobs failed: try again after this, doubling up to the maximum.
_STORE_RETRY_FIRST = 0.2
_STORE_RETRY_MAX = 5.0


class _Wake:
    """An auto-reset wake-up on one bare lock, held while not set: ``set()``
    releases it, a ``wait()`` that returns took it back. The cheapest hand-off
    between threads CPython has (an Event is a Condition and two locks, a
    Python frame on each side); a wake-up may be spurious, so whoever waits
    looks again at what it waits for."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # set already

    def clear(self) -> None:
        self._lock.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        return self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout))


class _Slot:
    """One worker thread: its inbox and what it is running. Also a sink of the
    memory queue (:meth:`MemoryJobQueue.take`): while idle it may be parked
    there, to have the next job queued claimed and put in its inbox directly."""

    __slots__ = (
        "abandoned",
        "attempt",
        "closed",
        "deadline",
        "handoff",
        "idle",
        "inbox",
        "index",
        "job",
        "lock",
        "parked",
        "task",
        "thread",
        "timed_out",
        "wake",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.inbox: deque[Job] = deque()
        self.wake = _Wake()
        self.handoff = self.wake.set
        self.parked = False  # the memory queue's to change, under its lock
        self.closed = False
        self.idle = False  # waiting on `wake`: only then does a new job need to set it
        self.lock = threading.Lock()
        self.job: Job | None = None
        self.task: Any = None
        self.attempt: Any = None
        self.deadline: float | None = None
        self.timed_out = False  # warned already (policy "ignore")
        self.thread: threading.Thread | None = None
        self.abandoned = False


class Worker:
    """Runs an app's jobs until stopped.

    Embeddable::

        with Worker(max_workers=4):
            job = add.delay(1, 2)
            assert job.get(timeout=5) == 3

    ``app``: the :class:`~nuvom.app.App` whose queue, tasks, hooks and plugins
    it uses (default: the default app). ``settings``: run on these settings
    instead (an app derived from the default one, sharing its tasks and hooks).
    ``queue`` / ``results``: backend instances to use instead of the app's.
    ``nuvom runworker`` and ``python -m nuvom.worker`` call :meth:`run_forever`,
    which also stops on SIGINT/SIGTERM.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        app: App | None = None,
        batch_size: int | None = None,
        queue: BaseJobQueue | None = None,
        results: BaseResultBackend | None = None,
        settings: Settings | None = None,
        registry: TaskRegistry | None = None,
        dev: bool = False,
        worker_id: str | None = None,
        executor: Literal["thread", "process"] | None = None,
        processes: int | None = None,
    ) -> None:
        if app is None:
            app = default_app() if settings is None else default_app().derive(settings)
        elif settings is not None:
            app = app.derive(settings)
        self.app = app
        self.settings = app.settings
        self.max_workers = max_workers or self.settings.max_workers
        self.batch_size = batch_size or self.settings.batch_size
        self.registry = registry if registry is not None else app.registry
        # Which modules a job's import path may name (the project's, NUVOM_TASK_MODULES).
        self._may_import = app.import_policy()
        self.dev = dev
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._queue = queue
        self._results = results
        self._slots: list[_Slot] = []
        self._slots_lock = threading.Lock()
        self._stopping = threading.Event()
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._stopped = threading.Event()
        self._room = threading.Condition()
        self._finished: list[Job] = []
        self._finished_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        # Finished jobs not yet stored (waiting, being written, or kept after a
        # failed write): they hold claims, so they count against `capacity` and
        # their leases are renewed like those of running jobs.
        self._unstored: dict[str, Job] = {}
        # Start marks written ahead, in the transaction that stored the outcomes a
        # thread had just produced, for the next job of its inbox: job id -> what
        # the mark returned. Read (and dropped) when that job starts.
        self._premarked: dict[str, bool] = {}
        self._local = threading.local()
        # The dispatcher waits for room: only then must freeing some notify it.
        self._room_waiting = False
        # Threads claim for themselves from the memory queue (`_work`), set at start.
        self._direct = False
        # The queue writes a start mark with the outcomes before it (complete_and_start).
        self._starts_ahead = True
        # The queue's start mark is the contract's default (writes nothing, returns True).
        self._marks_nothing = False
        self._store_failing = False
        self._store_retry_at = 0.0
        self._store_backoff = _STORE_RETRY_FIRST
        self._watch_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self.started_at: float | None = None
        self.capacity = self.max_workers + self.batch_size
        self.runner: JobRunner | None = None
        self._scheduler: Any = None
        #: Where jobs of tasks that name no executor run (``NUVOM_EXECUTOR``).
        self.default_executor: Literal["thread", "process"] = executor or self.settings.executor
        self.processes = processes
        # The async executor and the process pool, started on first use.
        self._executors: dict[str, Any] = {}
        self._executors_lock = threading.Lock()
        # Presence (`_presence`): outcomes stored so far, the next heartbeat, the
        # publishing error being reported (logged once per change of state).
        self._jobs_done = self._jobs_failed = 0
        self._next_beat = 0.0
        self._presence_failing: str | None = None

    # -- public ---------------------------------------------------------------
    @property
    def queue(self) -> BaseJobQueue:
        if self._queue is None:
            self._queue = self.app.queue
        return self._queue

    @property
    def results(self) -> BaseResultBackend:
        if self._results is None:
            self._results = self.app.results
        return self._results

    def start(self) -> Worker:
        if self._started:
            return self
        self._started = True
        self.started_at = time.time()
        # NUVOM_LOG_LEVEL sets the level of nuvom's loggers; handlers are the app's (or the CLI's) business.
        logging.getLogger("nuvom").setLevel(self.settings.log_level)
        queue, results = self.queue, self.results
        # Open the store now: one it cannot use (a path that is not a folder, no
        # permission) is a clear BackendError here, not a claim loop failing forever.
        queue.qsize()
        extras = {
            "app": self.app,
            "worker": self,
            "registry": self.registry,
            "metrics_provider": self.metrics,
            "dev": self.dev,
        }
        plugins = self.app.plugins
        plugins.start(self.settings, extras=extras)
        self._starts_ahead = type(queue).complete_and_start is not BaseJobQueue.complete_and_start
        self._marks_nothing = type(queue).mark_started is BaseJobQueue.mark_started
        self.runner = JobRunner(
            registry=self.registry,
            settings=self.settings,
            hooks=Hooks.collect(self.app.hooks.snapshot(), plugins.started_plugins()),
            worker_id=self.worker_id,
            may_import=self._may_import,
            finish=self._finish,
            retry=self._retry,
            # A queue whose start mark writes nothing (the contract's default) is not
            # asked: it would say True, as would a mark written ahead (complete_and_start).
            mark_started=None if self._marks_nothing and not self._starts_ahead else self._mark_started,
        )
        self._direct = (
            isinstance(queue, MemoryJobQueue) and queue.takes_directly() and self.default_executor == "thread"
        )
        for i in range(self.max_workers):
            self._spawn(_Slot(i))
        if self.default_executor == "process":
            self._executor("process")  # children start now, not with the first job
        for target, name in ((self._dispatch, "dispatcher"), (self._watch, "watchdog")):
            t = threading.Thread(target=target, name=f"nuvom-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._start_scheduler()
        self._publish_presence()
        log.info(
            "worker %s started: %d threads%s, queue=%s, results=%s, data dir %s, %d tasks registered%s",
            self.worker_id,
            self.max_workers,
            f", {self._executors['process'].processes} processes" if "process" in self._executors else "",
            type(queue).__name__,
            type(results).__name__,
            os.path.abspath(self.settings.data_dir),
            len(self.registry),
            f" ({', '.join(self.registry.names()[:10])}{', ...' if len(self.registry) > 10 else ''})"
            if len(self.registry)
            else "",
        )
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let running jobs finish for up to ``grace`` seconds
        (default ``NUVOM_SHUTDOWN_GRACE_SECS``), hand back the rest, stop plugins."""
        if not self._started or self._stopped.is_set():
            return
        grace = self.settings.shutdown_grace_secs if grace is None else grace
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.stop()
        with self._room:
            self._room.notify_all()
        # The watchdog keeps enforcing timeouts and renewing leases through the
        # grace period: a job past its timeout fails as it would have anyway.
        dispatcher, watchdog = self._threads
        dispatcher.join()
        executors = list(self._executors.values())
        for ex in executors:
            ex.begin_stop()
        if isinstance(self.queue, MemoryJobQueue):
            # No more jobs handed or taken (`_work`): whatever is in an inbox now goes back.
            for slot in list(self._slots):
                self.queue.unpark(slot, close=True)
        # Jobs claimed but not started go back untouched: undo the claim's attempt.
        unstarted: list[Job] = []
        for slot in self._slots:
            while slot.inbox:
                try:
                    job = slot.inbox.popleft()
                except IndexError:
                    break
                job.mark_handed_back()
                unstarted.append(job)
            slot.wake.set()
        if unstarted:
            self._handback(unstarted)
        deadline = time.monotonic() + grace
        for slot in list(self._slots):
            thread = slot.thread
            # An abandoned thread (timed out) is not waited for.
            while thread is not None and thread.is_alive() and not slot.abandoned and time.monotonic() < deadline:
                thread.join(min(0.05, max(0.0, deadline - time.monotonic())))
        # Every executor's running jobs share the one grace period.
        interrupted = 0
        for ex in executors:
            if not ex.wait(deadline):
                interrupted += ex.interrupt()
            ex.close()
        if interrupted:
            log.warning("%d async or process job(s) still running after %.1f s grace; handed back", interrupted, grace)
        self._watch_stop.set()
        watchdog.join()
        self._publish_presence(remove=True)
        # Still running after the grace period: the attempt counts; the job goes
        # back so another worker runs it again.
        stuck: list[Job] = []
        for slot in self._slots:
            with slot.lock:
                if slot.job is not None and not slot.abandoned:
                    slot.abandoned = True
                    slot.job.mark_interrupted()
                    stuck.append(slot.job)
        if stuck:
            log.warning("%d job(s) still running after %.1f s grace; handed back to the queue", len(stuck), grace)
            self._handback(stuck)
        self._flush()
        if self._unstored:
            self._flush_retry(deadline=time.monotonic() + max(1.0, grace))
        if self._unstored:
            _safe_log(
                log.error,
                "%d finished job(s) could not be stored before the worker stopped; they run again after their lease",
                len(self._unstored),
            )
        self.app.plugins.stop(worker_only=True)
        self._stopped.set()
        log.info("worker %s stopped", self.worker_id)

    def run_forever(self) -> int:
        """Start, wait for SIGINT/SIGTERM (or :meth:`stop`), stop gracefully; returns 0."""
        if threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        self.start()
        # A signal handler runs inside whatever the main thread was doing, so it
        # must take no lock (an Event.set() from the handler deadlocked against
        # this very thread waiting on the Event). It sets a flag; this loop polls it.
        while not self._stop_requested and not self._stopping.is_set():
            time.sleep(_SIGNAL_POLL)
        if self._stop_signal is not None:
            log.info("received %s, stopping gracefully", signal.Signals(self._stop_signal).name)
        self.stop()
        return 0

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` to stop gracefully. Takes no lock: safe from
        any thread and from a signal handler."""
        self._stop_requested = True

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._stop_signal = signum
            self._stop_requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metrics(self) -> dict[str, Any]:
        """Live figures for exporters: threads, jobs running, queue size, start time."""
        try:
            queue_size = self.queue.qsize()
        except Exception:
            queue_size = -1
        return {
            "worker_count": sum(1 for s in self._slots if not s.abandoned),
            "inflight_jobs": sum(1 for s in self._slots if s.job is not None and not s.abandoned)
            + sum(ex.inflight() for ex in list(self._executors.values())),
            "queue_size": queue_size,
            "started_at": self.started_at,
            "worker_id": self.worker_id,
        }

    # -- presence (nuvom.plugins._presence): at start, each heartbeat, at stop --
    def _presence(self) -> WorkerInfo:
        """This worker as its presence record says it (``nuvom.sdk.list_workers``)."""
        now = time.time()
        running = [job.id for s in list(self._slots) if (job := s.job) is not None and not s.abandoned]
        slots = self.max_workers
        for ex in list(self._executors.values()):
            running += ex.job_ids()[: ex.inflight()]  # running first, then waiting their turn
            slots += getattr(ex, "processes", 0) or getattr(ex, "concurrency", 0)
        heartbeat = self.settings.heartbeat_secs
        return WorkerInfo(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=["default"],
            executor=self.default_executor,
            slots=slots,
            busy=len(running),
            started_at=self.started_at or now,
            heartbeat_at=now,
            jobs_done=self._jobs_done,
            jobs_failed=self._jobs_failed,
            current=running[:CURRENT_MAX],
            store=self.queue.describe(),
            version=core_version(),
            # Gone after three heartbeats missed (a job holding the GIL delays them).
            ttl_secs=3 * heartbeat,
        )

    def _publish_presence(self, remove: bool = False) -> None:
        """Publish this worker's presence (at stop: remove it). Never raises: a
        store that refuses is logged once per change of state."""
        self._next_beat = time.monotonic() + self.settings.heartbeat_secs
        try:
            if remove:
                self.queue.remove_worker(self.worker_id)
            else:
                self.queue.publish_worker(self._presence())
        except Exception as exc:
            if str(exc) != self._presence_failing:
                self._presence_failing = str(exc)
                _safe_log(log.warning, "publishing this worker's presence failed (%s: %s)", type(exc).__name__, exc)
            return
        if self._presence_failing is not None:
            self._presence_failing = None
            _safe_log(log.info, "publishing this worker's presence works again")

    # -- schedules (nuvom._scheduler): every worker fires due ticks ------------
    def _start_scheduler(self) -> None:
        # The scheduler is imported with this module, not here: by now a task
        # may hold every free descriptor, and an import needs one (test_emfile).
        from nuvom.plugins.contracts import BaseScheduleStore

        if not isinstance(self.queue, BaseScheduleStore):
            return
        try:
            register_declared(self.app, self.registry)
            self._scheduler = SchedulerLoop(self.app, self.queue).start()
        except Exception:
            log.exception("starting the scheduler failed; this worker fires no schedules")

    # -- threads --------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        t = threading.Thread(target=self._work, args=(slot,), name=f"nuvom-worker-{slot.index}", daemon=True)
        slot.thread = t
        with self._slots_lock:
            self._slots = [s for s in self._slots if s.index != slot.index] + [slot]
            self._slots.sort(key=lambda s: s.index)
        t.start()

    # -- executors ----------------------------------------------------------------
    def executor_for(self, job: Job) -> Executor:
        """Where ``job`` runs: the executor its task names, else the event loop
        for ``async def`` tasks, else the worker's default (``NUVOM_EXECUTOR``;
        with ``process``, async tasks too run in the children)."""
        if job.executor is not None:
            return job.executor
        try:
            # Imports the task's module on first sight (a lazy entry, or the job's
            # task path), as the executor would; once per task.
            task = self.registry.resolve(job.func_name, job.task_path, may_import=self._may_import)
        except Exception:
            task = None  # the executor's prepare() reports why
        if task is not None:
            if task.executor is not None:
                return task.executor
            if task.is_async and self.default_executor != "process":
                return "async"
        return self.default_executor

    def _executor(self, kind: str) -> Any:
        ex = self._executors.get(kind)
        if ex is not None:
            return ex
        with self._executors_lock:
            ex = self._executors.get(kind)
            if ex is None:
                assert self.runner is not None
                args: dict[str, Any] = {
                    "runner": self.runner,
                    "settings": self.settings,
                    "batch_size": self.batch_size,
                    "on_free": self._notify_room,
                    "handback": self._handback,
                }
                if kind == "async":
                    from nuvom._async_executor import AsyncExecutor

                    ex = AsyncExecutor(**args)
                else:
                    from nuvom._process_pool import ProcessPool

                    ex = ProcessPool(**args, processes=self.processes)
                ex.start()
                self._executors[kind] = ex
                log.info("worker %s: %s executor started", self.worker_id, kind)
                if self._direct:
                    self._end_direct()
        return ex

    def _end_direct(self) -> None:
        """Claim through the dispatcher from now on: it alone knows the room the
        event loop and the process pool have (threads claiming for themselves
        would take every waiting job of theirs)."""
        self._direct = False
        queue = self.queue
        for slot in list(self._slots):
            queue.unpark(slot)  # type: ignore[attr-defined]
            slot.wake.set()
        self._notify_room()

    def _notify_room(self) -> None:
        if self._room_waiting:
            with self._room:
                self._room.notify()

    def _room_left(self) -> int:
        if self._direct and not self._store_failing:
            # The threads claim for themselves (`_work`): nothing to claim for them here.
            room = 0
        else:
            # Finished jobs not yet stored still hold their claims: they count.
            room = max(0, self.capacity - sum(map(_load, self._slots)) - len(self._unstored))
        for ex in list(self._executors.values()):
            room += max(0, ex.room())
        return room

    def _dispatch(self) -> None:
        queue, batch_size = self.queue, self.batch_size
        failing: str | None = None  # the claim error being reported, logged once
        while not self._stopping.is_set():
            with self._room:
                # Set before room is counted: whoever frees room after the count
                # sees the flag and notifies (they skip the Condition otherwise).
                self._room_waiting = True
                room = self._room_left()
                if room <= 0:
                    self._room.wait(_DISPATCH_WAIT)
                    continue
                self._room_waiting = False
            want = min(batch_size, room)
            # Threads between jobs with nothing queued (waiting, or storing what they
            # just ran) run what they get at once: those jobs' start marks go with
            # the claim (BaseJobQueue.pop_batch_starting).
            idle = [s for s in self._slots if s.job is None and not s.inbox and not s.abandoned]
            try:
                jobs = queue.pop_batch_starting(want, timeout=_DISPATCH_WAIT, start=min(len(idle), want))
            except Exception as exc:
                # One line per change of state, not one a second: a store that is
                # read-only or corrupt says so once, and once more when it recovers.
                if str(exc) != failing:
                    failing = str(exc)
                    _safe_log(
                        log.error, "claiming jobs failed (%s: %s); trying again every second", type(exc).__name__, exc
                    )
                self._stopping.wait(1.0)
                continue
            if failing is not None:
                failing = None
                _safe_log(log.warning, "claiming jobs works again")
            if not jobs:
                continue
            if self._stopping.is_set():
                for job in jobs:
                    job.mark_handed_back()
                self._handback(jobs)
                return
            slots = self._slots
            to_loop: list[Job] = []
            premarked = min(len(idle), len(jobs))
            # A queue whose start mark writes nothing is never asked for one (the
            # runner skips it): recording its marks would only fill the dict.
            record = not self._marks_nothing
            for i, job in enumerate(jobs):
                if i < premarked and record:
                    self._premarked[job.id] = True  # before a thread can see the job
                kind = self.executor_for(job)
                if kind == "async":
                    to_loop.append(job)
                    continue
                if kind == "process":
                    self._executor(kind).submit(job)
                    continue
                slot = idle.pop() if i < premarked and idle else min(slots, key=_load)
                slot.inbox.append(job)
                if slot.idle:
                    slot.wake.set()
            if to_loop:
                self._executor("async").submit_many(to_loop)

    def _route(self, job: Job, kind: Executor) -> None:
        """A job a thread claimed for itself that runs elsewhere (the event loop, a child process)."""
        if kind == "async":
            self._executor(kind).submit_many([job])
        else:
            self._executor(kind).submit(job)

    def _work(self, slot: _Slot) -> None:
        runner = self.runner
        assert runner is not None
        inbox, wake = slot.inbox, slot.wake
        default_timeout = self.settings.job_timeout_secs
        # The memory queue's direct claims (MemoryJobQueue.take), fixed for the thread's life.
        take = getattr(self.queue, "take", None) if self._direct else None
        on_threads: set[str] = set()
        while True:
            job: Job | None = None
            # Looked at first: an empty inbox is the common case between jobs, and
            # popleft()'s IndexError costs more than the look (a stop may still
            # empty it in between).
            if inbox:
                try:
                    job = inbox.popleft()
                except IndexError:
                    pass
            if job is None:
                if slot.abandoned or self._stopping.is_set():
                    return
                # Threads that claim for themselves hold no more than the job they run:
                # nothing to take over from another inbox.
                stolen = None if self._direct else self._steal(slot)
                if stolen is not None:
                    inbox.append(stolen)
                    continue
                # Announce idleness before the last look at the inbox: a job appended
                # after that look finds `idle` set and sets `wake`.
                wake.clear()
                slot.idle = True
                if take is not None and self._direct and not self._store_failing:
                    # Claim the next job here, or park in the queue to be handed the
                    # next one queued: no dispatcher thread between queue and runner.
                    next_due = take(slot)
                    if not inbox:
                        if self._stopping.is_set():
                            wake.wait(_DISPATCH_WAIT)
                        else:
                            # Woken by the job handed over, or when a delayed one is due.
                            wake.wait(None if next_due is None else min(_MAX_PARK, next_due - time.time() + 0.001))
                elif not inbox:
                    wake.wait(_DISPATCH_WAIT if self._stopping.is_set() else None)
                slot.idle = False
                continue
            if take is not None:
                if slot.parked:
                    # Woken by the dispatcher or a stop, not by the queue: busy now,
                    # so the queue must hand its next job to another thread.
                    self.queue.unpark(slot)  # type: ignore[attr-defined]
                # A job claimed here, not by the dispatcher, has not been routed yet.
                # Tasks seen to run on threads are remembered (`executor_for` resolves the task).
                if job.executor is None and job.func_name in on_threads:
                    kind: Executor = "thread"
                else:
                    kind = self.executor_for(job)
                    if kind == "thread" and job.executor is None:
                        on_threads.add(job.func_name)
                if kind != "thread":
                    self._route(job, kind)
                    continue
            slot.job = job
            try:
                if not self._run(slot, job, runner, default_timeout):
                    return  # the watchdog settled this job and replaced this thread
            except BaseException as exc:
                # Not the task (call() catches what it raises): a task module's
                # import, a hook or a log handler raised. The job fails, the thread lives.
                if not self._crashed(slot, job, exc):
                    return

    def _run(self, slot: _Slot, job: Job, runner: JobRunner, default_timeout: float) -> bool:
        """One job in this thread; ``False`` if the thread was abandoned meanwhile."""
        if not slot.inbox and self._room_waiting and not self._direct:
            # Running the last job of this inbox: ask the dispatcher for more now,
            # so the thread does not go idle waiting for a claim.
            self._notify_room()
        task = runner.prepare(job)
        if task is None:
            slot.job = None
            return True
        attempt = runner.start(job, task)
        if attempt is None:
            slot.job = None  # another worker holds it now
            return True
        slot.task, slot.attempt = task, attempt
        slot.deadline = time.monotonic() + effective_timeout(job.timeout_secs, default_timeout)
        ok, value = runner.call(job, task)
        with slot.lock:
            if slot.abandoned:
                return False
            slot.job = slot.task = slot.attempt = slot.deadline = None
            slot.timed_out = False
        if not self._starts_ahead:
            runner.settle(job, task, attempt, ok, value)
            return True
        # If this thread stores the outcome, the start mark of its next job goes
        # in the same write (one transaction on SQLite instead of two).
        try:
            self._local.next_start = slot.inbox[0]
        except IndexError:
            self._local.next_start = None
        try:
            runner.settle(job, task, attempt, ok, value)
        finally:
            self._local.next_start = None
        return True

    def _crashed(self, slot: _Slot, job: Job, exc: BaseException) -> bool:
        """Settle a job whose handling raised outside the task; ``False`` if the
        thread was abandoned meanwhile."""
        with slot.lock:
            if slot.abandoned:
                return False
            slot.job = slot.task = slot.attempt = slot.deadline = None
            slot.timed_out = False
        _safe_log(log.error, "job %s (%s): handling it raised %s: %s", job.id, job.func_name, type(exc).__name__, exc)
        # A job already handed on (stored or waiting to be, or back in the queue
        # for a retry) is left alone; any other is recorded now, as it stands if
        # its fate was decided, else failed with what happened.
        if job.id in self._unstored or job.status is JobStatus.RETRYING:
            return True
        try:
            if not job.done:
                error = error_of(exc)
                error.message = f"the worker could not run this job: {type(exc).__name__}: {error.message}"
                job.mark_failed(error, time.time(), self.worker_id)
            self._finish(job)
        except BaseException:
            _safe_log(log.exception, "job %s: recording its failure failed", job.id)
        return True

    def _steal(self, thief: _Slot) -> Job | None:
        # Least-busy dispatch counts jobs, not their length: a job queued behind
        # a long-running one is taken over by a thread that has run dry.
        for slot in self._slots:
            if slot is not thief and slot.job is not None and slot.inbox:
                try:
                    return slot.inbox.popleft()
                except IndexError:
                    continue
        return None

    def _watch(self) -> None:
        lease_every = max(0.5, self.settings.lease_secs / 3)
        next_lease = time.monotonic() + lease_every
        while not self._watch_stop.is_set():
            try:
                next_lease = self._watch_once(lease_every, next_lease)
            except BaseException:
                # A log handler that raises (EMFILE, say) must not end timeouts and leases.
                _safe_log(log.exception, "watchdog pass failed; continuing")
                self._watch_stop.wait(_WATCHDOG_TICK)

    def _watch_once(self, lease_every: float, next_lease: float) -> float:
        now = time.monotonic()
        # Jobs start without telling the watchdog (that would cost on every job),
        # so it looks again at least every tick.
        next_check = now + _WATCHDOG_TICK
        for slot in list(self._slots):
            deadline = slot.deadline
            if deadline is None or slot.abandoned:
                continue
            if deadline <= now:
                self._expire(slot)
            else:
                next_check = min(next_check, deadline)
        if now >= next_lease:
            self._renew_leases()
            next_lease = now + lease_every
        if self._store_failing and now >= self._store_retry_at:
            self._flush_retry()
        if now >= self._next_beat:
            self._publish_presence()
        self._watch_stop.wait(max(0.005, min(next_check, next_lease) - time.monotonic() + 0.001))
        return next_lease

    def _expire(self, slot: _Slot) -> None:
        runner = self.runner
        assert runner is not None
        with slot.lock:
            job, task, attempt = slot.job, slot.task, slot.attempt
            if job is None or slot.deadline is None or slot.abandoned:
                return
            timeout = effective_timeout(job.timeout_secs, self.settings.job_timeout_secs)
            policy = job.timeout_policy or self.settings.timeout_policy
            if policy == "ignore":
                if not slot.timed_out:
                    slot.timed_out = True
                    log.warning(
                        "job %s (%s) exceeded %.1f s; timeout_policy=ignore lets it run on",
                        job.id,
                        job.func_name,
                        timeout,
                    )
                slot.deadline = None
                return
            slot.abandoned = True
        log.warning(
            "job %s (%s) timed out after %.1f s (policy %s); its thread is abandoned and replaced",
            job.id,
            job.func_name,
            timeout,
            policy,
        )
        replacement = _Slot(slot.index)
        replacement.inbox = slot.inbox  # jobs waiting for the stuck thread move to the new one
        replacement.wake.set()
        self._spawn(replacement)
        exc = TimeoutError(f"job exceeded its timeout of {timeout:g} s (timeout_secs)")
        runner.fail_attempt(job, task, attempt, exc, timed_out=True)

    def _renew_leases(self) -> None:
        ids = [j.id for s in list(self._slots) for j in ([s.job] if s.job else []) + list(s.inbox)]
        ids += [i for ex in list(self._executors.values()) for i in ex.job_ids()]
        ids.extend(list(self._unstored))
        if ids:
            try:
                self.queue.extend_leases(ids)
            except Exception:
                _safe_log(log.exception, "renewing leases failed")

    # -- outcomes -------------------------------------------------------------
    def _finish(self, job: Job) -> None:
        with self._finished_lock:
            self._unstored[job.id] = job
            self._finished.append(job)
        if not self._store_failing:
            self._flush()

    def _flush(self) -> None:
        # Group commit: one thread writes everything finished so far; threads
        # that finish meanwhile just leave their job for it.
        starting: Job | None = getattr(self._local, "next_start", None) if self._starts_ahead else None
        while self._finished and self._flush_lock.acquire(blocking=False):
            try:
                # A job appended after the unlocked look below is seen by the outer
                # loop's look once the lock is released: its thread found the lock held.
                while self._finished and not self._store_failing:
                    with self._finished_lock:
                        batch, self._finished = self._finished, []
                    self._store(batch, starting)
                    starting = None
            finally:
                self._flush_lock.release()

    def _mark_started(self, job: Job) -> bool:
        """The runner's start mark: written ahead with an outcome, or now."""
        premarked = self._premarked.pop(job.id, None) if self._premarked else None
        if premarked is not None:
            return premarked
        return True if self._marks_nothing else self.queue.mark_started(job)

    def _complete(self, batch: list[Job], starting: Job | None) -> None:
        premarked = self._premarked
        if premarked:
            for job in batch:  # settled without starting (unknown task, lost too often): its mark is moot
                premarked.pop(job.id, None)
        if starting is None or starting.id in premarked:  # none to mark, or marked already (with its claim)
            self.queue.complete(batch, self.results)
        else:
            premarked[starting.id] = self.queue.complete_and_start(batch, self.results, starting)

    def _flush_retry(self, deadline: float | None = None) -> None:
        """Store the finished jobs kept after a failed write (from the watchdog,
        after a backoff; at stop, until ``deadline``)."""
        while True:
            with self._flush_lock:
                with self._finished_lock:
                    batch = list(self._unstored.values())
                    self._finished = []
                if batch:
                    self._store(batch)
            if not self._unstored or deadline is None or time.monotonic() >= deadline:
                return
            # The watchdog has stopped by now (its event is set): plain sleep for the backoff.
            time.sleep(min(self._store_backoff, max(0.0, deadline - time.monotonic())))

    def _store(self, batch: list[Job], starting: Job | None = None) -> None:
        """Write one group of finished jobs (and ``starting``'s start mark). On
        failure they stay in memory, their claims held and renewed, and are
        written again after a backoff: never run again. Called with the flush lock held."""
        try:
            try:
                self._complete(batch, starting)
            except SerializationError:
                self._complete(_fail_unencodable(batch), starting)
        except Exception as exc:
            if not self._store_failing:
                self._store_failing = True
                _safe_log(
                    log.error,
                    "storing finished jobs failed (%s); keeping up to %d in memory and trying again; "
                    "no new jobs are claimed beyond that",
                    exc,
                    self.capacity,
                )
            self._store_retry_at = time.monotonic() + self._store_backoff
            self._store_backoff = min(_STORE_RETRY_MAX, self._store_backoff * 2)
            return
        with self._finished_lock:
            for job in batch:
                self._unstored.pop(job.id, None)
        # Under the flush lock: one writer at a time.
        self._jobs_done += len(batch)
        self._jobs_failed += sum(job.status is JobStatus.FAILED for job in batch)
        if self._store_failing:
            self._store_failing = False
            self._store_backoff = _STORE_RETRY_FIRST
            _safe_log(log.warning, "storing finished jobs works again; %d job(s) stored", len(batch))
            if self._direct:
                # Threads that stopped claiming while storing failed claim again.
                for slot in list(self._slots):
                    if slot.idle:
                        slot.wake.set()
        elif self._direct:
            return  # the room freed here is the threads', who claim for themselves
        self._notify_room()

    def _retry(self, job: Job) -> None:
        self._handback([job])

    def _handback(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._premarked.pop(job.id, None)
        try:
            self.queue.requeue(jobs)
        except Exception:
            _safe_log(
                log.exception, "handing %d job(s) back to the queue failed; their lease will return them", len(jobs)
            )


def _load(slot: _Slot) -> int:
    return len(slot.inbox) + (slot.job is not None)


def _safe_log(fn: Any, *args: Any) -> None:
    """Log, ignoring a log handler that raises: a broken handler (a full disk,
    no file descriptors left) must not end the thread that logs."""
    try:
        fn(*args)
    except BaseException:
        pass


def _fail_unencodable(batch: list[Job]) -> list[Job]:
    """The batch with every job that cannot be encoded failed with the reason
    (its result is dropped): stored once, never run again."""
    for job in batch:
        try:
            job.to_bytes()
        except SerializationError as exc:
            job.set_fields(result=None)
            job.mark_failed(
                JobError(type="SerializationError", message=f"the job's outcome could not be stored: {exc}"),
                time.time(),
            )
    return batch


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nuvom.worker [module ...]``: a worker process with nuvom-core
    alone (no CLI). Imports the given modules (and ``NUVOM_TASK_MODULES``) so
    their ``@task`` functions register, logs a start and a stop line to stderr,
    and runs until SIGINT/SIGTERM."""
    import argparse
    import importlib
    import sys

    parser = argparse.ArgumentParser(prog="python -m nuvom.worker", description=main.__doc__)
    parser.add_argument("modules", nargs="*", help="modules that define tasks (e.g. tasks)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (NUVOM_MAX_WORKERS)")
    parser.add_argument(
        "--pool", choices=("thread", "process"), default=None, help="executor of tasks that name none (NUVOM_EXECUTOR)"
    )
    parser.add_argument(
        "--processes", type=int, default=None, help="process pool size (NUVOM_PROCESSES; default: cores)"
    )
    args = parser.parse_args(argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # tasks.py beside the caller imports, as with `python -m`
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("nuvom").addHandler(handler)
    from nuvom.errors import BackendError, ConfigError, NuvomError

    try:
        app = default_app()
        for module in [*app.settings.task_module_list(), *args.modules]:
            importlib.import_module(module)
        return Worker(max_workers=args.threads, app=app, executor=args.pool, processes=args.processes).run_forever()
    except (NuvomError, ImportError) as exc:
        # The CLI's exit codes: 5 a setting, 6 the store, 2 usage (a module that does not import).
        sys.stderr.write(f"error: {exc}\n")
        if isinstance(exc, ConfigError):
            return 5
        return 6 if isinstance(exc, BackendError) else 2 if isinstance(exc, ImportError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
