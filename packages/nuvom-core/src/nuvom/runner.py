"""The job runner: one attempt of one job, with hooks, retries and outcome.

The worker owns threads and the queue; this module owns what happens to a
job once a thread has it. ``run_job()`` runs a job synchronously with no
worker at all (``nuvom runtestworker``).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nuvom import serialization
from nuvom.errors import NuvomError, SerializationError
from nuvom.hooks import HOOK_NAMES, global_hooks
from nuvom.job import Attempt, Job, JobError, JobStatus
from nuvom.registry import TaskRegistry, get_registry
from nuvom.task import Task

__all__ = ["Hooks", "JobRunner", "WorkerLost", "run_job"]

log = logging.getLogger("nuvom.runner")

#: A job whose worker vanished this many times more than it may fail is
#: failed instead of being claimed forever (a task that kills its process).
MAX_LOST_RUNS = 3


class WorkerLost(NuvomError):
    """The job's worker stopped (was killed) while running it too many times."""


@dataclass
class Hooks:
    """Hook callables per name, in call order (global, plugins)."""

    before_job: list[Callable[..., Any]] = field(default_factory=list)
    after_job: list[Callable[..., Any]] = field(default_factory=list)
    on_error: list[Callable[..., Any]] = field(default_factory=list)
    on_job_finished: list[Callable[..., Any]] = field(default_factory=list)

    @classmethod
    def collect(cls, plugins: list[Any]) -> Hooks:
        """Global hooks, then each plugin's. A plugin whose ``hooks_enabled``
        is ``False`` after ``start()`` (an exporter left disabled) contributes none."""
        hooks = cls(**global_hooks())
        for plugin in plugins:
            if getattr(plugin, "hooks_enabled", True) is False:
                continue
            for name in HOOK_NAMES:
                fn = getattr(plugin, name, None)
                if callable(fn):
                    getattr(hooks, name).append(fn)
        return hooks


