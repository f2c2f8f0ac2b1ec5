"""Worker presence of the memory queue: records in a dict of the queue object,
so only workers of this process show (the queue is not shared either)."""

from __future__ import annotations

from nuvom.plugins._presence import WorkerInfo, live_and_gone

__all__ = ["MemoryPresence"]


class MemoryPresence:
    """Mixed into :class:`~nuvom.backends.memory.MemoryJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue`, whose defaults it replaces."""

    def _workers(self) -> dict[str, WorkerInfo]:
        # Created on first use, so the queue's __init__ stays as it is; setdefault
        # is one atomic step, so two threads cannot each make a dict of their own.
        found: dict[str, WorkerInfo] = self.__dict__.setdefault("_presence", {})
        return found

    def publish_worker(self, info: WorkerInfo) -> None:
        self._workers()[info.worker_id] = info.model_copy()

    def remove_worker(self, worker_id: str) -> None:
        self._workers().pop(worker_id, None)

    def list_workers(self) -> list[WorkerInfo] | None:
        workers = self._workers()
        kept = live_and_gone(list(workers.values()))
        for stale in set(workers) - {w.worker_id for w in kept}:
            workers.pop(stale, None)
        return [w.model_copy() for w in kept]

    def describe(self) -> str:
        return "memory (this process only)"
