"""The executors of one worker, and which one each job runs on.

Threads start with the worker; the event loop (``async def`` tasks) and the
process pool start on the first job that needs them (``NUVOM_EXECUTOR=process``
starts the pool's children with the worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Literal

from nuvom._engine.base import Executor
from nuvom._registry import TaskRegistry
from nuvom.job import Executor as ExecutorKind
from nuvom.job import Job

__all__ = ["Executors"]

log = logging.getLogger("nuvom.worker")


class Executors:
    """Every executor a worker has started, by kind; ``make(kind)`` builds one."""

    def __init__(
        self,
        *,
        registry: TaskRegistry,
        may_import: Callable[[str], str | None] | None,
        default: Literal["thread", "process"],
        make: Callable[[ExecutorKind], Executor],
        worker_id: str,
        cancel: Callable[[str], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.may_import = may_import
        self.default: Literal["thread", "process"] = default
        self._make = make
        self._worker_id = worker_id
        self._cancel = cancel
        self._by_kind: dict[ExecutorKind, Executor] = {}
        self._lock = threading.Lock()
        # Where each task's jobs run when they name no executor: resolved once per task.
        self._kind_of_task: dict[str, ExecutorKind] = {}
        self._stopping = False

    def started(self) -> list[Executor]:
        return list(self._by_kind.values())

    def get(self, kind: ExecutorKind) -> Executor | None:
        return self._by_kind.get(kind)

    def ensure(self, kind: ExecutorKind) -> Executor:
        """The executor of ``kind``, started now if it was not."""
        ex = self._by_kind.get(kind)
        if ex is not None:
            return ex
        with self._lock:
            ex = self._by_kind.get(kind)
            if ex is None:
                ex = self._make(kind)
                ex.start()
                self._by_kind[kind] = ex
                if kind != "thread":
                    log.info("worker %s: %s executor started", self._worker_id, kind)
        return ex

    def kind_for(self, job: Job) -> ExecutorKind:
        """Where ``job`` runs: the executor its task names, else the event loop
        for ``async def`` tasks, else the worker's default (``NUVOM_EXECUTOR``;
        with ``process``, async tasks too run in the children)."""
        if job.executor is not None:
            return job.executor
        known = self._kind_of_task.get(job.func_name)
        if known is not None:
            return known
        try:
            # Imports the task's module on first sight (a lazy entry, or the job's
            # task path), as the executor would.
            task = self.registry.resolve(job.func_name, job.task_path, may_import=self.may_import)
        except Exception:
            return self.default  # the executor's prepare() reports why
        kind: ExecutorKind = self.default
        if task.executor is not None:
            kind = task.executor
        elif task.is_async and self.default != "process":
            kind = "async"
        if len(self._kind_of_task) < 10_000:
            self._kind_of_task[job.func_name] = kind
        return kind

    def forget_tasks(self) -> None:
        """Resolve tasks afresh (``--dev`` reloads them)."""
        self._kind_of_task.clear()

    def route(self, jobs: list[Job]) -> None:
        """Hand claimed jobs to their executors, one call per executor."""
        default = self.default
        if len(self._by_kind) == 1 and default == "thread":
            # The common case: every job so far ran on threads.
            kinds = [self.kind_for(job) for job in jobs]
            if all(kind == "thread" for kind in kinds):
                self.ensure("thread").submit(jobs)
                return
        groups: dict[ExecutorKind, list[Job]] = {}
        for job in jobs:
            groups.setdefault(self.kind_for(job), []).append(job)
        for kind, group in groups.items():
            self.ensure(kind).submit(group)

    def cancel(self, job_ids: set[str]) -> None:
        """Cancel jobs held here: flagged (``current_job().cancelled``; one not
        started yet ends without running), and stopped where an executor can."""
        for job_id in job_ids:
            if self._cancel is not None:
                self._cancel(job_id)
            for ex in self.started():
                ex.cancel(job_id)

    def room(self) -> int:
        return sum(max(0, ex.room()) for ex in self.started())

    def idle(self) -> int:
        # Which executor the next claimed jobs need is known only once they are
        # claimed: count what every one of them could start at once, so that no
        # job is start-marked to wait in a line.
        return min((ex.idle() for ex in self.started()), default=0)

    def hungry(self) -> bool:
        """Whether some executor is about to run out of jobs (fewer lined up than
        it runs at once): then even a small claim is worth making now."""
        return any(ex.hungry() for ex in self.started())

    def busy(self) -> bool:
        """Whether any job is running or waiting to run."""
        return any(ex.held_ids() for ex in self.started())

    def held_ids(self) -> list[str]:
        return [job_id for ex in self.started() for job_id in ex.held_ids()]

    def running(self, since: float | None = None) -> list[Job]:
        return [job for ex in self.started() for job in ex.running(since)]
