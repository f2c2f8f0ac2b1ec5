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

import traceback
from typing import Literal

from nuvom.errors import WorkerLost
from nuvom.job import Attempt, Job, JobError, TimeoutPolicy, effective_timeout, lease_secs_for

__all__ = [
    "MAX_LOST_RUNS",
    "Verdict",
    "error_of",
    "fail_attempt",
    "lost_too_often",
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


def fail_attempt(
    job: Job, attempt: Attempt, error: JobError, *, timed_out: bool, now: float, default_policy: TimeoutPolicy
) -> Verdict:
    """Record a failed (or timed-out) attempt and decide: ``"retry"`` (the job
    is marked to wait ``retry_delay_secs``; no thread waits for it) or
    ``"fail"`` (marked ``FAILED``). Lost runs do not use up retries: only
    failures and timeouts do, and a timeout only under the ``retry`` policy."""
    failures = job.mark_attempt_failed(attempt, error, timed_out=timed_out, now=now)
    if failures <= job.max_retries and (not timed_out or timeout_policy_of(job, default_policy) == "retry"):
        job.mark_retrying(now)
        return "retry"
    job.mark_failed(None, now)
    return "fail"
