"""The schedule store's contract: :class:`BaseScheduleStore`. Re-exported by
:mod:`nuvom.plugins.contracts`, the page a plugin author reads first."""

from __future__ import annotations

import abc
import threading
from typing import TYPE_CHECKING

from nuvom.job import Job

if TYPE_CHECKING:
    from nuvom.schedule import Schedule

__all__ = ["BaseScheduleStore"]


class BaseScheduleStore(abc.ABC):
    """Schedules, kept by a queue backend: a queue class that supports
    ``task.schedule(...)`` derives from both :class:`BaseJobQueue` and this
    class (``class MyQueue(BaseJobQueue, BaseScheduleStore)``). A queue that
    does not gets a clear error at ``.schedule()``.

    A schedule (:class:`nuvom.schedule.Schedule`) is named by its ``key``.
    Core computes every time (ticks, misfires, cron, time zones); a store only
    keeps records and makes one promise:

    **Each tick becomes at most one job.** :meth:`claim_tick` records the pair
    (schedule key, tick) and queues the tick's job *in one atomic step*: when
    several workers race for a tick, exactly one call returns ``True`` and
    exactly one job is queued; a crash never leaves a tick recorded without
    its job (or the store repairs that, see :meth:`repair_ticks`) nor a job
    without its tick. A tick's job has a deterministic id
    (:func:`nuvom.schedule.tick_job_id`), so a repair can be idempotent.

    Ticks are floats (epoch seconds); stores compare them in whole
    milliseconds (:func:`nuvom.schedule.tick_ms`). Methods must be safe across
    threads and, for shared stores, across processes. ``nuvom plugin test``
    checks this contract for a queue class that derives from it.
    """

    @abc.abstractmethod
    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        """Store ``schedule`` under its key, replacing the record with that key.

        Core has already merged it with the stored one
        (:func:`nuvom.schedule.merge`); the store writes it as given and
        returns what it stored."""

    @abc.abstractmethod
    def get_schedule(self, key: str) -> Schedule | None:
        """The schedule with this key, with its current progress, or ``None``."""

    @abc.abstractmethod
    def list_schedules(self) -> list[Schedule]:
        """Every schedule, ordered by key."""

    @abc.abstractmethod
    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        """Pause or resume; returns the updated schedule, ``None`` if unknown."""

    @abc.abstractmethod
    def delete_schedule(self, key: str) -> bool:
        """Remove the schedule (its queued jobs stay); ``False`` if unknown."""

    @abc.abstractmethod
    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        """Claim ``tick`` of schedule ``key`` and queue ``job`` atomically.

        Returns ``False`` (and queues nothing) when the tick was claimed
        before, when the schedule is gone or paused, or when ``tick`` is older
        than the stored ``next_run_at`` (another process got further).
        Otherwise records the claim, queues ``job`` (``None``: the tick is
        skipped, by the misfire policy or ``overlap=False``) and sets the
        schedule's ``next_run_at`` to ``next_run_at`` (``None``: no tick
        left), ``last_run_at`` to ``tick`` and, with a job, ``last_job_id``."""

    def due_schedules(self, now: float) -> list[Schedule]:
        """Schedules not paused whose ``next_run_at`` is at or before ``now``."""
        return [s for s in self.list_schedules() if not s.paused and s.next_run_at is not None and s.next_run_at <= now]

    def next_due_at(self) -> float | None:
        """The earliest ``next_run_at`` of the schedules not paused (``None``: none);
        a firing loop sleeps until then. Called often: keep it cheap."""
        times = [s.next_run_at for s in self.list_schedules() if not s.paused and s.next_run_at is not None]
        return min(times) if times else None

    # -- waking firing loops in this process (concrete; stores need not override) --
    def watch_schedules(self, event: threading.Event) -> None:
        """Set ``event`` whenever a schedule is changed through this object."""
        self.__dict__.setdefault("_schedule_watchers", []).append(event)

    def unwatch_schedules(self, event: threading.Event) -> None:
        watchers = self.__dict__.get("_schedule_watchers", [])
        if event in watchers:
            watchers.remove(event)

    def schedules_changed(self) -> None:
        """Wake this process's firing loops (core calls it after a change)."""
        for event in list(self.__dict__.get("_schedule_watchers", ())):
            event.set()

    def repair_ticks(self) -> int:
        """Queue the jobs of ticks claimed without their job (a store whose claim
        is two steps, repaired after a crash between them); returns how many.
        Firing loops call it every few seconds. Default: nothing to repair."""
        return 0
