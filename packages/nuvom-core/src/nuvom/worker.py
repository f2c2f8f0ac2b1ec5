"""The worker: runs an app's jobs until stopped.

:class:`Worker` assembles the engine (:mod:`nuvom._engine`): a claim loop
that claims jobs in batches for the room its executors have, the executors
that run them (threads; an event loop for ``async def`` tasks; a process pool
for hard timeouts), an outcome writer that stores what they produce in
groups, and a watchdog for timeouts and leases. ``python -m nuvom.worker``
runs one with nuvom-core alone.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any, Literal

from nuvom._engine import safe_log
from nuvom._engine.base import Executor
from nuvom._engine.claims import ClaimLoop
from nuvom._engine.executors import Executors
from nuvom._engine.outcomes import OutcomeWriter
from nuvom._engine.threads import ThreadSlots
from nuvom._engine.watchdog import Watchdog
from nuvom._hooks import Hooks
from nuvom._registry import TaskRegistry
from nuvom._runner import JobRunner
from nuvom._scheduler import SchedulerLoop, register_declared
from nuvom._settings import Settings
from nuvom.app import App, default_app
from nuvom.errors import BackendError
from nuvom.job import DEFAULT_QUEUE, Job
from nuvom.job import Executor as ExecutorKind
from nuvom.plugins._presence import CURRENT_MAX, core_version
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend, BaseScheduleStore, WorkerInfo

__all__ = ["Worker"]

log = logging.getLogger("nuvom.worker")

# How often run_forever() looks whether a signal asked it to stop.
_SIGNAL_POLL = 0.1


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
        queues: Sequence[str] | None = None,
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
        #: Where jobs of tasks that name no executor run (``NUVOM_EXECUTOR``).
        self.default_executor: Literal["thread", "process"] = executor or self.settings.executor
        self.processes = processes
        #: The named queues it serves, the first first (``NUVOM_QUEUES``).
        self.queues: list[str] = list(dict.fromkeys(queues)) if queues else self.settings.queue_list()
        #: Claims a worker holds at most: its threads, plus a prefetch of one batch.
        self.capacity = self.max_workers + self.batch_size
        self.started_at: float | None = None
        self.runner: JobRunner | None = None
        self._started = False
        self._stopping = threading.Event()
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._stopped = threading.Event()
        self._writer: OutcomeWriter | None = None
        self._executors: Executors | None = None
        self._claims: ClaimLoop | None = None
        self._watchdog: Watchdog | None = None
        self._scheduler: Any = None
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
        if self.queues != [DEFAULT_QUEUE] and not queue.supports_queues:
            raise BackendError(
                f"the {type(queue).__name__} store has one queue only: a worker cannot serve "
                f"{', '.join(self.queues)} (NUVOM_QUEUES / --queues); use a store with named queues"
            )
        plugins = self.app.plugins
        plugins.start(
            self.settings,
            extras={
                "app": self.app,
                "worker": self,
                "registry": self.registry,
                "metrics_provider": self.metrics,
                "dev": self.dev,
            },
        )
        self._assemble(queue, results, Hooks.collect(self.app.hooks.snapshot(), plugins.started_plugins()))
        assert self._executors is not None and self._claims is not None and self._watchdog is not None
        self._executors.ensure("thread")
        if self.default_executor == "process":
            self._executors.ensure("process")  # children start now, not with the first job
        # The watchdog first: timeouts and leases are watched from the first job on.
        self._watchdog.start()
        self._claims.start()
        self._start_scheduler()
        log.info(
            "worker %s started: %d threads%s; store %s, results %s; queues: %s; %d tasks registered%s",
            self.worker_id,
            self.max_workers,
            f", {self._pool_size()} processes" if self.default_executor == "process" else "",
            queue.describe(),
            type(results).__name__,
            ", ".join(self.queues),
            len(self.registry),
            f" ({', '.join(self.registry.names()[:10])}{', ...' if len(self.registry) > 10 else ''})"
            if len(self.registry)
            else "",
        )
        return self

    def _assemble(self, queue: BaseJobQueue, results: BaseResultBackend, hooks: Hooks) -> None:
        writer = self._writer = OutcomeWriter(queue, results, capacity=self.capacity, on_stored=self._on_free)
        self.runner = JobRunner(
            registry=self.registry,
            settings=self.settings,
            hooks=hooks,
            worker_id=self.worker_id,
            may_import=self._may_import,
            finish=writer.finished,
            retry=lambda job: writer.requeue((job,)),
            rate=queue.acquire_rate,
            parents=lambda ids: [results.get_full(job_id) for job_id in ids],
        )
        self._executors = Executors(
            registry=self.registry,
            may_import=self._may_import,
            default=self.default_executor,
            make=self._make_executor,
            worker_id=self.worker_id,
            cancel=self.runner.cancel,
        )
        self._claims = ClaimLoop(
            queue, self._executors, writer, batch_size=self.batch_size, capacity=self.capacity, queues=self.queues
        )
        writer.claim_now = self._claims.claim_now
        self._watchdog = Watchdog(
            queue,
            self._executors,
            writer,
            lease_secs=self.settings.lease_secs,
            beat=self._publish_presence,
            beat_every=self.settings.heartbeat_secs,
        )
        writer.start()

    def _make_executor(self, kind: ExecutorKind) -> Executor:
        assert self.runner is not None and self._writer is not None
        common: dict[str, Any] = {
            "runner": self.runner,
            "writer": self._writer,
            "settings": self.settings,
            "on_free": self._on_free,
        }
        if kind == "thread":
            # A slot's outcome waits for the next job's start mark: one write for both.
            writer = self._writer
            common["runner"] = self.runner.with_handlers(
                finish=functools.partial(writer.finished, kick=False),
                retry=lambda job: writer.requeue((job,), kick=False),
            )
            slots = ThreadSlots(threads=self.max_workers, prefetch=self.batch_size, **common)
            writer.expected = slots.inflight
            return slots
        if kind == "async":
            from nuvom._engine.asyncloop import AsyncExecutor

            return AsyncExecutor(prefetch=self.batch_size, **common)
        from nuvom._engine.processes import ProcessPool

        return ProcessPool(prefetch=self.batch_size, processes=self.processes, **common)

    def _on_free(self) -> None:
        claims = self._claims
        if claims is not None:
            claims.notify()

    def _pool_size(self) -> int:
        return self.processes or self.settings.processes or os.cpu_count() or 1

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let running jobs finish for up to ``grace`` seconds
        (default ``NUVOM_SHUTDOWN_GRACE_SECS``), hand back the rest, stop plugins."""
        if not self._started or self._stopped.is_set():
            return
        grace = self.settings.shutdown_grace_secs if grace is None else grace
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.stop()
        claims, executors, watchdog, writer = self._claims, self._executors, self._watchdog, self._writer
        assert claims is not None and executors is not None and watchdog is not None and writer is not None
        claims.stop()
        # Jobs claimed but not started go back untouched (their claim undone);
        # the watchdog keeps enforcing timeouts and renewing leases through the
        # grace period: a job past its timeout fails as it would have anyway.
        started = executors.started()
        for ex in started:
            ex.begin_stop()
        deadline = time.monotonic() + grace
        interrupted = 0
        for ex in started:
            if not ex.wait(deadline):
                interrupted += ex.interrupt()
            ex.close()
        if interrupted:
            log.warning("%d job(s) still running after %.1f s grace; handed back to the queue", interrupted, grace)
        watchdog.stop()
        unstored = writer.close(time.monotonic() + max(1.0, grace))
        self._publish_presence(remove=True)
        if unstored:
            log.error(
                "%d finished job(s) could not be stored before the worker stopped; they run again after their lease",
                unstored,
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
        executors = self._executors.started() if self._executors is not None else []
        threads = self.executor("thread")
        return {
            "worker_count": threads.workers() if isinstance(threads, ThreadSlots) else 0,
            "inflight_jobs": sum(len(ex.running()) for ex in executors),
            "queue_size": queue_size,
            "started_at": self.started_at,
            "worker_id": self.worker_id,
            "loop_blocked_total": sum(getattr(ex, "blocked_total", 0) for ex in executors),
        }

    # -- presence (nuvom.plugins._presence): at start, each heartbeat, at stop --
    def _presence(self) -> WorkerInfo:
        """This worker as its presence record says it (``nuvom.sdk.list_workers``)."""
        now = time.time()
        executors = self._executors.started() if self._executors is not None else []
        running = [job.id for ex in executors for job in ex.running()]
        slots = sum(ex.slots for ex in executors)
        writer = self._writer
        heartbeat = self.settings.heartbeat_secs
        return WorkerInfo(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.queues),
            executor=self.default_executor,
            slots=slots,
            busy=len(running),
            started_at=self.started_at or now,
            heartbeat_at=now,
            jobs_done=writer.jobs_done if writer is not None else 0,
            jobs_failed=writer.jobs_failed if writer is not None else 0,
            current=running[:CURRENT_MAX],
            store=self.queue.describe(),
            version=core_version(),
            # Gone after three heartbeats missed (a job holding the GIL delays them).
            ttl_secs=3 * heartbeat,
        )

    def _publish_presence(self, remove: bool = False) -> None:
        """Publish this worker's presence (at stop: remove it). Never raises: a
        store that refuses is logged once per change of state."""
        try:
            if remove:
                self.queue.remove_worker(self.worker_id)
            else:
                self.queue.publish_worker(self._presence())
        except Exception as exc:
            if str(exc) != self._presence_failing:
                self._presence_failing = str(exc)
                safe_log(log.warning, "publishing this worker's presence failed (%s: %s)", type(exc).__name__, exc)
            return
        if self._presence_failing is not None:
            self._presence_failing = None
            safe_log(log.info, "publishing this worker's presence works again")

    def executor_for(self, job: Job) -> ExecutorKind:
        """Where ``job`` runs: the executor its task names, else the event loop
        for ``async def`` tasks, else the worker's default (``NUVOM_EXECUTOR``;
        with ``process``, async tasks too run in the children)."""
        if self._executors is None:
            return Executors(
                registry=self.registry,
                may_import=self._may_import,
                default=self.default_executor,
                make=self._make_executor,
                worker_id=self.worker_id,
            ).kind_for(job)
        return self._executors.kind_for(job)

    def executor(self, kind: ExecutorKind) -> Executor | None:
        """The running executor of ``kind`` (``None`` if it has not started)."""
        return None if self._executors is None else self._executors.get(kind)

    # -- schedules (nuvom._scheduler): every worker fires due ticks ------------
    def _start_scheduler(self) -> None:
        if not isinstance(self.queue, BaseScheduleStore):
            return
        try:
            register_declared(self.app, self.registry)
            self._scheduler = SchedulerLoop(self.app, self.queue).start()
        except Exception:
            log.exception("starting the scheduler failed; this worker fires no schedules")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nuvom.worker [module ...]``: a worker process with nuvom-core
    alone (no CLI). Imports the given modules (and ``NUVOM_TASK_MODULES``) so
    their ``@task`` functions register, logs a start and a stop line to stderr,
    and runs until SIGINT/SIGTERM."""
    import argparse
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
    parser.add_argument(
        "--queues",
        type=_queue_names,
        default=None,
        help="named queues to serve, comma-separated, the first first (NUVOM_QUEUES; default: default)",
    )
    args = parser.parse_args(argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # tasks.py beside the caller imports, as with `python -m`
    from nuvom._logformat import install_handler
    from nuvom.errors import BackendError, ConfigError, NuvomError, TaskNotFound

    try:
        app = default_app()
        install_handler(app.settings, sys.stderr)
        # NUVOM_TASK_MODULES and the given modules; one that raises is logged and its tasks never run.
        app.import_task_modules(args.modules)
        worker = Worker(
            max_workers=args.threads, app=app, executor=args.pool, processes=args.processes, queues=args.queues
        )
        return worker.run_forever()
    except (NuvomError, ImportError) as exc:
        # The CLI's exit codes: 5 a setting, 6 the store, 2 usage (a module that cannot be found).
        sys.stderr.write(f"error: {exc}\n")
        if isinstance(exc, ConfigError):
            return 5
        if isinstance(exc, (ImportError, TaskNotFound)):
            return 2
        return 6 if isinstance(exc, BackendError) else 1


def _queue_names(value: str) -> list[str]:
    """``--queues emails,default`` as names, each checked as ``@task(queue=)`` checks it."""
    import argparse

    from nuvom.job import TaskOptions

    names = list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give one or more queue names, e.g. --queues emails,default")
    for name in names:
        try:
            TaskOptions.model_validate({"queue": name})
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a queue name: 1-64 letters, digits, '_', '.', ':' or '-'"
            ) from None
    return names


if __name__ == "__main__":
    raise SystemExit(main())
