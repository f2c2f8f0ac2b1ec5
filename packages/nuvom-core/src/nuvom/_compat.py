"""What the earlier nuvom (0.9-0.11) accepted and this one still does.

* A result backend written to the seeds' interface (``set_result(id, func,
  result)``, ``set_error(id, func, exc)``, ``get_result(id)``,
  ``get_error(id)``, optionally ``get_full(id)`` and ``list_jobs()``) that
  does not subclass :class:`~nuvom.plugins.contracts.BaseResultBackend` is
  wrapped by :class:`LegacyResultBackend` when it is registered.
* A queue backend written to the seeds' interface (``enqueue(job)``,
  ``dequeue(timeout)``, ``pop_batch(batch_size, timeout)``, ``qsize()``,
  ``clear()``) that does not subclass
  :class:`~nuvom.plugins.contracts.BaseJobQueue` is wrapped by
  :class:`LegacyJobQueue` when it is registered or named by an entry point.
* Plugin targets of the earlier single distribution resolve to their new homes
  (:data:`MOVED_TARGETS`); ``nuvom plugin status`` says so.
* ``TaskRegistry.register(name, fn, force=..., silent=..., metadata=...)``
  registers a plain function as a task (:func:`task_from_function`).

Neither adapter warns: code written for 0.11 keeps working as documented in
docs/migrating.md, which also says what such a backend cannot promise.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from nuvom._task import Task
from nuvom.job import Job, JobError, JobStatus
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

if TYPE_CHECKING:
    from nuvom._settings import Settings

__all__ = [
    "MOVED_DISTRIBUTIONS",
    "MOVED_TARGETS",
    "LegacyJobQueue",
    "LegacyResultBackend",
    "RemoteError",
    "looks_like_legacy_queue",
    "looks_like_legacy_result_backend",
    "moved_hint",
    "task_from_function",
]

#: Earlier ``module:Class`` plugin targets and where they live now.
MOVED_TARGETS = {
    "nuvom.plugins.monitoring.prometheus:PrometheusPlugin": "nuvom.prometheus:PrometheusPlugin",
}
#: The distribution that holds each new home of :data:`MOVED_TARGETS`.
MOVED_DISTRIBUTIONS = {
    "nuvom.prometheus:PrometheusPlugin": "nuvom-prometheus",
}


def moved_hint(old: str, new: str, *, installed: bool = True) -> str:
    """What to tell a user whose plugins file names ``old``, now ``new``; with
    ``installed=False``, how to install the distribution that holds it."""
    dist = MOVED_DISTRIBUTIONS.get(new)
    text = f"{old} has moved to {new}" + (f" (distribution {dist})" if dist else "")
    if not installed and dist:
        text += f"; install it: `pip install {dist}` (from a clone of nuvom: `pip install ./packages/{dist}`)"
    return text


_LEGACY_METHODS = ("set_result", "set_error", "get_result")
# The keys of the earlier registry's ``metadata`` that are task options now.
_METADATA_OPTIONS = ("tags", "description", "category")


def task_from_function(name: str, fn: Callable[..., Any] | None, metadata: dict[str, Any] | None) -> Task[Any]:
    """The task ``name`` for the earlier ``registry.register(name, fn, ...)``: ``fn``
    itself when it is a task of that name, else a task calling it (a plain
    function, or a task registered under a second name, with its options)."""
    if not isinstance(name, str) or not name:
        raise ValueError("register(name, fn): the task name must be a non-empty string")
    if fn is None or not callable(fn):
        raise TypeError(f"register({name!r}, fn): fn must be a function, got {type(fn).__name__}")
    extra = {k: v for k, v in (metadata or {}).items() if k in _METADATA_OPTIONS and v is not None}
    if isinstance(fn, Task):
        if fn.name == name and not extra:
            return fn
        options = {**fn.options.model_dump(), **extra}
        return Task(fn.fn, name=name, before_job=fn.before_job, after_job=fn.after_job, on_error=fn.on_error, **options)
    return Task(fn, name=name, **extra)


_LEGACY_QUEUE_METHODS = ("enqueue", "dequeue", "pop_batch", "qsize", "clear")


def looks_like_legacy_result_backend(cls: type) -> bool:
    return all(callable(getattr(cls, name, None)) for name in _LEGACY_METHODS)


def looks_like_legacy_queue(cls: type) -> bool:
    return all(callable(getattr(cls, name, None)) for name in _LEGACY_QUEUE_METHODS)


def _construct(inner_class: type, settings: Settings | None) -> Any:
    """``inner_class(settings)`` if its constructor needs an argument or names one
    ``settings``, else ``inner_class()``: 0.11's own backends took optional
    arguments of their own (``maxsize=0``, ``result_dir="job_results"``)."""
    try:
        params = list(inspect.signature(inner_class).parameters.values())
    except (TypeError, ValueError):
        params = []
    first = params[0] if params else None
    takes_settings = first is not None and (first.name == "settings" or first.default is inspect.Parameter.empty)
    return inner_class(settings) if takes_settings else inner_class()


class LegacyJobQueue(BaseJobQueue):
    """Adapts an earlier-style queue (the seeds' five methods) to the contract.

    Such a queue removes a job when it hands it out, so delivery through it is
    at most once: a claimed job lives only in this worker's memory until its
    outcome is stored (a worker killed meanwhile loses it), and ``get`` finds
    waiting jobs only if the queue has a ``get(job_id)`` of its own. A job that
    is not yet due (a delayed job, a retry's delay) is put back at the end.
    """

    inner_class: ClassVar[type] = object

    @classmethod
    def wrapping(cls, inner_class: type) -> type[LegacyJobQueue]:
        shared = bool(getattr(inner_class, "shared_between_processes", True))
        return type(
            f"Legacy{inner_class.__name__}", (cls,), {"inner_class": inner_class, "shared_between_processes": shared}
        )

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.inner: Any = _construct(self.inner_class, settings)
        self._claimed: dict[str, Job] = {}
        self._lock = threading.Lock()

    def enqueue(self, job: Job) -> None:
        self.inner.enqueue(job)

    def claim(self, batch_size: int) -> list[Job]:
        now = time.time()
        claimed: list[Job] = []
        for item in self.inner.pop_batch(batch_size, timeout=0) or []:
            job = item if isinstance(item, Job) else Job.from_dict(item if isinstance(item, dict) else item.to_dict())
            if job.not_before is not None and job.not_before > now:
                self.inner.enqueue(job)
                continue
            job.mark_claimed()
            claimed.append(job)
        with self._lock:
            self._claimed.update((job.id, job) for job in claimed)
        return claimed

    def ack(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._claimed.pop(job_id, None)

    def requeue(self, jobs: Sequence[Job]) -> None:
        self.ack([job.id for job in jobs])
        for job in jobs:
            self.inner.enqueue(job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._claimed.get(job_id)
        if job is not None:
            return job
        getter = getattr(self.inner, "get", None)
        found = getter(job_id) if callable(getter) else None
        return found if isinstance(found, Job) else None

    def qsize(self) -> int:
        return int(self.inner.qsize())

    def clear(self) -> int:
        return int(self.inner.clear() or 0)


class RemoteError(Exception):
    """A stored job error handed to an earlier-style ``set_error(id, func, exc)``."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.type_name = error.type
        self.remote_traceback = error.traceback


class LegacyResultBackend(BaseResultBackend):
    """Adapts an earlier-style result backend to the contract."""

    inner_class: ClassVar[type] = object

    @classmethod
    def wrapping(cls, inner_class: type) -> type[LegacyResultBackend]:
        return type(f"Legacy{inner_class.__name__}", (cls,), {"inner_class": inner_class})

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.inner: Any = _construct(self.inner_class, settings)

    def store(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if job.status is JobStatus.FAILED:
                error = job.error or JobError(type="Error", message="unknown failure")
                self.inner.set_error(job.id, job.func_name, RemoteError(error))
            else:
                self.inner.set_result(job.id, job.func_name, job.result)

    def get_full(self, job_id: str) -> Job | None:
        getter = getattr(self.inner, "get_full", None)
        if callable(getter):
            return _as_job(getter(job_id), job_id)
        error = self.inner.get_error(job_id) if callable(getattr(self.inner, "get_error", None)) else None
        if error is not None:
            return Job(
                id=job_id, func_name="?", status=JobStatus.FAILED, error=_as_error(error), finished_at=time.time()
            )
        result = self.inner.get_result(job_id)
        if result is None:
            return None
        return Job(id=job_id, func_name="?", status=JobStatus.SUCCESS, result=result, finished_at=time.time())

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        lister = getattr(self.inner, "list_jobs", None)
        if not callable(lister):
            return []
        wanted = None if status is None else JobStatus(str(getattr(status, "value", status)).upper())
        jobs = [j for j in (_as_job(raw, None) for raw in lister()) if j is not None]
        jobs = [j for j in jobs if (wanted is None or j.status is wanted) and (task is None or j.func_name == task)]
        jobs.sort(key=lambda j: j.finished_at or 0.0, reverse=True)
        return jobs[:limit]


def _as_error(value: Any) -> JobError:
    if isinstance(value, JobError):
        return value
    if isinstance(value, BaseException):
        return JobError.from_exception(value)
    if isinstance(value, dict):
        return JobError(type=str(value.get("type", "Error")), message=str(value.get("message", value)))
    return JobError(type="Error", message=str(value))


def _as_job(raw: Any, job_id: str | None) -> Job | None:
    if raw is None or isinstance(raw, Job):
        return raw
    if isinstance(raw, dict):
        data = dict(raw)
        data.setdefault("id", job_id or data.get("job_id"))
        data.setdefault("func_name", data.get("func") or "?")
        if isinstance(data.get("status"), str):
            data["status"] = data["status"].upper()
        if data.get("error") is not None and not isinstance(data["error"], dict):
            data["error"] = _as_error(data["error"]).model_dump()
        try:
            return Job.model_validate(data, context={"stored": True})
        except Exception:
            return None
    return None
