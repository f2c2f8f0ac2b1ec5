"""Reading and steering jobs from Python: what the CLI uses too."""

from __future__ import annotations

import time

from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.job import TERMINAL_STATUSES, Job, JobStatus, new_job_id, validate_job_id

__all__ = ["get_job", "list_jobs", "queue_size", "retry_job"]


def get_job(job_id: str) -> Job | None:
    """The job's current record (status, result, error, traceback, attempts,
    timings), from the results if it finished, else from the queue; ``None``
    if no backend knows it. A malformed id raises :class:`~nuvom.errors.InvalidJobId`."""
    validate_job_id(job_id)
    record = get_result_backend().get_full(job_id)
    if record is not None:
        return record
    return get_queue_backend().get(job_id)


def retry_job(job_id: str) -> Job | None:
    """Queue a failed job again, as a new job (new id, ``retry_of`` pointing
    at the failed one) with a fresh set of retries. Returns the new job, or
    ``None`` if there is no such finished job. Only ``FAILED`` jobs are retried."""
    validate_job_id(job_id)
    record = get_result_backend().get_full(job_id)
    if record is None:
        return None
    if record.status is not JobStatus.FAILED:
        raise ValueError(f"job {job_id} is {record.status.value}, not FAILED; only failed jobs are retried")
    job = Job(
        id=new_job_id(),
        func_name=record.func_name,
        task_path=record.task_path,
        args=record.args,
        kwargs=record.kwargs,
        max_retries=record.max_retries,
        retry_delay_secs=record.retry_delay_secs,
        timeout_secs=record.timeout_secs,
        timeout_policy=record.timeout_policy,
        store_result=record.store_result,
        tags=record.tags,
        created_at=time.time(),
        retry_of=record.id,
    )
    get_queue_backend().enqueue(job)
    return job


def list_jobs(status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
    """Finished jobs, newest first; filter by ``status`` (``SUCCESS``/``FAILED``) and task name."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if status is not None:
        try:
            status = JobStatus(str(getattr(status, "value", status)).upper())
        except ValueError:
            names = ", ".join(s.value for s in TERMINAL_STATUSES)
            raise ValueError(f"unknown status {status!r}; history holds {names}") from None
        if status not in TERMINAL_STATUSES:
            raise ValueError(
                f"history holds finished jobs only (SUCCESS, FAILED); a {status.value} job is read with get_job(id)"
            )
    return get_result_backend().list_jobs(status=status, limit=limit, task=task)


def queue_size() -> int:
    """Jobs waiting in the queue."""
    return get_queue_backend().qsize()
