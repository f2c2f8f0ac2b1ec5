""":class:`Task`: a function plus how to run it, bound to the app that queues it.

The decorators are :meth:`nuvom.app.App.task` and :func:`nuvom.task.task`
(the default app's).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nuvom import _default, _tracing, serialization
from nuvom.errors import BackendError, SerializationError
from nuvom.job import DEFAULT_QUEUE, Executor, Flow, Job, JobStatus, TaskOptions, TimeoutPolicy, new_job_id
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
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        unique: bool = False,
        rate_limit: str | None = None,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        retry_on: Sequence[type[BaseException]] = (),
        dont_retry_on: Sequence[type[BaseException]] = (),
        on_failure: Callable[..., Any] | None = None,
    ) -> None:
        self.options = _validated(
            fn.__name__,
            retries=retries,
            retry_delay_secs=retry_delay_secs,
            timeout_secs=timeout_secs,
            timeout_policy=timeout_policy,
            store_result=store_result,
            tags=tags,
            description=description if description is not None else _first_line(fn.__doc__),
            category=category,  # the earlier option: becomes a tag
            executor=executor,
            queue=queue,
            priority=priority,
            unique=unique,
            rate_limit=rate_limit,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_jitter=retry_jitter,
        )
        #: Retry only on these exceptions (empty: on any), and never on those;
        #: exception classes live in the worker's process, so not in ``options``.
        self.retry_on = _exception_types(fn.__name__, "retry_on", retry_on)
        self.dont_retry_on = _exception_types(fn.__name__, "dont_retry_on", dont_retry_on)
        #: Called (``on_failure(job, error)``) when a job fails for good, retries used up.
        self.on_failure = on_failure
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
        # Arguments are bound to it at .delay(): a wrong call stores nothing.
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin or C function without one
            self._signature = None
        self._positional = _positional_range(self._signature)
        # Per-call fields of a task made by with_options() (unique_key=, depends_on=).
        self._call_fields: dict[str, Any] = {}
        self._build_template()
        # The private dict of the jobs made for one app, shared by them (Job._trusted_shared).
        self._private: tuple[App, dict[str, Any]] | None = None
        functools.update_wrapper(self, fn)

    def _build_template(self) -> None:
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
            "trace": None,
            "unique_key": None,
            "flow": None,
        }

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
        """Queue one call; returns the :class:`Job` (``job.get()`` waits for it).
        For a unique task, the job already queued or running with these
        arguments, if there is one."""
        app = self._app()
        return self._enqueue(app, [self.make_job(list(args), kwargs, app)])[0]

    def with_options(self, **overrides: Any) -> Task[R]:
        """This task with options changed for the calls made through it::

            add.with_options(queue="urgent", priority=5).delay(1, 2)
            send.with_options(unique_key=f"welcome:{user_id}").delay(user_id)
            report.with_options(depends_on=[extract, load]).delay()

        Any option of ``@task`` (``queue``, ``priority``, ``retries``,
        ``timeout_secs``, ...), and for the calls themselves ``unique_key=``
        (at most one queued-or-running job holds it) and ``depends_on=`` (jobs
        or job ids that must succeed first: :mod:`nuvom.workflow`)."""
        derived = copy.copy(self)
        call: dict[str, Any] = {name: overrides.pop(name) for name in ("unique_key", "depends_on") if name in overrides}
        hooks = {name: overrides.pop(name) for name in ("retry_on", "dont_retry_on", "on_failure") if name in overrides}
        if overrides:
            unknown = sorted(set(overrides) - set(TaskOptions.model_fields))
            if unknown:
                raise TypeError(
                    f"task {self.name!r}: with_options() got unknown option(s) {', '.join(unknown)}; known: "
                    f"{', '.join(sorted([*TaskOptions.model_fields, 'unique_key', 'depends_on', *hooks]))}"
                )
            derived.options = _validated(self.name, **{**self.options.model_dump(), **overrides})
            derived._build_template()
        for name in ("retry_on", "dont_retry_on"):
            if name in hooks:
                setattr(derived, name, _exception_types(self.name, name, hooks[name]))
        if "on_failure" in hooks:
            derived.on_failure = hooks["on_failure"]
        derived._call_fields = {**self._call_fields, **_call_fields(self.name, call)}
        derived._private = None
        return derived

    def _after(self, parents: Sequence[Job | str], args: list[Any], kwargs: dict[str, Any], flow: Flow) -> Job:
        """Queue a call that waits for ``parents`` (the workflows: ``job.then``,
        ``job.on_failure``, :func:`nuvom.workflow.group`)."""
        app = self._app()
        job = self.make_job(args, kwargs, app, receives=flow.receives != "nothing")
        job.set_fields(status=JobStatus.WAITING, flow=flow)
        return self._enqueue(app, [job])[0]

    def _enqueue(self, app: App, jobs: list[Job]) -> list[Job]:
        queue, first = app.queue, jobs[0]
        if first.queue != DEFAULT_QUEUE or first.unique_key is not None or first.flow is not None:
            _check_store(queue, first, self.name)
        if _tracing.active():
            with _tracing.enqueue(self.name, jobs):
                return self._store(app, jobs)
        return self._store(app, jobs)  # tracing off: not even a context manager per call

    @staticmethod
    def _store(app: App, jobs: list[Job]) -> list[Job]:
        first = jobs[0]
        if first.unique_key is None:
            if len(jobs) == 1:
                app.queue.enqueue(first)
            else:
                app.queue.enqueue_many(jobs)
        else:
            jobs = [_enqueue_unique(app, job) for job in jobs]
        _read_ahead_for(app, jobs)
        return jobs

    def map(self, items: Iterable[Any]) -> list[Job]:
        """Queue one job per item, in one backend round trip.

        An item is a tuple (or list) of positional arguments, a dict of keyword
        arguments, or any other value as the single positional argument.
        """
        app = self._app()
        jobs = [self._job_of(item, app) for item in items]
        return self._enqueue(app, jobs) if jobs else jobs

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
        self._enqueue_in(app, connection, [job])
        return job

    def map_in(self, connection: Any, items: Iterable[Any], /) -> list[Job]:
        """:meth:`map` inside the caller's open transaction on ``connection``, as :meth:`delay_in`."""
        app = self._app()
        jobs = [self._job_of(item, app) for item in items]
        if jobs:
            self._enqueue_in(app, connection, jobs)
        return jobs

    def _enqueue_in(self, app: App, connection: Any, jobs: list[Job]) -> None:
        first = jobs[0]
        if first.unique_key is not None or first.flow is not None:
            # A unique key's holder and a parent's outcome are read outside the
            # caller's transaction; queueing them inside it would promise what
            # the store cannot keep until that transaction commits.
            raise BackendError(
                f"task {self.name!r}: delay_in()/map_in() take no unique_key or depends_on; "
                "queue those with delay() once the transaction has committed"
            )
        if first.queue != DEFAULT_QUEUE:
            _check_store(app.queue, first, self.name)
        with _tracing.enqueue(self.name, jobs):
            app.queue.enqueue_in(connection, jobs)
        _read_ahead_for(app, jobs)

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

    def make_job(
        self, args: list[Any], kwargs: dict[str, Any], app: App | None = None, *, receives: bool = False
    ) -> Job:
        """Build (and check) a job for this task without queueing it. The
        arguments are bound to the function's signature first: a call that
        does not fit raises ``TypeError`` naming the task, and nothing is stored.
        ``receives``: a workflow job, given one more first argument when it runs."""
        app = app or self._app()
        if self._signature is not None:
            positional = self._positional
            if kwargs or positional is None or not positional[0] <= len(args) + receives <= positional[1]:
                try:
                    self._signature.bind(*((None, *args) if receives else args), **kwargs)
                except TypeError as exc:
                    raise TypeError(f"task {self.name!r}: {exc}") from None
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
        if self._call_fields:
            values.update(self._call_fields)
        if self.options.unique and values["unique_key"] is None:
            values["unique_key"] = unique_key_of(self.name, args, kwargs)
        shared = self._private
        if shared is None or shared[0] is not app:
            shared = self._private = (app, {"_app": app})
        return Job._trusted_shared(values, shared[1])


