"""The job runner: one attempt of one job, with hooks, retries and outcome.

The worker owns threads and the queue; this module owns what happens to a
job once a thread has it, through the job's ``mark_*`` lifecycle methods.
``run_job()`` runs a job synchronously with no worker at all
(``nuvom runtestworker``, eager apps in tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from nuvom import serialization
from nuvom._hooks import Hooks, call_hooks
from nuvom._registry import TaskRegistry
from nuvom._settings import Settings
from nuvom._task import Task
from nuvom.errors import NuvomError, SerializationError, TaskNotFound, WorkerLost
from nuvom.job import Attempt, Executor, Job, JobError, lease_secs_for

__all__ = ["MAX_LOST_RUNS", "JobRunner", "error_of", "run_job"]

log = logging.getLogger("nuvom.runner")

#: A job whose worker vanished this many times more than it may fail is
#: failed instead of being claimed forever (a task that kills its process).
MAX_LOST_RUNS = 3


def error_of(exc: BaseException) -> JobError:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    err = JobError.from_exception(exc, tb)
    # Lone surrogates and the like cannot be encoded as UTF-8 by msgpack.
    err.message = err.message.encode("utf-8", "replace").decode("utf-8")
    err.traceback = tb.encode("utf-8", "replace").decode("utf-8")
    return err


class JobRunner:
    """Runs attempts and decides each job's fate.

    ``finish(job)`` is called with a terminal job (to be stored), ``retry(job)``
    with a job that must go back to the queue with a not-before time.
    """

    def __init__(
        self,
        *,
        registry: TaskRegistry,
        settings: Settings,
        hooks: Hooks | None = None,
        worker_id: str | None = None,
        finish: Callable[[Job], None],
        retry: Callable[[Job], None],
        may_import: Callable[[str], str | None] | None = None,
        mark_started: Callable[[Job], bool] | None = None,
    ) -> None:
        self.registry = registry
        # The queue's start mark (BaseJobQueue.mark_started); None: no queue (run_job).
        self.mark_started = mark_started
        self._start_mark_failing = False
        self.may_import = may_import
        self.hooks = hooks or Hooks()
        self.default_timeout_policy = settings.timeout_policy
        self.max_payload_bytes = settings.max_payload_bytes
        self.lease_secs = settings.lease_secs
        self.default_timeout_secs = settings.job_timeout_secs
        self.worker_id = worker_id
        self.finish = finish
        self.retry = retry

    def prepare(self, job: Job) -> Task[Any] | None:
        """Resolve the task and account for lost runs; ``None`` if the job was
        settled without running (unknown task, lost too often)."""
        # A first attempt with no history has no lost run to record: the call is skipped.
        lost_total = job.mark_lost_runs(time.time()) if job.history or job.attempts > 1 else 0
        if lost_total > MAX_LOST_RUNS:
            lease = lease_secs_for(
                job.timeout_secs, lease_secs=self.lease_secs, default_timeout_secs=self.default_timeout_secs
            )
            self.fail_without_running(
                job,
                WorkerLost(
                    f"job {job.id} was lost with its worker {lost_total} times: each time its claim's lease "
                    f"({lease:g} s) ran out before an outcome was stored, because the worker died or stalled "
                    "(stopped, or a task holding the GIL) for longer than that; not run again"
                ),
            )
            return None
        try:
            return self.registry.resolve(job.func_name, job.task_path, may_import=self.may_import)
        except BaseException as exc:
            # A task module that calls sys.exit() at import (a missing API key,
            # say) fails the job like any import error; it never ends the thread.
            if not isinstance(exc, Exception):
                exc = TaskNotFound(
                    f"importing task {job.func_name!r} raised {type(exc).__name__}({exc}); "
                    "a task module must not exit or raise at import"
                )
            self.fail_without_running(job, exc)
            return None

    def fail_without_running(self, job: Job, exc: BaseException) -> None:
        error = error_of(exc)
        error.traceback = None if isinstance(exc, NuvomError) else error.traceback
        job.mark_failed(error, time.time(), self.worker_id)
        log.error("job %s (%s) failed without running: %s", job.id, job.func_name, error.message)
        self.finish(job)

    def start(self, job: Job, task: Task[Any], executor: Executor = "thread") -> Attempt | None:
        """Begin an attempt: the queue's start mark first, then the hooks.
        ``None``: the claim was lost while the job waited here (its lease ran
        out and another worker claimed it), so it must not run here."""
        if self.mark_started is not None and not self._claim_started(job):
            log.warning(
                "job %s (%s) not run here: its claim expired while it waited in this worker (a task holding "
                "the GIL, or a stopped process?) and another worker has claimed it",
                job.id,
                job.func_name,
            )
            return None
        attempt = job.mark_started(self.worker_id, time.time(), executor)
        if self.hooks.before_job:
            call_hooks(self.hooks.before_job, job)
        if task.before_job is not None:
            call_hooks([task.before_job], job)
        return attempt

    def _claim_started(self, job: Job) -> bool:
        assert self.mark_started is not None
        try:
            started = self.mark_started(job)
        except Exception as exc:
            # The mark could not be written (a store failing for a moment): run the
            # job anyway, as a backend without start marks does; its claim still
            # holds it, and if this worker died now the claim would be handed back.
            if not self._start_mark_failing:
                self._start_mark_failing = True
                log.error("writing start marks failed (%s); running jobs without them", exc)
            return True
        if self._start_mark_failing:
            self._start_mark_failing = False
            log.warning("writing start marks works again")
        return started

    def call(self, job: Job, task: Task[Any]) -> tuple[bool, Any]:
        """Run the function; ``(True, result)`` or ``(False, exception)``.

        Any ``BaseException`` from user code (``SystemExit``, a
        ``KeyboardInterrupt`` raised by the task itself: signals reach only the
        main thread) fails the attempt; it never ends the worker thread."""
        try:
            if task.is_async:
                # An async def task sent to a thread (executor="thread", or no
                # worker at all) gets an event loop of its own.
                return True, asyncio.run(task.fn(*job.args, **job.kwargs))
            return True, task.fn(*job.args, **job.kwargs)
        except BaseException as exc:
            return False, exc

    def settle(self, job: Job, task: Task[Any] | None, attempt: Attempt, ok: bool, value: Any) -> None:
        """Record the attempt's outcome and hand the job on."""
        now = time.time()
        if ok and not (
            serialization.is_small_scalar(value) and self.max_payload_bytes >= serialization.SMALL_SCALAR_BYTES
        ):
            try:
                # Checked one level down, where it sits in the stored job, so that
                # what passes here is what the store can encode.
                size = len(serialization.dumps([value], what=f"the result of task {job.func_name!r}")) - 1
                if size > self.max_payload_bytes:
                    raise SerializationError(
                        f"the result of task {job.func_name!r} is {size} bytes encoded, over "
                        f"the limit of {self.max_payload_bytes} (NUVOM_MAX_PAYLOAD_BYTES)"
                    )
            except SerializationError as exc:
                ok, value = False, exc
        if ok:
            job.mark_succeeded(attempt, value, now)
            if self.hooks.after_job:
                call_hooks(self.hooks.after_job, job, value)
            if task is not None and task.after_job is not None:
                call_hooks([task.after_job], job, value)
            if self.hooks.on_job_finished:
                self._report(job, "success", attempt)
            self.finish(job)
            return
        attempt.finished_at = now
        self.fail_attempt(job, task, attempt, value, timed_out=False)

    def fail_attempt(
        self,
        job: Job,
        task: Task[Any] | None,
        attempt: Attempt,
        exc: BaseException,
        *,
        timed_out: bool,
        error: JobError | None = None,
    ) -> None:
        """``error``: the error as recorded, when ``exc`` stands in for one raised
        elsewhere (a pool child's exception, with the child's traceback)."""
        now = time.time()
        failures = job.mark_attempt_failed(attempt, error or error_of(exc), timed_out=timed_out, now=now)
        if self.hooks.on_error:
            call_hooks(self.hooks.on_error, job, exc)
        if task is not None and task.on_error is not None:
            call_hooks([task.on_error], job, exc)
        policy = job.timeout_policy or self.default_timeout_policy
        if failures <= job.max_retries and (not timed_out or policy == "retry"):
            job.mark_retrying(time.time())
            self._report(job, "retry", attempt)
            self.retry(job)
        else:
            job.mark_failed(None, time.time())
            self._report(job, "timeout" if timed_out else "failure", attempt)
            self.finish(job)

    def _report(self, job: Job, outcome: str, attempt: Attempt) -> None:
        if self.hooks.on_job_finished:
            duration = (attempt.finished_at or time.time()) - attempt.started_at
            call_hooks(self.hooks.on_job_finished, job, outcome, duration)

    def run(self, job: Job) -> None:
        """Run one attempt in the calling thread (no timeout enforcement)."""
        task = self.prepare(job)
        if task is None:
            return
        attempt = self.start(job, task)
        if attempt is None:
            return
        ok, value = self.call(job, task)
        self.settle(job, task, attempt, ok, value)


def run_job(
    job: Job,
    *,
    registry: TaskRegistry,
    settings: Settings,
    hooks: Hooks | None = None,
    retries: bool = True,
    may_import: Callable[[str], str | None] | None = None,
) -> Job:
    """Run ``job`` here and now, retries included (waiting out their delays),
    and return it in its final state. Nothing is read from or written to a backend."""
    pending: list[Job] = []
    runner = JobRunner(
        registry=registry,
        settings=settings,
        hooks=hooks,
        worker_id="local",
        finish=lambda j: None,
        retry=pending.append,
        may_import=may_import,
    )
    while True:
        job.mark_claimed()
        runner.run(job)
        if not pending or not retries:
            return job
        pending.clear()
        time.sleep(max(0.0, (job.not_before or 0) - time.time()))
