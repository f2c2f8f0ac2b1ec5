"""What the earlier nuvom (0.9-0.11) accepted and this one still does.

* A result backend written to the seeds' interface (``set_result(id, func,
  result)``, ``set_error(id, func, exc)``, ``get_result(id)``,
  ``get_error(id)``, optionally ``get_full(id)`` and ``list_jobs()``) that
  does not subclass :class:`~nuvom.plugins.contracts.BaseResultBackend` is
  wrapped by :class:`LegacyResultBackend` when it is registered.
* Plugin targets of the earlier single distribution resolve to their new homes
  (:data:`MOVED_TARGETS`); ``nuvom plugin status`` says so.
* ``TaskRegistry.register(name, fn, force=..., silent=..., metadata=...)``
  registers a plain function as a task (:func:`task_from_function`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nuvom._task import Task
from nuvom.job import Job, JobError, JobStatus
from nuvom.plugins.contracts import BaseResultBackend

if TYPE_CHECKING:
    from nuvom._settings import Settings

__all__ = [
    "MOVED_TARGETS",
    "LegacyResultBackend",
    "RemoteError",
    "looks_like_legacy_result_backend",
    "task_from_function",
]

#: Earlier ``module:Class`` plugin targets and where they live now.
MOVED_TARGETS = {
    "nuvom.plugins.monitoring.prometheus:PrometheusPlugin": "nuvom.prometheus:PrometheusPlugin",
}

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


def looks_like_legacy_result_backend(cls: type) -> bool:
    return all(callable(getattr(cls, name, None)) for name in _LEGACY_METHODS)


class RemoteError(Exception):
    """A stored job error handed to an earlier-style ``set_error(id, func, exc)``."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.type_name = error.type
        self.remote_traceback = error.traceback


class LegacyResultBackend(BaseResultBackend):
    """Adapts an earlier-style result backend to the contract."""

    inner_class: type = object

    @classmethod
    def wrapping(cls, inner_class: type) -> type[LegacyResultBackend]:
        return type(f"Legacy{inner_class.__name__}", (cls,), {"inner_class": inner_class})

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        try:
            takes_settings = len(inspect.signature(self.inner_class).parameters) > 0
        except (TypeError, ValueError):
            takes_settings = False
        self.inner: Any = self.inner_class(settings) if takes_settings else self.inner_class()

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