def unique_key_of(task: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """The key of a unique task's call: its name and arguments, hashed."""
    digest = hashlib.sha256(task.encode() + b"\0" + serialization.dumps([args, sorted(kwargs.items())]))
    return f"{task}:{digest.hexdigest()[:40]}"


def _validated(name: str, **options: Any) -> TaskOptions:
    try:
        return TaskOptions(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"@task {name}: {field}={err.get('input')!r} is not valid: {err['msg']}") from None


def _exception_types(name: str, option: str, value: Any) -> tuple[type[BaseException], ...]:
    types = (value,) if isinstance(value, type) else tuple(value or ())
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise ValueError(f"@task {name}: {option} must be exception classes, e.g. {option}=(ConnectionError,)")
    return types


def _call_fields(name: str, call: dict[str, Any]) -> dict[str, Any]:
    """``with_options(unique_key=..., depends_on=...)`` as job fields."""
    fields: dict[str, Any] = {}
    if "unique_key" in call:
        key = call["unique_key"]
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 256):
            raise ValueError(f"task {name!r}: unique_key must be a string of 1-256 characters")
        fields["unique_key"] = key
    if call.get("depends_on"):
        parents = [p if isinstance(p, str) else p.id for p in call["depends_on"]]
        fields["flow"] = Flow(parents=parents)
        fields["status"] = JobStatus.WAITING
    return fields


def _check_store(queue: Any, job: Job, name: str) -> None:
    """A job that needs more of the store than it keeps is refused here, before anything is stored."""
    store = type(queue).__name__
    if job.queue != DEFAULT_QUEUE and not queue.supports_queues:
        raise BackendError(f"task {name!r} goes to queue {job.queue!r}, but the {store} store has one queue only")
    if job.unique_key is not None and not queue.supports_unique:
        raise BackendError(f"task {name!r} is unique, but the {store} store cannot keep unique keys")
    if job.flow is not None and not queue.supports_workflows:
        raise BackendError(f"task {name!r} waits for other jobs, but the {store} store keeps no workflows")


def _read_ahead_for(app: App, jobs: list[Job]) -> None:
    """Let ``get()`` of these freshly queued jobs read their results in batches
    (:mod:`nuvom._gather`), when the app's result backend can."""
    gather = app._read_ahead()
    if gather is not None:
        gather.queued(jobs)


def _enqueue_unique(app: App, job: Job) -> Job:
    """Queue ``job`` unless a queued-or-running job holds its key: that job, then."""
    holder = app.queue.enqueue_unique(job)
    if holder == job.id:
        return job
    existing = app.queue.get(holder)
    return existing.bind(app) if existing is not None else job.model_copy(update={"id": holder}).bind(app)


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


def _positional_range(signature: inspect.Signature | None) -> tuple[int, int] | None:
    """How many positional arguments alone make a valid call, as (fewest, most),
    when the count settles it: no ``*args``/``**kwargs`` and no keyword-only
    parameter without a default. The common call then skips ``Signature.bind``,
    which costs more than the rest of building the job's arguments."""
    if signature is None:
        return None
    fewest = most = 0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            most += 1
            if param.default is param.empty:
                fewest = most
        elif param.kind is param.KEYWORD_ONLY:
            if param.default is param.empty:
                return None
        else:
            return None
    return fewest, most
