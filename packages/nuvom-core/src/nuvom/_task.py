""":class:`Task`: a function plus how to run it, bound to the app that queues it.

The decorators are :meth:`nuvom.app.App.task` and :func:`nuvom.task.task`
(the default app's).
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nuvom import _default, serialization
from nuvom.errors import SerializationError
from nuvom.job import Executor, Job, JobStatus, TaskOptions, TimeoutPolicy, new_job_id
from pydantic import ValidationError

if TYPE_CHECKING:
    from nuvom.app import App
    from nuvom.schedule import Every, Schedule

__all__ = ["Task"]

R = TypeVar("R")


# Up to this many small scalars (serialization.is_small_scalar) and no keyword
# arguments encode as [args, {}] in at most _FEW_ARGS_BYTES (two array headers,
# an empty map): .delay() skips encoding them for the size check when the limit allows.
_FEW_ARGS = 4
_FEW_ARGS_BYTES = 3 + _FEW_ARGS * serialization.SMALL_SCALAR_BYTES


class Task(Generic[R]):
    """A decorated function. Calling it runs the function here and now;
    ``.delay()`` and ``.map()`` queue jobs for a worker."""

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        app: Callable[[], App] | None = None,
        name: str | None = None,
        retries: int = 0,
        retry_delay_secs: float | None = None,
        timeout_secs: float | None = None,
        timeout_policy: TimeoutPolicy | None = None,
        store_result: bool = True,
        tags: Sequence[str] | str = (),
        description: str | None = None,
        category: str | None = None,
        before_job: Callable[..., Any] | None = None,
        after_job: Callable[..., Any] | None = None,
        on_error: Callable[..., Any] | None = None,
        schedule: str | Every | None = None,
        executor: Executor | None = None,
    ) -> None:
        try:
            self.options = TaskOptions(
                retries=retries,
                retry_delay_secs=retry_delay_secs,
                timeout_secs=timeout_secs,
                timeout_policy=timeout_policy,
                store_result=store_result,
                tags=tags,  # type: ignore[arg-type]
                description=description if description is not None else _first_line(fn.__doc__),
                category=category,  # type: ignore[call-arg]  # the earlier option: becomes a tag
                executor=executor,
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"@task {fn.__name__}: {field}={err.get('input')!r} is not valid: {err['msg']}") from None
        #: An ``async def`` function: calling the task returns its coroutine; a
        #: worker runs its jobs on its event loop unless ``executor`` says otherwise.
        self.is_async = inspect.iscoroutinefunction(fn)
        if executor == "async" and not self.is_async:
            raise ValueError(
                f"@task {fn.__name__}: executor='async' needs an `async def` function; "
                "use executor='thread' (or 'process') for a plain function"
            )
        self.fn = fn
        self.name = name or fn.__name__
        self._app = app or _default.current
        self.before_job = before_job
        self.after_job = after_job
        self.on_error = on_error
        #: ``@task(schedule=...)``: a cron expression or :func:`nuvom.schedule.every`,
        #: stored as a schedule when a worker loads the task.
        self.periodic = _check_periodic(fn.__name__, schedule)
        self.path = f"{fn.__module__}:{fn.__qualname__}"
        # The job fields every .delay() copies; built once here, not per job.
        self._job_fields = {"func_name": self.name, "task_path": self.path, **self.options.job_fields()}
        # A new job's whole field dict in its final key order: make_job copies it and
        # sets the per-call fields, measured ~2x cheaper than a 24-key dict display.
        self._job_template: dict[str, Any] = {
            "id": None,
            **self._job_fields,
            "retry_delay_secs": None,
            "args": None,
            "kwargs": None,
            "status": JobStatus.PENDING,
            "attempts": 0,
            "tags": None,
            "created_at": None,
            "not_before": None,
            "started_at": None,
            "finished_at": None,
            "worker_id": None,
            "result": None,
            "error": None,
            "history": None,
            "retry_of": None,
            "schedule_key": None,
        }
        # The private dict of the jobs made for one app, shared by them (Job._trusted_shared).
        self._private: tuple[App, dict[str, Any]] | None = None
        functools.update_wrapper(self, fn)

    # The options, by their earlier names.
    @property
    def retries(self) -> int:
        return self.options.retries

    @property
    def retry_delay_secs(self) -> float | None:
        """``None``: the app's ``NUVOM_RETRY_DELAY_SECS``."""
        return self.options.retry_delay_secs

    @property
    def timeout_secs(self) -> float | None:
        return self.options.timeout_secs

    @property
    def timeout_policy(self) -> TimeoutPolicy | None:
        return self.options.timeout_policy

    @property
    def store_result(self) -> bool:
        return self.options.store_result

    @property
    def tags(self) -> list[str]:
        return list(self.options.tags)

    @property
    def description(self) -> str | None:
        return self.options.description

    def _retry_delay(self, app: App) -> float:
        delay = self.options.retry_delay_secs
        return app.settings.retry_delay_secs if delay is None else delay

    @property
    def executor(self) -> Executor | None:
        return self.options.executor

    @property
    def app(self) -> App:
        """The app this task queues to (the default app for ``nuvom.task.task``)."""
        return self._app()

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.path})>"

    # -- queueing -------------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> Job:
        """Queue one call; returns the :class:`Job` (``job.get()`` waits for it)."""
        app = self._app()
        job = self.make_job(list(args), kwargs, app)
        app.queue.enqueue(job)
        return job

    def map(self, items: Iterable[Any]) -> list[Job]:
        """Queue one job per item, in one backend round trip.

        An item is a tuple (or list) of positional arguments, a dict of keyword
        arguments, or any other value as the single positional argument.
        """
        app = self._app()
        jobs = [self._job_of(item, app) for item in items]
        if jobs:
            app.queue.enqueue_many(jobs)
        return jobs

    def _job_of(self, item: Any, app: App) -> Job:
        """The job of one :meth:`map` item."""
        if isinstance(item, dict):
            return self.make_job([], item, app)
        if isinstance(item, (tuple, list)):
            return self.make_job(list(item), {}, app)
        return self.make_job([item], {}, app)

    def delay_in(self, connection: Any, /, *args: Any, **kwargs: Any) -> Job:
        """Queue one call inside the caller's open transaction on ``connection``
        (its own database connection: psycopg, SQLAlchemy, Django...): the job
        exists if and only if that transaction commits. Needs a queue backend
        in that database (``BaseJobQueue.enqueue_in``)."""
        app = self._app()
        job = self.make_job(list(args), kwargs, app)
        app.queue.enqueue_in(connection, [job])
        return job

    def map_in(self, connection: Any, items: Iterable[Any], /) -> list[Job]:
        """:meth:`map` inside the caller's open transaction on ``connection``, as :meth:`delay_in`."""
        app = self._app()
        jobs = [self._job_of(item, app) for item in items]
        if jobs:
            app.queue.enqueue_in(connection, jobs)
        return jobs

    def schedule(
        self,
        *args: Any,
        at: dt.datetime | None = None,
        in_: dt.timedelta | float | None = None,
        interval: float | None = None,
        cron: str | None = None,
        timezone_name: str = "UTC",
        key: str | None = None,
        misfire: str = "run_once",
        overlap: bool = True,
        **kwargs: Any,
    ) -> Schedule:
        """Queue this call at ``at`` (a datetime), ``in_`` (a timedelta from now),
        every ``interval`` seconds, or on ``cron`` (5 fields, in the IANA zone
        ``timezone_name``): exactly one of them. Every worker fires due
        schedules; each tick becomes exactly one job.

        ``key`` names the schedule (default: derived from the task, arguments
        and timing), so calling this at every start updates one schedule.
        ``misfire`` says what happens to ticks missed while no worker ran:
        ``"run_once"`` (one job for all), ``"skip"``, ``"catch_up"`` (one job
        each, within ``NUVOM_SCHEDULE_GRACE_SECS``). ``overlap=False`` skips a
        tick while the previous job of the schedule is still queued or running.
        Bad input raises :class:`~nuvom.schedule.ScheduleError`; a queue backend
        without schedules, :class:`~nuvom.errors.BackendError`.
        """
        from nuvom._scheduler import schedule_task

        return schedule_task(
            self,
            list(args),
            kwargs,
            at=at,
            in_=in_,
            interval=interval,
            cron=cron,
            timezone_name=timezone_name,
            key=key,
            misfire=misfire,
            overlap=overlap,
        )

    async def adelay(self, *args: Any, **kwargs: Any) -> Job:
        """:meth:`delay` for ``async`` code: the backend call runs in a thread, so
        the event loop is not blocked (``job = await task.adelay(1, 2)``)."""
        # Imported here: a coroutine runs, so asyncio is loaded already; a process
        # that never awaits (a CLI read command) is spared its import (~20 ms).
        import asyncio

        return await asyncio.to_thread(self.delay, *args, **kwargs)

    async def amap(self, items: Iterable[Any]) -> list[Job]:
        """:meth:`map` for ``async`` code, in one backend round trip off the loop."""
        import asyncio

        return await asyncio.to_thread(self.map, list(items))

    def make_job(self, args: list[Any], kwargs: dict[str, Any], app: App | None = None) -> Job:
        """Build (and check) a job for this task without queueing it."""
        app = app or self._app()
        limit = app.settings.max_payload_bytes
        if (
            kwargs
            or len(args) > _FEW_ARGS
            or limit < _FEW_ARGS_BYTES
            or not all(map(serialization.is_small_scalar, args))
        ):
            try:
                size = len(serialization.dumps([args, kwargs]))
            except SerializationError as exc:
                raise SerializationError(f"task {self.name!r}: {_which_argument(args, kwargs)} {exc}") from None
        else:
            size = 0  # within _FEW_ARGS_BYTES, so within the limit
        if size > limit:
            raise SerializationError(
                f"task {self.name!r}: arguments are {size} bytes encoded, over the limit of {limit} "
                "(NUVOM_MAX_PAYLOAD_BYTES); store large data in a file and pass its path"
            )
        values = self._job_template.copy()
        # Every mutable field gets its own object: jobs must not share lists.
        values["id"] = new_job_id()
        values["retry_delay_secs"] = self._retry_delay(app)
        values["args"] = args
        values["kwargs"] = kwargs
        values["tags"] = list(self.options.tags)
        values["created_at"] = time.time()
        values["history"] = []
        shared = self._private
        if shared is None or shared[0] is not app:
            shared = self._private = (app, {"_app": app})
        return Job._trusted_shared(values, shared[1])


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


def _check_periodic(name: str, spec: object) -> Any:
    if spec is None:
        return None
    from nuvom.schedule import Every, ScheduleError, check_cron

    if isinstance(spec, Every):
        return spec
    if isinstance(spec, str):
        try:
            check_cron(spec, "UTC")
        except ScheduleError as exc:
            raise ScheduleError(f"@task {name}: schedule={spec!r}: {exc}") from None
        return spec
    raise ScheduleError(
        f"@task {name}: schedule={spec!r} is not valid: give a cron expression ('*/5 * * * *') or every(seconds)"
    )


def _first_line(doc: str | None) -> str | None:
    if not doc:
        return None
    return doc.strip().splitlines()[0].strip() or None
