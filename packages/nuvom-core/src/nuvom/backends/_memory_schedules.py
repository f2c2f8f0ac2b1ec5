"""Schedules kept in memory: the memory queue's half of ``BaseScheduleStore``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nuvom.job import Job
from nuvom.schedule import Schedule, tick_ms

__all__ = ["MemorySchedules"]


class MemorySchedules:
    """Needs ``_cond`` (the queue's lock) and ``enqueue_many`` from the class it mixes into."""

    _cond: threading.Condition
    _schedules: dict[str, Schedule]
    _ticks: dict[str, set[int]]

    if TYPE_CHECKING:

        def enqueue_many(self, jobs: Sequence[Job]) -> None: ...

    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        with self._cond:
            self._schedules[schedule.key] = schedule.model_copy(deep=True)
        return schedule

    def get_schedule(self, key: str) -> Schedule | None:
        with self._cond:
            found = self._schedules.get(key)
            return None if found is None else found.model_copy(deep=True)

    def list_schedules(self) -> list[Schedule]:
        with self._cond:
            return [self._schedules[k].model_copy(deep=True) for k in sorted(self._schedules)]

    def next_due_at(self) -> float | None:
        with self._cond:
            times = [s.next_run_at for s in self._schedules.values() if not s.paused and s.next_run_at is not None]
        return min(times) if times else None

    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        with self._cond:
            found = self._schedules.get(key)
            if found is None:
                return None
            found.paused = paused
            return found.model_copy(deep=True)

    def delete_schedule(self, key: str) -> bool:
        with self._cond:
            self._ticks.pop(key, None)
            return self._schedules.pop(key, None) is not None

    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        with self._cond:
            found = self._schedules.get(key)
            mark = tick_ms(tick)
            claimed = self._ticks.setdefault(key, set())
            if found is None or found.paused or mark in claimed:
                return False
            if found.next_run_at is None or mark < tick_ms(found.next_run_at):
                return False
            if len(claimed) > 64:
                claimed.intersection_update({m for m in claimed if m >= mark})
            claimed.add(mark)
            if job is not None:
                self.enqueue_many((job,))
                found.last_job_id = job.id
            found.last_run_at = tick
            found.next_run_at = next_run_at
            return True
