"""The :class:`Job`: one call of a task, from ``.delay()`` to its stored outcome.

One model serves the queue (what to run), the result backend (what happened)
and the SDK (what a user reads back), so there is a single shape to learn and
to store. Its state changes only through the ``mark_*`` methods below, which
the engine and every backend call; :class:`TaskOptions` is the one model of a
task's options (``@task``, the job's fields, discovery's manifest, the CLI).
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from nuvom import _default, serialization
from nuvom._context import JobContext, current_job
from nuvom._options import DEFAULT_QUEUE, TaskOptions
from nuvom._records import (
    _ATTEMPT_FIELDS_SET,
    _EXECUTORS,
    _SET_PRIVATE,
    _STATUS_BY_VALUE,
    _TIMEOUT_POLICIES,
    TERMINAL_STATUSES,
    Attempt,
    Executor,
    Flow,
    JobError,
    JobStatus,
    TimeoutPolicy,
    _attempt_dict,
    _built,
    _error_dict,
    _exact_attempt,
    _exact_error,
    _one_of,
)
from nuvom.errors import InvalidJobId, JobFailed, SerializationError
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, model_validator

if TYPE_CHECKING:
    from nuvom._task import Task
    from nuvom.app import App

__all__ = [
    "DEFAULT_QUEUE",
    "LEASE_FACTOR",
    "LEASE_MARGIN_SECS",
    "TERMINAL_STATUSES",
    "Attempt",
    "Executor",
    "Flow",
    "Job",
    "JobContext",
    "JobError",
    "JobStatus",
    "TaskOptions",
    "TimeoutPolicy",
    "current_job",
    "effective_timeout",
    "lease_secs_for",
    "new_job_id",
    "validate_job_id",
]


# Ids are generated as 32 hex digits, but ids given by users or other tools are
# accepted as long as they cannot name a path: letters, digits, '-' and '_'.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    """32 hex digits: the time in microseconds (13 digits), then 76 random bits.

    Ids that grow with time are appended at the end of every index keyed by
    id (SQLite's and PostgreSQL's B-trees): random ids land on a different
    page each, and a transaction storing many jobs wrote one page per job
    (bench/NOTES.md has the measurement). 76 random bits per microsecond keep
    ids unguessable and unique across processes and hosts."""
    return f"{time.time_ns() // 1000:013x}{os.urandom(10).hex()[:19]}"


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

    # The app the job was queued through: job.get() waits on its results.
    _app: App | None = PrivateAttr(default=None)

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
    executor: Executor | None = None
    created_at: float = Field(default_factory=time.time)
    not_before: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    result: Any = None
    error: JobError | None = None
    history: list[Attempt] = Field(default_factory=list)
    retry_of: str | None = None
    #: The key of the schedule whose tick queued this job (``None``: queued by a call).
    schedule_key: str | None = None
    #: The trace context of the span that queued the job (W3C ``traceparent``,
    #: ``tracestate``), with OpenTelemetry configured (:mod:`nuvom._tracing`).
    trace: dict[str, str] | None = None
    #: The named queue it waits in (``@task(queue=...)``).
    queue: str = DEFAULT_QUEUE
    #: Claimed before jobs of lower priority of its queue.
    priority: int = 0
    #: At most one queued-or-running job holds this key (``@task(unique=True)``,
    #: ``task.with_options(unique_key=...)``).
    unique_key: str | None = None
    #: Its place in a workflow: the jobs it waits for (:mod:`nuvom.workflow`).
    flow: Flow | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any, info: ValidationInfo) -> Any:
        """Jobs built in code: the earlier name ``retries`` means ``max_retries``,
        and any other unknown field is an error (it would be silently dropped).
        Stored records (``from_bytes``) may carry fields of newer versions."""
        if not isinstance(data, dict) or (info.context or {}).get("stored"):
            return data
        if "retries" in data:
            data = dict(data)
            data.setdefault("max_retries", data.pop("retries"))
        unknown = sorted(set(data) - _ALL_FIELDS)
        if unknown:
            raise ValueError(
                f"Job has no field(s) {', '.join(map(repr, unknown))}; known fields: {', '.join(sorted(_ALL_FIELDS))}"
            )
        return data

    @classmethod
    def trusted(cls, values: dict[str, Any], app: App | None = None) -> Job:
        """Build a job from a complete dict of known-good field values, skipping
        validation. ``.delay()``/``.map()`` use it: pydantic's ``model_construct``
        was measured at ~11 us a job, most of the cost of ``.map()``."""
        return cls._trusted_shared(values, {"_app": app})

    @classmethod
    def _trusted_shared(cls, values: dict[str, Any], private: dict[str, Any]) -> Job:
        """:meth:`trusted` with a private dict that may be shared by many jobs
        (``.delay()`` passes one per task and app: one object fewer per job for
        the garbage collector to scan). Nothing writes into it: :meth:`bind`
        replaces it."""
        # One fields set shared by every such job: it holds every field already, so
        # pydantic's only change to it (add() on assignment) changes nothing; a
        # set of its own measured ~0.4 us and one more object for the collector.
        return _built(cls, values, _ALL_FIELDS_SET, private)

    def bind(self, app: App) -> Job:
        """Tie the job to the app it was queued through or read from."""
        # A new private dict, not a write into it: it may be shared (_trusted_shared).
        _SET_PRIVATE(self, {"_app": app})
        return self

    def set_fields(self, **values: Any) -> None:
        """Assign several fields without validation. The engine's hot path uses it:
        pydantic's ``__setattr__`` measured at ~2 us a field, most of the engine's
        per-job cost on the memory backend."""
        self.__dict__.update(values)

    # -- encoding -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The job as msgpack. Values (args, kwargs, result) are packed as they
        are, never through a JSON rendering, so every value the serializer
        accepts comes back exactly: bytes stay bytes, ``nan``/``inf`` stay
        floats, integer keys stay integers."""
        return serialization.dumps(self.to_dict(), what=f"job {self.id}")

    def to_dict(self) -> dict[str, Any]:
        """The job's fields as plain msgpack-ready values (status as its name,
        errors and attempts as dicts); values are not copied."""
        values = self.__dict__
        out = {name: values[name] for name in _ALL_FIELDS_ORDER}
        status = out["status"]
        out["status"] = status.value if isinstance(status, JobStatus) else status
        error = out["error"]
        if error is not None:
            out["error"] = _error_dict(error)
        out["history"] = [_attempt_dict(a) for a in out["history"]]
        flow = out["flow"]
        if flow is not None and not isinstance(flow, dict):
            out["flow"] = flow.model_dump()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """The job of a dict written by :meth:`to_dict`, validated as
        ``model_validate`` validates (a bad value or an unknown field raises
        pydantic's ``ValidationError``). The earlier nuvom's ``to_dict()`` is
        read too: its ``next_retry_at`` is ``not_before``, a string ``error``
        is the message, and its keys this version derives or does not keep
        (``retries_left``, ``scheduled``, ``hooks``, a ``priority`` that is not an
        integer) are ignored."""
        values = dict(data)
        for key in ("retries_left", "scheduled", "hooks"):
            values.pop(key, None)
        if not isinstance(values.get("priority", 0), int):
            values.pop("priority")  # the earlier nuvom's, of another kind; this version's is an int
        if "next_retry_at" in values:
            not_before = values.pop("next_retry_at")
            values.setdefault("not_before", not_before)
        if isinstance(values.get("error"), str):
            values["error"] = {"type": "Error", "message": values["error"]}
        return cls.model_validate(values)

    @classmethod
    def from_bytes(cls, data: bytes) -> Job:
        """Decode a stored job; anything malformed raises :class:`SerializationError`.

        A record of exactly the shape :meth:`to_bytes` writes (every field, each
        of its exact type) is built without pydantic: its validation measured
        ~10 us a job, most of the cost of reading a result back or claiming a
        job. Anything else (older or newer records, coercible values, garbage)
        goes through ``model_validate`` as before, so what is accepted, and the
        error for what is not, do not depend on the fast path."""
        raw = serialization.loads(data, what="stored job")
        if not isinstance(raw, dict):
            raise SerializationError(f"stored job is a {type(raw).__name__}, not a mapping")
        if _exact_record(raw):
            return cls.trusted(raw)
        try:
            return cls.model_validate(raw, context={"stored": True})
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

    # -- the lifecycle: every state change of a job goes through these ---------
    def mark_claimed(self, claims: int = 1) -> None:
        """A worker claimed it: this claim is the job's next attempt. In storage
        it counts once the job starts (``BaseJobQueue.mark_started``), so a run
        lost with its worker is counted and a claim that never started is not."""
        values = self.__dict__
        values["status"] = JobStatus.RUNNING
        values["attempts"] += claims

    def mark_handed_back(self) -> None:
        """Claimed but never started (a stopping worker): the claim is undone."""
        self.__dict__.update(
            status=JobStatus.RETRYING if self.history else JobStatus.PENDING, attempts=self.attempts - 1
        )

    def mark_lost_runs(self, now: float) -> int:
        """Record runs counted in storage that never reached an outcome (their
        worker died after starting them) as ``lost`` attempts; returns how many
        runs have been lost in all."""
        history = self.history
        for _ in range(self.attempts - 1 - len(history)):
            history.append(Attempt(number=len(history) + 1, started_at=self.started_at or now, outcome="lost"))
        return sum(1 for a in history if a.outcome == "lost")

    def mark_started(self, worker_id: str | None, now: float, executor: Executor | None = None) -> Attempt:
        """An attempt begins; returns it (recorded in ``history`` when it ends)."""
        values = self.__dict__
        values["started_at"] = now
        values["worker_id"] = worker_id
        number = values["attempts"]
        if type(number) is int and type(now) is float and (worker_id is None or type(worker_id) is str):
            # Every job builds one: pydantic's validation of these known-good values
            # measured ~3 us of the engine's per-job cost. The fields set is shared, as for Job.trusted.
            fields = {
                "number": number,
                "started_at": now,
                "finished_at": None,
                "outcome": "success",
                "error": None,
                "executor": executor,
                "worker_id": worker_id,
            }
            return _built(Attempt, fields, _ATTEMPT_FIELDS_SET)
        return Attempt(number=number, started_at=now, executor=executor, worker_id=worker_id)

    def mark_succeeded(self, attempt: Attempt, result: Any, now: float) -> None:
        # The attempt's and the job's dicts directly: pydantic's __setattr__ measured ~1 us a field.
        attempt.__dict__["finished_at"] = now
        values = self.__dict__
        values["history"].append(attempt)
        values["status"] = JobStatus.SUCCESS
        values["finished_at"] = now
        values["error"] = None
        values["result"] = result if values["store_result"] else None

    def mark_attempt_failed(self, attempt: Attempt, error: JobError, *, timed_out: bool, now: float) -> int:
        """An attempt raised or timed out; returns the failures so far (lost runs
        do not count: only ``retries`` failures may be retried)."""
        attempt.__dict__.update(
            finished_at=attempt.finished_at or now, outcome="timeout" if timed_out else "error", error=error
        )
        self.history.append(attempt)
        self.__dict__["error"] = error
        return sum(1 for a in self.history if a.outcome in ("error", "timeout"))

    def mark_retrying(self, now: float, delay: float | None = None) -> None:
        """Queued again for another attempt after ``delay`` (default ``retry_delay_secs``)."""
        self.__dict__.update(
            status=JobStatus.RETRYING, not_before=now + (self.retry_delay_secs if delay is None else delay)
        )

    def mark_interrupted(self) -> None:
        """Still running when its worker stopped: the attempt counts, the job goes back."""
        self.__dict__["status"] = JobStatus.RETRYING

    def mark_failed(self, error: JobError | None, now: float, worker_id: str | None = None) -> None:
        values: dict[str, Any] = {"status": JobStatus.FAILED, "finished_at": now}
        if error is not None:
            values["error"] = error
        if worker_id is not None:
            values["worker_id"] = worker_id
        self.__dict__.update(values)

    # -- waiting --------------------------------------------------------------
    # -- workflows (nuvom.workflow) -------------------------------------------
    def then(self, task: Task[Any], *args: Any, **kwargs: Any) -> Job:
        """Queue a call of ``task`` that runs once this job has succeeded, with
        its result as the first argument: ``add.delay(1, 2).then(mul, 10)``
        runs ``mul(3, 10)``. If this job fails for good, that call fails too
        (``DependencyFailed``) and never runs. Returns the new job (``WAITING``
        until this one has finished); chain them: ``a.then(b).then(c)``."""
        return task._after([self], list(args), kwargs, Flow(parents=[self.id], receives="result"))

    def on_failure(self, task: Task[Any], *args: Any, **kwargs: Any) -> Job:
        """Queue a call of ``task`` that runs only if this job fails for good
        (retries used up), with its error as the first argument (a dict:
        ``job_id``, ``type``, ``message``, ``traceback``); if this job succeeds
        that call is skipped (recorded ``FAILED``, error type ``Skipped``)."""
        return task._after([self], list(args), kwargs, Flow(parents=[self.id], run_if="failed", receives="error"))

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises :class:`~nuvom.errors.JobFailed` (with the remote exception type,
        message and traceback) if it failed, and :class:`TimeoutError` if no
        outcome is stored within ``timeout`` seconds (``None`` waits forever).
        It waits on the results of the app the job was queued through.
        """
        app = self._bound_app()
        # Read with the results of other jobs queued here, when the backend reads many at once.
        gather = app._read_ahead()
        record = None if gather is None else gather.take(self.id)
        if record is None:
            record = app.results.wait(self.id, timeout)
        if record is None:
            raise TimeoutError(app.no_outcome_message(self, timeout))
        return self._take_outcome(record)

    async def aget(self, timeout: float | None = None) -> Any:
        """:meth:`get` for ``async`` code: waits without blocking the event loop
        (and without holding a thread per waiting job)."""
        app = self._bound_app()
        record = await app.results.wait_async(self.id, timeout)
        if record is None:
            raise TimeoutError(app.no_outcome_message(self, timeout))
        return self._take_outcome(record)

    def _bound_app(self) -> App:
        # Read from pydantic's private dict directly: `self._app` goes through
        # BaseModel.__getattr__, measured 2.6 of the 3.7 us of a get() of a
        # finished job on the memory backend.
        private = self.__pydantic_private__
        app = private.get("_app") if private else None
        return app or _default.current()

    def _take_outcome(self, record: Job) -> Any:
        """Make this job the stored record; its result, or JobFailed."""
        if record is not self:  # the memory backend stores the very object queued
            self.__dict__.update(record.__dict__)
        if record.status is JobStatus.FAILED:
            err = record.error or JobError(type="Error", message="unknown failure")
            raise JobFailed(record.id, err.type, err.message, err.traceback)
        return record.result


_ALL_FIELDS = frozenset(Job.model_fields)
_ALL_FIELDS_ORDER = tuple(Job.model_fields)
_ALL_FIELDS_SET = set(_ALL_FIELDS)


def _exact_record(raw: dict[Any, Any]) -> bool:
    """Check that ``raw`` is a record of exactly the shape ``Job.to_dict`` gives,
    and turn its status, error and attempts into their objects in place. On
    ``False`` the caller validates ``raw``: an attempt's error may already be a
    :class:`JobError` by then, which validation takes as it is."""
    if raw.keys() != _ALL_FIELDS:
        return False
    kwargs, tags = raw["kwargs"], raw["tags"]
    status = _STATUS_BY_VALUE.get(raw["status"]) if type(raw["status"]) is str else None
    if not (
        status is not None
        and type(raw["id"]) is str
        and type(raw["func_name"]) is str
        and type(raw["args"]) is list
        and type(kwargs) is dict
        and (not kwargs or all(type(key) is str for key in kwargs))
        and type(raw["attempts"]) is int
        and type(raw["max_retries"]) is int
        and type(raw["retry_delay_secs"]) is float
        and type(raw["created_at"]) is float
        and type(raw["store_result"]) is bool
        and type(tags) is list
        and (not tags or all(type(tag) is str for tag in tags))
        and _one_of(raw["timeout_policy"], _TIMEOUT_POLICIES)
        and _one_of(raw["executor"], _EXECUTORS)
        and type(raw["history"]) is list
        # Spelled out: generator expressions here measured slower than the checks.
        and (raw["task_path"] is None or type(raw["task_path"]) is str)
        and (raw["worker_id"] is None or type(raw["worker_id"]) is str)
        and (raw["retry_of"] is None or type(raw["retry_of"]) is str)
        and (raw["schedule_key"] is None or type(raw["schedule_key"]) is str)
        and (raw["trace"] is None or type(raw["trace"]) is dict)
        and type(raw["queue"]) is str
        and type(raw["priority"]) is int
        and (raw["unique_key"] is None or type(raw["unique_key"]) is str)
        # A workflow job's flow is validated (the rare case: pydantic builds it).
        and raw["flow"] is None
        and (raw["timeout_secs"] is None or type(raw["timeout_secs"]) is float)
        and (raw["not_before"] is None or type(raw["not_before"]) is float)
        and (raw["started_at"] is None or type(raw["started_at"]) is float)
        and (raw["finished_at"] is None or type(raw["finished_at"]) is float)
    ):
        return False
    error = raw["error"]
    if error is not None:
        error = _exact_error(error)
        if error is None:
            return False
    history = []
    for item in raw["history"]:
        attempt = _exact_attempt(item)
        if attempt is None:
            return False
        history.append(attempt)
    raw["status"], raw["error"], raw["history"] = status, error, history
    return True
