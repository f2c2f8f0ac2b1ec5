"""Rows of the queue as the statements take them and give them back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from nuvom.errors import SerializationError
from nuvom.job import Job, JobError, JobStatus
from nuvom.postgres._sql import byteas, floats, ints, texts

__all__ = ["decode", "enqueue_arrays", "message", "unreadable"]


def enqueue_arrays(jobs: Sequence[Job]) -> dict[str, Any]:
    return {
        "id": texts([job.id for job in jobs]),
        "func_name": texts([job.func_name for job in jobs]),
        "queue": texts([job.queue for job in jobs]),
        "priority": ints([job.priority for job in jobs]),
        "due_at": floats([job.due_at for job in jobs]),
        "attempts": ints([job.attempts for job in jobs]),
        "timeout": floats([job.timeout_secs for job in jobs]),
        "created_at": floats([job.created_at for job in jobs]),
        "payload": byteas([job.to_bytes() for job in jobs]),
    }


def decode(job_id: str, payload: bytes) -> Job:
    """The job of a queue row; :class:`SerializationError` saying what is wrong
    if the row cannot be run as stored."""
    job = Job.from_bytes(bytes(payload))
    if job.id != job_id:
        # Run, it would be settled under the other id and this row never removed.
        raise SerializationError(f"the row of job {job_id!r} holds job {job.id!r}")
    return job


def unreadable(job_id: str, func_name: str, attempts: int, created_at: float, exc: Exception, worker: str) -> Job:
    """The quarantine record of a row that cannot be run: FAILED with the reason."""
    now = time.time()
    return Job(
        id=job_id,
        func_name=func_name,
        status=JobStatus.FAILED,
        attempts=attempts,
        created_at=created_at,
        finished_at=now,
        worker_id=worker,
        error=JobError(
            type="SerializationError",
            message=f"the job's queue row is corrupt and was quarantined, not run: {exc}",
        ),
    )


def message(job: Job) -> str:
    return job.error.message if job.error else ""
