"""The running job's own context: :func:`current_job`, re-exported by :mod:`nuvom.job`.

Set by the worker around each attempt, in the thread, the event loop task or
the pool child that runs it (a context variable: concurrent async jobs on one
loop each see their own).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nuvom.job import Job

__all__ = ["JobContext", "current_job"]


class JobContext:
    """What a running task knows of its job.

    ``id``, ``task``, ``attempt`` (1 for the first run), ``retries_left`` (how
    many more attempts a failure may have), ``queue``, ``schedule_key`` (the
    schedule that queued it, or ``None``), ``tags`` and ``deadline`` (epoch
    seconds by which it must end, its timeout). ``cancelled`` turns true when
    someone cancels the job while it runs (``nuvom cancel job``,
    ``nuvom.sdk.cancel_job``): a thread task should look at it between steps
    and return; async tasks are cancelled at their next ``await`` and pool
    children are killed, so they need not look.
    """

    __slots__ = (
        "_cancelled",
        "_job",
        "_retries_left",
        "_tags",
        "attempt",
        "deadline",
        "id",
        "queue",
        "schedule_key",
        "task",
    )
    _FIELDS = ("id", "task", "attempt", "retries_left", "queue", "schedule_key", "tags", "deadline")

    def __init__(
        self,
        *,
        id: str,
        task: str,
        attempt: int,
        retries_left: int,
        queue: str,
        schedule_key: str | None,
        tags: list[str],
        deadline: float,
    ) -> None:
        self.id, self.task, self.attempt, self.queue = id, task, attempt, queue
        self.schedule_key, self.deadline = schedule_key, deadline
        self._retries_left: int | None = retries_left
        self._tags: list[str] | None = tags
        self._job: Job | None = None
        self._cancelled = False

    @classmethod
    def of(cls, job: Job, deadline: float) -> JobContext:
        # Made for every attempt, read by few tasks: what costs more than a
        # field copy (counting failures, copying tags) waits until it is asked for.
        context = cls.__new__(cls)
        context.id, context.task, context.attempt = job.id, job.func_name, job.attempts
        context.queue, context.schedule_key, context.deadline = job.queue, job.schedule_key, deadline
        context._retries_left = context._tags = None
        context._job = job
        context._cancelled = False
        return context

    @property
    def retries_left(self) -> int:
        if self._retries_left is None:
            assert self._job is not None
            failures = sum(1 for a in self._job.history if a.outcome in ("error", "timeout"))
            self._retries_left = max(0, self._job.max_retries - failures)
        return self._retries_left

    @property
    def tags(self) -> list[str]:
        if self._tags is None:
            assert self._job is not None
            self._tags = list(self._job.tags)
        return self._tags

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Set :attr:`cancelled` (the worker's side)."""
        self._cancelled = True

    def to_dict(self) -> dict[str, object]:
        """Its fields as plain values (sent to a pool child)."""
        return {name: getattr(self, name) for name in self._FIELDS}

    def __repr__(self) -> str:
        return f"<JobContext {self.id} ({self.task}) attempt {self.attempt}>"


_CURRENT: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("nuvom_current_job", default=None)


def current_job() -> JobContext:
    """The context of the job this code runs in (inside a task run by a worker,
    or by ``run_job``/an eager app). Outside of one it raises ``RuntimeError``."""
    context = _CURRENT.get()
    if context is None:
        raise RuntimeError("current_job() was called outside a running job: call it inside a task")
    return context


def enter(context: JobContext | None) -> contextvars.Token[JobContext | None]:
    """Make ``context`` the current job's (the worker's side); returns the token to :func:`leave` with."""
    return _CURRENT.set(context)


def leave(token: contextvars.Token[JobContext | None]) -> None:
    _CURRENT.reset(token)
