"""The options of a task (``@task(...)``, ``task.with_options(...)``): one model that
task, job, discovery's manifest and the CLI share. Re-exported by :mod:`nuvom.job`."""

from __future__ import annotations

from typing import Any

from nuvom._records import Executor, TimeoutPolicy
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DEFAULT_QUEUE", "TaskOptions"]

#: The queue of jobs whose task names none, and the one a worker serves unless told.
DEFAULT_QUEUE = "default"
# Queue names end up in keys, file names and SQL values: kept to a safe alphabet.
_QUEUE_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"
_RATE = r"^[1-9][0-9]{0,8}/[smh]$"
_UNIT_SECS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class TaskOptions(BaseModel):
    """How a task's jobs run: the options of ``@task(...)``, recorded on each job
    (``retries`` as ``Job.max_retries``) and in discovery's manifest.

    ``None`` for ``retry_delay_secs`` means the app's default
    (``NUVOM_RETRY_DELAY_SECS``), as in the earlier nuvom; a single string for
    ``tags`` is one tag; ``category`` (the earlier option) becomes a tag.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Strict: "3" for retries is a mistake to report, not a value to coerce.
    retries: int = Field(0, ge=0, le=1_000_000, strict=True)
    retry_delay_secs: float | None = Field(None, ge=0, le=30 * 86_400, allow_inf_nan=False, strict=True)
    timeout_secs: float | None = Field(None, gt=0, le=7 * 86_400, allow_inf_nan=False, strict=True)
    timeout_policy: TimeoutPolicy | None = None
    store_result: bool = Field(True, strict=True)
    tags: tuple[str, ...] = ()
    description: str | None = None
    #: ``None``: ``async def`` tasks run on the event loop, others as the
    #: worker's ``NUVOM_EXECUTOR`` says (threads by default).
    executor: Executor | None = None
    #: The named queue its jobs go to; a worker serves the queues it is given
    #: (``nuvom runworker --queues``; ``default`` alone unless told).
    queue: str = Field(DEFAULT_QUEUE, pattern=_QUEUE_NAME, strict=True)
    #: Within a queue, jobs of higher priority are claimed first (FIFO among equals).
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, strict=True)
    #: At most one queued-or-running job per (task, arguments): a second
    #: ``.delay()`` with the same arguments returns the job already there.
    unique: bool = Field(False, strict=True)
    #: ``"100/m"``: at most 100 starts a minute across every worker of the store
    #: (``/s``, ``/m``, ``/h``); jobs over the limit wait in the queue, holding no slot.
    rate_limit: str | None = Field(None, pattern=_RATE)
    #: Exponential back-off between retries: ``True`` doubles ``retry_delay_secs``
    #: (1 s if that is 0) after each failure; a number is the first delay.
    retry_backoff: bool | float = False
    #: The longest back-off delay.
    retry_backoff_max: float = Field(600.0, gt=0, le=30 * 86_400, allow_inf_nan=False, strict=True)
    #: With back-off, each delay is drawn between half of it and all of it, so
    #: that jobs failing together do not retry together.
    retry_jitter: bool = Field(True, strict=True)

    @field_validator("retry_backoff")
    @classmethod
    def _backoff(cls, value: bool | float) -> bool | float:
        if not isinstance(value, bool) and not (0 < value <= 30 * 86_400):
            raise ValueError("must be True, False or a first delay in seconds (over 0, at most 30 days)")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _one_tag(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _category_is_a_tag(cls, data: Any) -> Any:
        # The earlier nuvom's `category=` grouped tasks; a tag does that now.
        if isinstance(data, dict) and "category" in data:
            data = dict(data)
            category = data.pop("category")
            if category is not None:
                tags = data.get("tags") or ()
                data["tags"] = [*((tags,) if isinstance(tags, str) else tags), str(category)]
        return data

    def job_fields(self, default_retry_delay_secs: float = 0.0) -> dict[str, Any]:
        """The options as :class:`Job` fields."""
        return {
            "max_retries": self.retries,
            "retry_delay_secs": default_retry_delay_secs if self.retry_delay_secs is None else self.retry_delay_secs,
            "timeout_secs": self.timeout_secs,
            "timeout_policy": self.timeout_policy,
            "store_result": self.store_result,
            "tags": list(self.tags),
            "executor": self.executor,
            "queue": self.queue,
            "priority": self.priority,
        }

    def rate(self) -> tuple[int, float] | None:
        """``rate_limit`` as (starts, per seconds), or ``None``."""
        if self.rate_limit is None:
            return None
        count, _, unit = self.rate_limit.partition("/")
        return int(count), _UNIT_SECS[unit]