def _call_hooks(fns: list[Callable[..., Any]], *args: Any) -> None:
    for fn in fns:
        try:
            fn(*args)
        except Exception:
            log.exception("hook %s raised; ignored", getattr(fn, "__qualname__", fn))


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
        registry: TaskRegistry | None = None,
        hooks: Hooks | None = None,
        default_timeout_policy: str = "fail",
        max_payload_bytes: int = 16 * 1024 * 1024,
        worker_id: str | None = None,
        finish: Callable[[Job], None],
        retry: Callable[[Job], None],
    ) -> None:
        self.registry = registry if registry is not None else get_registry()
        self.hooks = hooks or Hooks()
        self.default_timeout_policy = default_timeout_policy
        self.max_payload_bytes = max_payload_bytes
        self.worker_id = worker_id
        self.finish = finish
        self.retry = retry

    def prepare(self, job: Job) -> Task[Any] | None:
        """Resolve the task and account for lost runs; ``None`` if the job was
        settled without running (unknown task, lost too often)."""
        # Claims that never reached a recorded outcome were lost with their worker.
        lost = job.attempts - 1 - len(job.history)
        now = time.time()
        for _ in range(max(0, lost)):
            job.history.append(Attempt(number=len(job.history) + 1, started_at=job.started_at or now, outcome="lost"))
        lost_total = sum(1 for a in job.history if a.outcome == "lost")
        if lost_total > MAX_LOST_RUNS:
            self.fail_without_running(
                job, WorkerLost(f"job {job.id} was lost with its worker {lost_total} times; not run again")
            )
            return None
        try:
            return self.registry.resolve(job.func_name, job.task_path)
        except Exception as exc:
            self.fail_without_running(job, exc)
            return None

    def fail_without_running(self, job: Job, exc: BaseException) -> None:
        job.error = error_of(exc)
        job.error.traceback = None if isinstance(exc, NuvomError) else job.error.traceback
        job.status, job.finished_at, job.worker_id = JobStatus.FAILED, time.time(), self.worker_id
        log.error("job %s (%s) failed without running: %s", job.id, job.func_name, job.error.message)
        self.finish(job)

    def start(self, job: Job, task: Task[Any]) -> Attempt:
        now = time.time()
        job.set_fields(started_at=now, worker_id=self.worker_id)
        attempt = Attempt(number=job.attempts, started_at=now)
        if self.hooks.before_job:
            _call_hooks(self.hooks.before_job, job)
        if task.before_job is not None:
            _call_hooks([task.before_job], job)
        return attempt

    def call(self, job: Job, task: Task[Any]) -> tuple[bool, Any]:
        """Run the function; ``(True, result)`` or ``(False, exception)``."""
        try:
            return True, task.fn(*job.args, **job.kwargs)
        except BaseException as exc:  # SystemExit from a task must not end the worker
            if isinstance(exc, KeyboardInterrupt):
                raise
            return False, exc

    def settle(self, job: Job, task: Task[Any] | None, attempt: Attempt, ok: bool, value: Any) -> None:
        """Record the attempt's outcome and hand the job on."""
        now = time.time()
        attempt.finished_at = now
        if ok:
            try:
                encoded = serialization.dumps(value, what=f"the result of task {job.func_name!r}")
                if len(encoded) > self.max_payload_bytes:
                    raise SerializationError(
                        f"the result of task {job.func_name!r} is {len(encoded)} bytes encoded, over "
                        f"the limit of {self.max_payload_bytes} (NUVOM_MAX_PAYLOAD_BYTES)"
                    )
            except SerializationError as exc:
                ok, value = False, exc
        if ok:
            job.history.append(attempt)
            job.set_fields(
                status=JobStatus.SUCCESS, finished_at=now, error=None, result=value if job.store_result else None
            )
            if self.hooks.after_job:
                _call_hooks(self.hooks.after_job, job, value)
            if task is not None and task.after_job is not None:
                _call_hooks([task.after_job], job, value)
            self._report(job, "success", attempt)
            self.finish(job)
            return
        self.fail_attempt(job, task, attempt, value, timed_out=False)

    def fail_attempt(
        self, job: Job, task: Task[Any] | None, attempt: Attempt, exc: BaseException, *, timed_out: bool
    ) -> None:
        attempt.finished_at = attempt.finished_at or time.time()
        attempt.outcome = "timeout" if timed_out else "error"
        attempt.error = error_of(exc)
        job.history.append(attempt)
        job.error = attempt.error
        if self.hooks.on_error:
            _call_hooks(self.hooks.on_error, job, exc)
        if task is not None and task.on_error is not None:
            _call_hooks([task.on_error], job, exc)
        failures = sum(1 for a in job.history if a.outcome in ("error", "timeout"))
        policy = job.timeout_policy or self.default_timeout_policy
        may_retry = failures <= job.max_retries and (not timed_out or policy == "retry")
        if may_retry:
            job.status = JobStatus.RETRYING
            job.not_before = time.time() + job.retry_delay_secs
            self._report(job, "retry", attempt)
            self.retry(job)
        else:
            job.status, job.finished_at = JobStatus.FAILED, time.time()
            self._report(job, "timeout" if timed_out else "failure", attempt)
            self.finish(job)

    def _report(self, job: Job, outcome: str, attempt: Attempt) -> None:
        if self.hooks.on_job_finished:
            duration = (attempt.finished_at or time.time()) - attempt.started_at
            _call_hooks(self.hooks.on_job_finished, job, outcome, duration)

    def run(self, job: Job) -> None:
        """Run one attempt in the calling thread (no timeout enforcement)."""
        task = self.prepare(job)
        if task is None:
            return
        attempt = self.start(job, task)
        ok, value = self.call(job, task)
        self.settle(job, task, attempt, ok, value)


def run_job(job: Job, *, registry: TaskRegistry | None = None, retries: bool = True) -> Job:
    """Run ``job`` here and now, retries included (waiting out their delays),
    and return it in its final state. Nothing is read from or written to a backend."""
    from nuvom.config import get_settings

    settings = get_settings()
    pending: list[Job] = []
    runner = JobRunner(
        registry=registry,
        default_timeout_policy=settings.timeout_policy,
        max_payload_bytes=settings.max_payload_bytes,
        worker_id="local",
        finish=lambda j: None,
        retry=pending.append,
    )
    while True:
        job.attempts += 1
        job.status = JobStatus.RUNNING
        runner.run(job)
        if not pending or not retries:
            return job
        pending.clear()
        time.sleep(max(0.0, (job.not_before or 0) - time.time()))
