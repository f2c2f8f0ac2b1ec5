"""The :class:`Job`: one call of a task, from ``.delay()`` to its stored outcome.

One model serves the queue (what to run), the result backend (what happened)
and the SDK (what a user reads back), so there is a single shape to learn and
to store.
"""

from __future__ import annotations

import os
import re
import time
from enum import Enum
from typing import Any, Literal

from nuvom import serialization
from nuvom.errors import InvalidJobId, JobFailed, SerializationError
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LEASE_FACTOR",
    "LEASE_MARGIN_SECS",
    "TERMINAL_STATUSES",
    "Attempt",
    "Job",
    "JobError",
    "JobStatus",
    "TimeoutPolicy",
    "effective_timeout",
    "lease_secs_for",
    "new_job_id",
    "validate_job_id",
]

TimeoutPolicy = Literal["fail", "retry", "ignore"]

# Ids are generated as 32 hex digits, but ids given by users or other tools are
# accepted as long as they cannot name a path: letters, digits, '-' and '_'.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class JobStatus(str, Enum):
    PENDING = "PENDING"  # queued, waiting to be claimed (possibly not yet due)
    RUNNING = "RUNNING"  # claimed by a worker
    RETRYING = "RETRYING"  # an attempt failed; queued again for a later attempt
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCESS, JobStatus.FAILED})


class JobError(BaseModel):
    """An exception as it can travel between processes: names and text only."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, tb: str | None = None) -> JobError:
        try:
            message = str(exc)
        except Exception as inner:  # a broken __str__ must not break the worker
            message = f"<exception message could not be rendered: {type(inner).__name__}>"
        return cls(type=type(exc).__qualname__, message=message, traceback=tb)


class Attempt(BaseModel):
    """One run of a job: when it ran and how it ended."""

    number: int
    started_at: float
    finished_at: float | None = None
    outcome: Literal["success", "error", "timeout", "lost"] = "success"
    error: JobError | None = None


#: A claim's lease covers the job's timeout times this factor plus this margin:
#: the time a worker needs between noticing a timeout and storing its outcome,
#: with room for a loaded machine. Every backend with leases uses
#: :func:`lease_secs_for`, so the rule is stated once.
LEASE_FACTOR = 1.1
LEASE_MARGIN_SECS = 2.0


def effective_timeout(timeout_secs: float | None, default_secs: float) -> float:
    """The timeout a job runs under: its own ``timeout_secs``, else the
    configured default (``NUVOM_JOB_TIMEOUT_SECS``)."""
    return timeout_secs if timeout_secs else default_secs


def lease_secs_for(timeout_secs: float | None, *, lease_secs: float, default_timeout_secs: float) -> float:
    """How long a claim holds a job before another worker may take it:
    never shorter than ``NUVOM_LEASE_SECS``, and always long enough for the
    job's own worker to settle it after its timeout."""
    timeout = effective_timeout(timeout_secs, default_timeout_secs)
    return max(lease_secs, timeout * LEASE_FACTOR + LEASE_MARGIN_SECS)


def new_job_id() -> str:
    # 128 random bits as 32 hex digits; measured 3x cheaper than uuid4().hex.
    return os.urandom(16).hex()


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a well-formed id, else raise :class:`InvalidJobId`.

    Every id that arrives from outside is checked before it reaches a backend,
    so that ``../../etc/passwd`` is "no such job" rather than a file read.
    """
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidJobId(
            f"{job_id!r} is not a valid job id: ids are 1-64 letters, digits, '-' or '_' "
            "(copy the id printed by .delay() or `nuvom history recent`)"
        )
    return job_id


class Job(BaseModel):
    """A queued call of a task and, once run, its outcome.

    ``attempts`` counts runs that started (a claim by a worker counts, so a run
    lost with a killed worker is counted too); the job may run at most
    ``max_retries + 1`` times.
    """

    model_config = ConfigDict(validate_assignment=False, extra="ignore")

    id: str = Field(default_factory=new_job_id)
    func_name: str
    task_path: str | None = None
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    status: JobStatus = JobStatus.PENDING
    attempts: int = 0
    max_retries: int = 0
    retry_delay_secs: float = 0.0
    timeout_secs: float | None = None
    timeout_policy: TimeoutPolicy | None = None
    store_result: bool = True
    tags: list[str] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)
    not_before: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    result: Any = None
    error: JobError | None = None
    history: list[Attempt] = Field(default_factory=list)
    retry_of: str | None = None

    @classmethod
    def trusted(cls, values: dict[str, Any]) -> Job:
        """Build a job from a complete dict of known-good field values, skipping
        validation. ``.delay()``/``.map()`` use it: pydantic's ``model_construct``
        was measured at ~11 us a job, most of the cost of ``.map()``."""
        job = cls.__new__(cls)
        object.__setattr__(job, "__dict__", values)
        object.__setattr__(job, "__pydantic_fields_set__", set(_ALL_FIELDS))
        object.__setattr__(job, "__pydantic_extra__", None)
        object.__setattr__(job, "__pydantic_private__", None)
        return job

    def set_fields(self, **values: Any) -> None:
        """Assign several fields without validation. The engine's hot path uses it:
        pydantic's ``__setattr__`` measured at ~2 us a field, most of the engine's
        per-job cost on the memory backend."""
        self.__dict__.update(values)

    # -- encoding -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return serialization.dumps(self.model_dump(mode="json"), what=f"job {self.id}")

    @classmethod
    def from_bytes(cls, data: bytes) -> Job:
        """Decode a stored job; anything malformed raises :class:`SerializationError`."""
        raw = serialization.loads(data, what="stored job")
        if not isinstance(raw, dict):
            raise SerializationError(f"stored job is a {type(raw).__name__}, not a mapping")
        try:
            return cls.model_validate(raw)
        except Exception as exc:
            raise SerializationError(f"stored job is malformed: {exc}") from None

    # -- state ----------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def retries_left(self) -> int:
        return max(0, self.max_retries + 1 - self.attempts)

    @property
    def due_at(self) -> float:
        return self.not_before if self.not_before is not None else self.created_at

    # -- waiting --------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises :class:`~nuvom.errors.JobFailed` (with the remote exception type,
        message and traceback) if it failed, and :class:`TimeoutError` if no
        outcome is stored within ``timeout`` seconds (``None`` waits forever).
        """
        from nuvom.backends import get_result_backend

        record = get_result_backend().wait(self.id, timeout)
        if record is None:
            raise TimeoutError(f"job {self.id} has no outcome after {timeout} s")
        self.__dict__.update(record.__dict__)
        if record.status is JobStatus.FAILED:
            err = record.error or JobError(type="Error", message="unknown failure")
            raise JobFailed(record.id, err.type, err.message, err.traceback)
        return record.result


_ALL_FIELDS = frozenset(Job.model_fields)
