"""The ``@task`` decorator and :class:`Task`: a function plus how to run it."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar, overload

from nuvom import serialization
from nuvom.errors import SerializationError
from nuvom.job import Job, JobStatus, TimeoutPolicy, new_job_id
from nuvom.registry import get_registry

__all__ = ["Task", "task"]

R = TypeVar("R")
_POLICIES = ("fail", "retry", "ignore")


class Task(Generic[R]):
    """A decorated function. Calling it runs the function here and now;
    ``.delay()`` and ``.map()`` queue jobs for a worker."""

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay_secs: float = 0.0,
        timeout_secs: float | None = None,
        timeout_policy: TimeoutPolicy | None = None,
        store_result: bool = True,
        tags: Sequence[str] = (),
        description: str | None = None,
        before_job: Callable[[Job], Any] | None = None,
        after_job: Callable[[Job, Any], Any] | None = None,
        on_error: Callable[[Job, BaseException], Any] | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"@task {fn.__name__}: retries must be >= 0, got {retries}")
        if retry_delay_secs < 0:
            raise ValueError(f"@task {fn.__name__}: retry_delay_secs must be >= 0")
        if timeout_secs is not None and timeout_secs <= 0:
            raise ValueError(f"@task {fn.__name__}: timeout_secs must be > 0 or None")
        if timeout_policy is not None and timeout_policy not in _POLICIES:
            raise ValueError(f"@task {fn.__name__}: timeout_policy must be one of {_POLICIES}, got {timeout_policy!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.retries = retries
        self.retry_delay_secs = float(retry_delay_secs)
        self.timeout_secs = None if timeout_secs is None else float(timeout_secs)
        self.timeout_policy = timeout_policy
        self.store_result = store_result
        self.tags = list(tags)
        self.description = description if description is not None else _first_line(fn.__doc__)
        self.before_job = before_job
        self.after_job = after_job
        self.on_error = on_error
        self.path = f"{fn.__module__}:{fn.__qualname__}"
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.path})>"

    # -- queueing -------------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> Job:
        """Queue one call; returns the :class:`Job` (``job.get()`` waits for it)."""
        from nuvom.backends import get_queue_backend

        job = self.make_job(list(args), kwargs)
        get_queue_backend().enqueue(job)
        return job

    def map(self, items: Iterable[Any]) -> list[Job]:
        """Queue one job per item, in one backend round trip.

        An item is a tuple (or list) of positional arguments, a dict of keyword
        arguments, or any other value as the single positional argument.
        """
        from nuvom.backends import get_queue_backend

        jobs = []
        for item in items:
            if isinstance(item, dict):
                jobs.append(self.make_job([], item))
            elif isinstance(item, (tuple, list)):
                jobs.append(self.make_job(list(item), {}))
            else:
                jobs.append(self.make_job([item], {}))
        if jobs:
            get_queue_backend().enqueue_many(jobs)
        return jobs

    def make_job(self, args: list[Any], kwargs: dict[str, Any]) -> Job:
        """Build (and check) a job for this task without queueing it."""
        from nuvom.config import get_settings

        try:
            size = len(serialization.dumps([args, kwargs]))
        except SerializationError as exc:
            raise SerializationError(f"task {self.name!r}: {_which_argument(args, kwargs)} {exc}") from None
        limit = get_settings().max_payload_bytes
        if size > limit:
            raise SerializationError(
                f"task {self.name!r}: arguments are {size} bytes encoded, over the limit of {limit} "
                "(NUVOM_MAX_PAYLOAD_BYTES); store large data in a file and pass its path"
            )
        return Job.trusted(
            {
                "id": new_job_id(),
                "func_name": self.name,
                "task_path": self.path,
                "args": args,
                "kwargs": kwargs,
                "status": JobStatus.PENDING,
                "attempts": 0,
                "max_retries": self.retries,
                "retry_delay_secs": self.retry_delay_secs,
                "timeout_secs": self.timeout_secs,
                "timeout_policy": self.timeout_policy,
                "store_result": self.store_result,
                "tags": list(self.tags),
                "created_at": time.time(),
                "not_before": None,
                "started_at": None,
                "finished_at": None,
                "worker_id": None,
                "result": None,
                "error": None,
                "history": [],
                "retry_of": None,
            }
        )


def _which_argument(args: list[Any], kwargs: dict[str, Any]) -> str:
    for i, value in enumerate(args):
        try:
            serialization.dumps(value)
        except SerializationError:
            return f"positional argument {i} ({type(value).__name__}):"
    for key, value in kwargs.items():
        try:
            serialization.dumps(value)
        except SerializationError:
            return f"keyword argument {key!r} ({type(value).__name__}):"
    return "arguments:"


def _first_line(doc: str | None) -> str | None:
    if not doc:
        return None
    return doc.strip().splitlines()[0].strip() or None


@overload
def task(fn: Callable[..., R], /) -> Task[R]: ...
@overload
def task(
    *,
    name: str | None = ...,
    retries: int = ...,
    retry_delay_secs: float = ...,
    timeout_secs: float | None = ...,
    timeout_policy: TimeoutPolicy | None = ...,
    store_result: bool = ...,
    tags: Sequence[str] = ...,
    description: str | None = ...,
    before_job: Callable[[Job], Any] | None = ...,
    after_job: Callable[[Job, Any], Any] | None = ...,
    on_error: Callable[[Job, BaseException], Any] | None = ...,
) -> Callable[[Callable[..., R]], Task[R]]: ...


def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make a function a nuvom task: ``@task`` or ``@task(retries=2, ...)``."""

    def wrap(f: Callable[..., Any]) -> Task[Any]:
        t: Task[Any] = Task(f, **options)
        get_registry().register(t)
        return t

    return wrap(fn) if fn is not None else wrap
