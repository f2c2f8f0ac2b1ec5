"""The job runner: one attempt of one job, with its hooks, reported to the engine.

Every executor (threads, the event loop, the process pool) drives an attempt
through the same steps: :meth:`JobRunner.prepare` (resolve the task, account
for lost runs), :meth:`JobRunner.start`, the call, then :meth:`JobRunner.settle`
or :meth:`JobRunner.fail_attempt`. What an outcome means for the job is
decided by :mod:`nuvom._fate`; the runner hands the job on through
``finish(job)`` (terminal: to be stored) or ``retry(job)`` (back to the queue).
``run_job()`` runs a job synchronously with no worker at all
(``nuvom runtestworker``, eager apps in tests).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from nuvom import _context, _fate, _flow, _tracing, serialization
from nuvom._context import JobContext
from nuvom._hooks import Hooks, call_hooks
from nuvom._registry import TaskRegistry
from nuvom._settings import Settings
from nuvom._task import Task
from nuvom.errors import NuvomError, SerializationError, TaskNotFound
from nuvom.job import Attempt, Executor, Job, JobError

__all__ = ["JobRunner", "run_job"]

log = logging.getLogger("nuvom.runner")


class JobRunner:
    """Runs attempts and reports each job's fate.

    ``finish(job)`` is called with a terminal job (to be stored), ``retry(job)``
    with a job that must go back to the queue with a not-before time. The
    claim's start mark is the executor's to write before :meth:`start`.
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
        rate: Callable[[str, int, float], float] | None = None,
        parents: Callable[[list[str]], list[Job | None]] | None = None,
    ) -> None:
        self.registry = registry
        # The store's rate limiter (BaseJobQueue.acquire_rate) and a reader of
        # finished jobs (workflows); None: none (run_job).
        self.rate = rate
        self.parents = parents
        self.may_import = may_import
        self.hooks = hooks or Hooks()
        self.default_timeout_policy = settings.timeout_policy
        self.max_payload_bytes = settings.max_payload_bytes
        self.lease_secs = settings.lease_secs
        self.default_timeout_secs = settings.job_timeout_secs
        self.traceback_in_log = settings.log_level.upper() == "DEBUG"
        self.worker_id = worker_id
        self.finish = finish
        self.retry = retry
        # The running attempts' spans, by job id (tracing configured only: nuvom._tracing).
        self._spans: dict[str, Any] = {}
        # The running attempts' contexts (current_job()), by job id; the ids of
        # jobs cancelled before they started; the inputs of workflow jobs.
        self._contexts: dict[str, JobContext] = {}
        self._cancelled: set[str] = set()
        self._inputs: dict[str, tuple[list[Any], dict[str, Any]]] = {}
        # Only a hook-less, size-unbounded success may skip the result check below.
        self._small_results_fit = self.max_payload_bytes >= serialization.SMALL_SCALAR_BYTES

    def with_handlers(self, *, finish: Callable[[Job], None], retry: Callable[[Job], None]) -> JobRunner:
        """This runner, handing jobs on to other callables."""
        runner = copy.copy(self)
        runner.finish, runner.retry = finish, retry
        return runner

    def prepare(self, job: Job) -> Task[Any] | None:
        """Resolve the task and account for lost runs; ``None`` if the job was
        settled without running (unknown task, a task module that failed to
        import, lost too often)."""
        lost = _fate.lost_too_often(
            job, time.time(), lease_secs=self.lease_secs, default_timeout_secs=self.default_timeout_secs
        )
        if lost is not None:
            self.fail_without_running(job, lost)
            return None
        try:
            task = self.registry.resolve(job.func_name, job.task_path, may_import=self.may_import)
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
        if self._cancelled and job.id in self._cancelled:
            self._cancelled.discard(job.id)
            self._settle_unrun(job, _cancelled_error())
            return None
        if task.options.rate_limit is not None and self.rate is not None and self._deferred(job, task):
            return None
        if job.flow is not None and not self._flow_inputs(job):
            return None
        return task

    def _deferred(self, job: Job, task: Task[Any]) -> bool:
        """Over its task's rate limit: back to the queue until a start frees,
        the claim undone (not an attempt), no slot held meanwhile."""
        assert self.rate is not None
        limit, per = task.options.rate()  # type: ignore[misc]  # rate_limit is set
        wait = self.rate(f"task:{task.name}", limit, per)
        if wait <= 0:
            return False
        job.mark_handed_back()
        job.set_fields(not_before=time.time() + wait)
        self.retry(job)
        return True

    def _flow_inputs(self, job: Job) -> bool:
        """A workflow job: its inputs from its parents' records, or settled
        without running (a parent it needed failed, a branch not needed)."""
        assert job.flow is not None
        if self.parents is None:
            return True
        verdict, value = _flow.decide(job, self.parents(job.flow.parents))
        if verdict == "run":
            self._inputs[job.id] = value
            return True
        self._settle_unrun(job, value)
        return False

    def _settle_unrun(self, job: Job, error: JobError) -> None:
        job.mark_failed(error, time.time(), self.worker_id)
        log.warning(
            "job %s (%s) not run: %s: %s", job.id, job.func_name, error.type, error.message, extra=self._extra(job)
        )
        self.finish(job)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job this runner holds: a running one sees ``cancelled`` and
        ends ``Cancelled`` whatever it returns; one not started yet ends so
        without running. ``False`` if it is unknown here."""
        context = self._contexts.get(job_id)
        if context is not None:
            context.cancel()
            return True
        self._cancelled.add(job_id)
        return False

    def context_of(self, job: Job) -> JobContext | None:
        """The running attempt's context (``current_job()``), for executors."""
        return self._contexts.get(job.id)

    def inputs_of(self, job: Job) -> tuple[list[Any], dict[str, Any]]:
        """The arguments this attempt runs with: a workflow job gets its parents' results first."""
        if self._inputs:
            found = self._inputs.get(job.id)
            if found is not None:
                return found
        return job.args, job.kwargs

    def fail_without_running(self, job: Job, exc: BaseException) -> None:
        error = _fate.error_of(exc)
        error.traceback = None if isinstance(exc, NuvomError) else error.traceback
        job.mark_failed(error, time.time(), self.worker_id)
        log.error(
            "job %s (%s) failed without running: %s",
            job.id,
            job.func_name,
            error.message,
            extra=self._extra(job),
        )
        self.finish(job)

    def claim_lost(self, job: Job) -> None:
        """The start mark found the claim taken over: the job is not run here."""
        log.warning(
            "job %s (%s) not run here: its claim expired while it waited in this worker (a task holding "
            "the GIL, or a stopped process?) and another worker has claimed it",
            job.id,
            job.func_name,
            extra=self._extra(job),
        )

    def start(self, job: Job, task: Task[Any], executor: Executor = "thread") -> Attempt:
        """Begin an attempt (its start mark written): the hooks, then the attempt to run."""
        now = time.time()
        attempt = job.mark_started(self.worker_id, now, executor)
        self._contexts[job.id] = JobContext.of(job, now + _fate.timeout_of(job, self.default_timeout_secs))
        span = _tracing.start_run(job, attempt)
        if span is not None:
            self._spans[job.id] = span
        if self.hooks.before_job:
            call_hooks(self.hooks.before_job, job)
        if task.before_job is not None:
            call_hooks([task.before_job], job)
        return attempt

    def call(self, job: Job, task: Task[Any]) -> tuple[bool, Any]:
        """Run the function; ``(True, result)`` or ``(False, exception)``.

        Any ``BaseException`` from user code (``SystemExit``, a
        ``KeyboardInterrupt`` raised by the task itself: signals reach only the
        main thread) fails the attempt; it never ends the worker thread."""
        args, kwargs = self.inputs_of(job)
        span = self.span_of(job)
        token = _context.enter(self._contexts.get(job.id))
        try:
            if span is not None:
                with _tracing.using(span):
                    return True, self._invoke(task, args, kwargs)
            return True, self._invoke(task, args, kwargs)
        except BaseException as exc:
            return False, exc
        finally:
            _context.leave(token)

    @staticmethod
    def _invoke(task: Task[Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        if task.is_async:
            # An async def task sent to a thread (executor="thread", or no
            # worker at all) gets an event loop of its own.
            return asyncio.run(task.fn(*args, **kwargs))
        return task.fn(*args, **kwargs)

    def _ended_cancelled(self, job: Job) -> bool:
        """Forget the ended attempt's context and inputs; whether it was cancelled while it ran."""
        context = self._contexts.pop(job.id, None)
        if self._inputs:
            self._inputs.pop(job.id, None)
        return context is not None and context.cancelled

    def span_of(self, job: Job) -> Any:
        """The running attempt's span (``None`` without tracing), for an executor
        that runs the task elsewhere than in :meth:`call` (the event loop)."""
        return self._spans.get(job.id) if self._spans else None

    def settle(self, job: Job, task: Task[Any] | None, attempt: Attempt, ok: bool, value: Any) -> None:
        """Record the attempt's outcome and hand the job on."""
        now = time.time()
        if self._ended_cancelled(job):
            ok, value = False, _Cancelled("cancelled while it ran (its result, if any, is dropped)")
        if ok and not (self._small_results_fit and serialization.is_small_scalar(value)):
            error = self._oversized(job, value)
            if error is not None:
                ok, value = False, error
        if not ok:
            attempt.finished_at = now
            self.fail_attempt(job, task, attempt, value, timed_out=False)
            return
        job.mark_succeeded(attempt, value, now)
        hooks = self.hooks
        if hooks.after_job:
            call_hooks(hooks.after_job, job, value)
        if task is not None and task.after_job is not None:
            call_hooks([task.after_job], job, value)
        if hooks.on_job_finished:
            self._report(job, "success", attempt)
        if self._spans:
            _tracing.end_run(self._spans.pop(job.id, None), "success")
        self.finish(job)

    def _oversized(self, job: Job, value: Any) -> SerializationError | None:
        """Why the result cannot be stored, or ``None``. Checked one level down,
        where it sits in the stored job, so that what passes here is what the
        store can encode."""
        try:
            size = len(serialization.dumps([value], what=f"the result of task {job.func_name!r}")) - 1
        except SerializationError as exc:
            return exc
        if size > self.max_payload_bytes:
            return SerializationError(
                f"the result of task {job.func_name!r} is {size} bytes encoded, over "
                f"the limit of {self.max_payload_bytes} (NUVOM_MAX_PAYLOAD_BYTES)"
            )
        return None

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
        if self._ended_cancelled(job):
            exc, error, timed_out = _Cancelled("cancelled while it ran"), None, False
        recorded = error or _fate.error_of(exc)
        now = time.time()
        verdict = _fate.fail_attempt(
            job,
            attempt,
            recorded,
            timed_out=timed_out,
            now=now,
            default_policy=self.default_timeout_policy,
            task=task,
            exc=exc,
        )
        if self.hooks.on_error:
            call_hooks(self.hooks.on_error, job, exc)
        if task is not None and task.on_error is not None:
            call_hooks([task.on_error], job, exc)
        self._log_failure(job, attempt, recorded, verdict, now)
        outcome = "retry" if verdict == "retry" else "timeout" if timed_out else "failure"
        self._report(job, outcome, attempt)
        if self._spans:
            _tracing.end_run(self._spans.pop(job.id, None), outcome, exc)
        if verdict == "retry":
            self.retry(job)
            return
        if task is not None and task.on_failure is not None:
            call_hooks([task.on_failure], job, exc)
        self.finish(job)

    def _log_failure(self, job: Job, attempt: Attempt, error: JobError, verdict: _fate.Verdict, now: float) -> None:
        # One line per attempt: a retry is a WARNING, the final failure an ERROR.
        # The traceback is stored with the job; the log carries it at DEBUG only.
        tb = f"\n{error.traceback}" if self.traceback_in_log and error.traceback else ""
        if verdict == "retry":
            log.warning(
                "job %s (%s) attempt %d failed: %s: %s; retrying in %g s (%d retr%s left)%s",
                job.id,
                job.func_name,
                attempt.number,
                error.type,
                error.message,
                # the wait the retry policy chose (back-off and jitter included)
                round(max(0.0, (job.not_before or now) - now), 3),
                job.retries_left,
                "y" if job.retries_left == 1 else "ies",
                tb,
                extra=self._extra(job),
            )
        else:
            log.error(
                "job %s (%s) failed after %d attempt%s: %s: %s%s",
                job.id,
                job.func_name,
                attempt.number,
                "" if attempt.number == 1 else "s",
                error.type,
                error.message,
                tb,
                extra=self._extra(job),
            )

    def _extra(self, job: Job) -> dict[str, Any]:
        return {"job_id": job.id, "task": job.func_name, "worker": self.worker_id}

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


class _Cancelled(Exception):
    """A job cancelled while it ran (recorded as error type ``Cancelled``)."""


_Cancelled.__qualname__ = _fate.CANCELLED


def _cancelled_error() -> JobError:
    return JobError(type=_fate.CANCELLED, message="cancelled before it started")
