"""The records of a job's life: its status, its errors and its attempts, and
the fast building of models from values already checked.

Public names are re-exported by :mod:`nuvom.job`, where users find them.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

__all__ = [
    "TERMINAL_STATUSES",
    "Attempt",
    "Executor",
    "Flow",
    "JobError",
    "JobStatus",
    "TimeoutPolicy",
]

TimeoutPolicy = Literal["fail", "retry", "ignore"]
#: Where a job runs: a worker thread, the worker's event loop (``async def``
#: tasks) or a child process (hard timeouts, no shared GIL).
Executor = Literal["thread", "async", "process"]


class JobStatus(str, Enum):
    WAITING = "WAITING"  # queued behind other jobs of a workflow that have not finished
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


class Flow(BaseModel):
    """Where a job stands in a workflow (:mod:`nuvom.workflow`): the jobs it
    waits for, when it runs once they have all finished, and what it receives.

    ``run_if``: ``"succeeded"`` (every parent succeeded; a failed one fails it
    with ``DependencyFailed``) or ``"failed"`` (an ``on_failure`` branch: it
    runs only if a parent failed for good, and is skipped otherwise).
    ``receives``: ``"result"`` (its one parent's result as its first
    argument, ``job.then``), ``"results"`` (the parents' results as a list, in
    order, ``group(...).then``), ``"error"`` (the failed parent's error as a
    dict, ``on_failure``) or ``"nothing"`` (``depends_on``)."""

    parents: list[str] = Field(min_length=1, max_length=10_000)
    run_if: Literal["succeeded", "failed"] = "succeeded"
    receives: Literal["nothing", "result", "results", "error"] = "nothing"


class Attempt(BaseModel):
    """One run of a job: when it ran and how it ended."""

    number: int
    started_at: float
    finished_at: float | None = None
    outcome: Literal["success", "error", "timeout", "lost"] = "success"
    error: JobError | None = None
    #: Which executor ran it (``None`` in records written before executors existed).
    executor: Executor | None = None
    #: The worker that ran it (``None`` for a run lost before it started, and in older records).
    worker_id: str | None = None


# pydantic keeps these in slots of BaseModel: setting them through the slots'
# descriptors skips BaseModel.__setattr__ (measured 0.8 against 1.0 us a model).
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__
_ATTEMPT_FIELDS_SET = set(Attempt.model_fields)


def _error_dict(error: JobError | dict[str, Any]) -> dict[str, Any]:
    if isinstance(error, dict):
        return error
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _attempt_dict(attempt: Attempt | dict[str, Any]) -> dict[str, Any]:
    if isinstance(attempt, dict):
        return attempt
    return {
        "number": attempt.number,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "outcome": attempt.outcome,
        "error": None if attempt.error is None else _error_dict(attempt.error),
        "executor": attempt.executor,
        "worker_id": attempt.worker_id,
    }


# -- the fast decoding of a record as to_bytes writes it ----------------------
# Every check below accepts only what model_validate accepts and turns it into
# the same values; anything else makes _exact_record say no, and the caller
# validates. Types are compared exactly (type(v) is int, not isinstance), so
# bool never passes for int nor int for float: those cases are pydantic's.
_M = TypeVar("_M", bound=BaseModel)
_STATUS_BY_VALUE = {status.value: status for status in JobStatus}
_TIMEOUT_POLICIES: frozenset[str | None] = frozenset({None, "fail", "retry", "ignore"})
_EXECUTORS: frozenset[str | None] = frozenset({None, "thread", "async", "process"})
_OUTCOMES: frozenset[str | None] = frozenset({"success", "error", "timeout", "lost"})
_ERROR_FIELDS = frozenset(JobError.model_fields)
_ATTEMPT_FIELDS = frozenset(Attempt.model_fields)


def _built(
    cls: type[_M], values: dict[str, Any], fields_set: set[str] | None = None, private: dict[str, Any] | None = None
) -> _M:
    """A model instance holding ``values`` (already checked), built as pydantic
    would, without validation; ``fields_set`` defaults to a set of its own."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    _SET_FIELDS_SET(obj, set(values) if fields_set is None else fields_set)
    _SET_EXTRA(obj, None)
    _SET_PRIVATE(obj, private)
    return obj


def _opt_str(value: Any) -> bool:
    return value is None or type(value) is str


def _opt_float(value: Any) -> bool:
    return value is None or type(value) is float


def _one_of(value: Any, allowed: frozenset[str | None]) -> bool:
    # The type first: an unhashable value (a list) must not reach `in`.
    return (value is None or type(value) is str) and value in allowed


def _exact_error(raw: Any) -> JobError | None:
    if (
        type(raw) is dict
        and raw.keys() == _ERROR_FIELDS
        and type(raw["type"]) is str
        and type(raw["message"]) is str
        and _opt_str(raw["traceback"])
    ):
        return _built(JobError, raw)
    return None


def _exact_attempt(raw: Any) -> Attempt | None:
    if not (
        type(raw) is dict
        and raw.keys() == _ATTEMPT_FIELDS
        and type(raw["number"]) is int
        and type(raw["started_at"]) is float
        and _opt_float(raw["finished_at"])
        and _one_of(raw["outcome"], _OUTCOMES)
        and _one_of(raw["executor"], _EXECUTORS)
        and _opt_str(raw["worker_id"])
    ):
        return None
    if raw["error"] is not None:
        error = _exact_error(raw["error"])
        if error is None:
            return None
        raw["error"] = error
    return _built(Attempt, raw)
