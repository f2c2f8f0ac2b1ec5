"""A job's fate: the one place that decides what each attempt's end means.

Executors run attempts and report how each ended; the rules below decide
what that means for the job, as RQ keeps ``should_retry`` and
``_handle_failure`` on its ``Job``: a success is recorded; a failure or a
timeout is retried while retries are left and the timeout policy allows; runs
lost with their worker are recorded, and a job lost too often fails with
:class:`~nuvom.errors.WorkerLost` instead of being claimed forever. Every
decision changes the job only through its ``mark_*`` methods, and every
executor (threads, the event loop, the process pool) and every backend reads
the same timeout and lease rules from here and from :mod:`nuvom.job`.
"""

from __future__ import annotations

import random
import traceback
from typing import TYPE_CHECKING, Any, Literal

from nuvom.errors import WorkerLost
from nuvom.job import Attempt, Job, JobError, TimeoutPolicy, effective_timeout, lease_secs_for

if TYPE_CHECKING:
    from nuvom._task import Task

__all__ = [
    "CANCELLED",
    "MAX_LOST_RUNS",
    "Verdict",
    "error_of",
    "fail_attempt",
    "lost_too_often",
    "retries_on",
    "retry_delay",
    "timeout_error",
    "timeout_of",
    "timeout_policy_of",
]

#: A job whose worker vanished this many times is failed instead of being
#: claimed forever (a task that kills its process).
MAX_LOST_RUNS = 3

#: What happens to a job after a failed attempt: it goes back to the queue
#: for another attempt, or it ends ``FAILED``.
Verdict = Literal["retry", "fail"]


def timeout_of(job: Job, default_secs: float) -> float:
    """The timeout ``job`` runs under (its own, else ``NUVOM_JOB_TIMEOUT_SECS``)."""
    return effective_timeout(job.timeout_secs, default_secs)


def timeout_policy_of(job: Job, default: TimeoutPolicy) -> TimeoutPolicy:
    """What a timeout does to ``job``: ``fail``, ``retry`` or ``ignore``."""
    return job.timeout_policy or default


def timeout_error(timeout: float, how: str = "") -> TimeoutError:
    """The error a timed-out attempt is recorded with; ``how`` says what was done to it."""
    return TimeoutError(f"job exceeded its timeout of {timeout:g} s (timeout_secs){how}")


def error_of(exc: BaseException) -> JobError:
    """``exc`` as it is stored: type, message and traceback, valid UTF-8."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    err = JobError.from_exception(exc, tb)
    # Lone surrogates and the like cannot be encoded as UTF-8 by msgpack.
    err.message = err.message.encode("utf-8", "replace").decode("utf-8")
    err.traceback = tb.encode("utf-8", "replace").decode("utf-8")
    return err


def lost_too_often(job: Job, now: float, *, lease_secs: float, default_timeout_secs: float) -> WorkerLost | None:
    """Record the runs ``job`` lost with earlier workers (claims that started
    and never reached an outcome) as ``lost`` attempts; the error to fail it
    with when that happened more than :data:`MAX_LOST_RUNS` times, else ``None``."""
    if not job.history and job.attempts <= 1:
        return None  # a first attempt has no lost run to record
    lost = job.mark_lost_runs(now)
    if lost <= MAX_LOST_RUNS:
        return None
    lease = lease_secs_for(job.timeout_secs, lease_secs=lease_secs, default_timeout_secs=default_timeout_secs)
    return WorkerLost(
        f"job {job.id} was lost with its worker {lost} times: each time its claim's lease ({lease:g} s) ran "
        "out before an outcome was stored, because the worker died or stalled (stopped, or a task holding "
        "the GIL) for longer than that; not run again"
    )


#: The error type of a job cancelled while it ran: never retried.
CANCELLED = "Cancelled"


def fail_attempt(
    job: Job,
    attempt: Attempt,
    error: JobError,
    *,
    timed_out: bool,
    now: float,
    default_policy: TimeoutPolicy,
    task: Task[Any] | None = None,
    exc: BaseException | None = None,
) -> Verdict:
    """Record a failed (or timed-out) attempt and decide: ``"retry"`` (the job
    is marked to wait its retry delay; no thread waits for it) or ``"fail"``
    (marked ``FAILED``). Lost runs do not use up retries: only failures and
    timeouts do, a timeout only under the ``retry`` policy, an exception only
    if the task's ``retry_on``/``dont_retry_on`` allow it, and a cancelled job
    never."""
    failures = job.mark_attempt_failed(attempt, error, timed_out=timed_out, now=now)
    if (
        failures <= job.max_retries
        and error.type != CANCELLED
        and (not timed_out or timeout_policy_of(job, default_policy) == "retry")
        and (timed_out or task is None or retries_on(task, exc, error))
    ):
        job.mark_retrying(now, retry_delay(job, task, failures))
        return "retry"
    job.mark_failed(None, now)
    return "fail"


def retries_on(task: Task[Any], exc: BaseException | None, error: JobError) -> bool:
    """Whether the task's ``retry_on``/``dont_retry_on`` let this error be retried.
    An error raised in a pool child stands in for its class, which lives
    there: it is matched by its class's name."""

    def matches(classes: tuple[type[BaseException], ...]) -> bool:
        if exc is not None and isinstance(exc, classes):
            return True
        return error.type in {c.__qualname__ for c in classes}

    if task.dont_retry_on and matches(task.dont_retry_on):
        return False
    return not task.retry_on or matches(task.retry_on)


def retry_delay(job: Job, task: Task[Any] | None, failures: int) -> float:
    """Seconds before the next attempt: ``retry_delay_secs``, or with the task's
    ``retry_backoff`` the first delay doubled after each failure up to
    ``retry_backoff_max``, drawn between half and all of it with ``retry_jitter``."""
    options = None if task is None else task.options
    if options is None or options.retry_backoff is False:
        return job.retry_delay_secs
    first = (job.retry_delay_secs or 1.0) if options.retry_backoff is True else float(options.retry_backoff)
    delay = min(options.retry_backoff_max, first * 2.0 ** (failures - 1))
    return random.uniform(delay / 2, delay) if options.retry_jitter else delay
