"""Workflows: jobs that run once other jobs have finished.

Three forms, each durable: the store keeps a job ``WAITING`` until every job
it waits for has a final record, and releases it in the same transaction or
script that stores the last of those outcomes, so a worker killed at any
instant neither loses the next job nor runs it twice::

    job.then(task, *args)               # runs with job's result as its first argument
    job.on_failure(task, *args)         # runs only if job fails for good, with its error
    group([a, b, c]).then(task, *args)  # fan-in: once all succeeded, with their results in order
    task.with_options(depends_on=[a, b]).delay(...)  # a DAG: runs once a and b succeeded

A failed job stops what waits for it: its dependents fail with
``DependencyFailed`` (and theirs in turn), unless they are ``on_failure``
branches. The store must keep workflows (``BaseJobQueue.supports_workflows``:
memory, SQLite, Redis, files); results are read back from the result backend,
so the jobs waited for must store their result (``store_result=True``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from nuvom.job import Flow, Job

if TYPE_CHECKING:
    from nuvom._task import Task

__all__ = ["Group", "group"]


class Group:
    """Jobs queued together, waited for together (:func:`group`)."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self.jobs = list(jobs)
        if not self.jobs:
            raise ValueError("a group needs at least one job")

    @property
    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]

    def then(self, task: Task[Any], *args: Any, **kwargs: Any) -> Job:
        """Queue a call of ``task`` that runs exactly once, after every job of the
        group has succeeded, with their results as a list (in the group's
        order) as its first argument. If one of them fails for good, it fails
        (``DependencyFailed``) and never runs."""
        return task._after(self.jobs, list(args), kwargs, Flow(parents=self.ids, receives="results"))

    def on_failure(self, task: Task[Any], *args: Any, **kwargs: Any) -> Job:
        """Queue a call of ``task`` that runs once every job of the group has
        finished, if one of them failed for good, with the first failure's
        error as its first argument; skipped if they all succeeded."""
        return task._after(self.jobs, list(args), kwargs, Flow(parents=self.ids, run_if="failed", receives="error"))

    def get(self, timeout: float | None = None) -> list[Any]:
        """Every job's result, in order (:meth:`Job.get` of each)."""
        return [job.get(timeout) for job in self.jobs]

    def __len__(self) -> int:
        return len(self.jobs)

    def __repr__(self) -> str:
        return f"<Group of {len(self.jobs)} jobs>"


def group(jobs: Iterable[Job]) -> Group:
    """The jobs as one group: ``group(fetch.map(urls)).then(merge)``."""
    return Group(jobs)
