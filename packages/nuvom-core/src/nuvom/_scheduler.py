"""The firing loop: turns due ticks of schedules into jobs.

Every worker runs one (a daemon thread started by :class:`nuvom.worker.Worker`),
and so does ``nuvom runscheduler``. Any number may run against one store: a
tick is queued only by the loop whose :meth:`BaseScheduleStore.claim_tick`
wins, so running several costs a lost race, never a second job.

The loop sleeps until the earliest ``next_run_at`` of the store, at most
``_IDLE_WAIT`` (so a schedule added by another process is seen within it),
and is woken at once by changes made in this process. An empty store costs one
cheap read per ``_IDLE_WAIT``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from nuvom.errors import BackendError
from nuvom.job import Job
from nuvom.plugins.contracts import BaseJobQueue, BaseScheduleStore
from nuvom.schedule import MAX_CATCH_UP, Schedule, ScheduleError, build, merge

if TYPE_CHECKING:
    from nuvom._registry import TaskRegistry
    from nuvom._task import Task
    from nuvom.app import App

__all__ = ["SchedulerLoop", "fire_due", "fire_schedule", "register_declared", "save", "store_of"]

log = logging.getLogger("nuvom.scheduler")

# Longest sleep with nothing due: bounds how late a schedule made by another
# process is first seen. One indexed read (SQLite) or one small directory
# listing (file) per wake-up: measured ~0 CPU (docs/benchmarks.md).
_IDLE_WAIT = 0.25
# Event.wait() may return a little early; waking just after the due time saves a lap.
_WAKE_LATE = 0.0005
_MIN_WAIT = 0.002
# How often a loop asks the store to repair ticks claimed without their job.
_REPAIR_EVERY = 5.0


def store_of(queue: BaseJobQueue) -> BaseScheduleStore:
    """The queue as a schedule store, or a :class:`BackendError` saying it is not one."""
    if isinstance(queue, BaseScheduleStore):
        return queue
    raise BackendError(
        f"the queue backend {type(queue).__name__} does not keep schedules; use the memory, file, sqlite or redis "
        "queue (NUVOM_QUEUE_BACKEND) for task.schedule(), or a backend that implements "
        "nuvom.plugins.contracts.BaseScheduleStore"
    )


def save(app: App, schedule: Schedule) -> Schedule:
    """Store ``schedule`` over the one with its key (progress kept when the timing
    is the same) and wake this process's firing loops."""
    store = store_of(app.queue)
    stored = store.upsert_schedule(merge(schedule, store.get_schedule(schedule.key)))
    store.schedules_changed()
    return stored


def schedule_task(
    task: Task[Any],
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    declared: bool = False,
    **timing: Any,
) -> Schedule:
    """``task.schedule(...)``: check everything, then store."""
    app = task.app
    store_of(app.queue)  # a backend without schedules fails before anything else
    task.make_job(args, kwargs, app)  # arguments encodable and within the size limit
    schedule = build(
        task=task.name,
        task_path=task.path,
        args=args,
        kwargs=kwargs,
        job_fields=task.options.job_fields(),
        declared=declared,
        **timing,
    )
    return save(app, schedule)


def register_declared(app: App, registry: TaskRegistry) -> list[Schedule]:
    """Store the schedules of tasks declared with ``@task(schedule=...)``."""
    out = []
    for name, entry in registry.entries().items():
        task: Task[Any] | None
        # Told apart without importing _registry (an import cycle: _registry -> _task -> here).
        if not hasattr(entry, "periodic"):
            # A lazy task (discovery's manifest) is imported only if it declares a schedule.
            metadata = getattr(entry, "metadata", None)
            if metadata is not None and not metadata.get("schedule"):
                continue
            try:
                task = registry.get(name)
            except Exception as exc:
                log.error("task %s declares a schedule but cannot be imported: %s", name, exc)
                continue
        else:
            task = cast("Task[Any]", entry)
        spec = None if task is None else task.periodic
        if task is None or spec is None:
            continue
        timing: dict[str, Any] = {"cron": spec} if isinstance(spec, str) else {"interval": spec.seconds}
        try:
            out.append(schedule_task(task, [], {}, declared=True, **timing))
        except (ScheduleError, BackendError) as exc:
            log.error("task %s: its schedule %r is not registered: %s", task.name, spec, exc)
    return out


# -- firing -------------------------------------------------------------------
def fire_schedule(store: BaseScheduleStore, queue: BaseJobQueue, s: Schedule, now: float, grace: float) -> list[Job]:
    """Claim the due ticks of ``s`` by its misfire policy; returns the jobs this
    call queued (empty when another process was first)."""
    ticks = s.due_ticks(now, MAX_CATCH_UP)
    if not ticks:
        return []
    last = ticks[-1]
    if not s.overlap and s.last_job_id is not None and queue.get(s.last_job_id) is not None:
        log.info(
            "schedule %s: tick skipped, its previous job %s is still running (overlap=False)", s.key, s.last_job_id
        )
        store.claim_tick(s.key, last, None, s.tick_after(last))
        return []
    if s.misfire == "catch_up":
        fire = [t for t in ticks if now - t <= grace]
    elif s.misfire == "skip":
        fire = [last] if now - last <= grace else []
    else:  # run_once: one job for every tick missed
        fire = [last]
    if not fire:
        log.info("schedule %s: %d missed tick(s) skipped (misfire=%s)", s.key, len(ticks), s.misfire)
        store.claim_tick(s.key, last, None, s.tick_after(last))
        return []
    if len(ticks) > len(fire):
        log.info("schedule %s: %d tick(s) missed, %d queued (misfire=%s)", s.key, len(ticks), len(fire), s.misfire)
    queued = []
    for tick in fire:
        job = s.make_job(tick, now)
        if store.claim_tick(s.key, tick, job, s.tick_after(tick)):
            log.debug("schedule %s: tick %.3f queued job %s, %.1f ms late", s.key, tick, job.id, (now - tick) * 1e3)
            queued.append(job)
    return queued


def fire_due(store: BaseScheduleStore, queue: BaseJobQueue, now: float, grace: float) -> list[Job]:
    """Fire every due schedule of the store; returns the jobs queued here."""
    queued: list[Job] = []
    for s in store.due_schedules(now):
        try:
            queued += fire_schedule(store, queue, s, now, grace)
        except Exception:
            log.exception("schedule %s: firing failed; tried again on the next pass", s.key)
    return queued


def run_now(app: App, key: str) -> Job | None:
    """Queue one job of schedule ``key`` now, outside its ticks (``None``: no such schedule)."""
    store = store_of(app.queue)
    s = store.get_schedule(key)
    if s is None:
        return None
    job = s.make_job(None, time.time())
    app.queue.enqueue(job)
    return job.bind(app)


class SchedulerLoop:
    """A thread that fires due schedules of ``queue`` until :meth:`stop`."""

    def __init__(self, app: App, queue: BaseJobQueue | None = None, *, name: str = "nuvom-scheduler") -> None:
        self.app = app
        self.queue = queue if queue is not None else app.queue
        self.store = store_of(self.queue)
        self.grace = float(getattr(app.settings, "schedule_grace_secs", 60.0))
        self.name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = 0

    def start(self) -> SchedulerLoop:
        self.store.watch_schedules(self._wake)
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self.store.unwatch_schedules(self._wake)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        store, queue, stop, wake = self.store, self.queue, self._stop, self._wake
        next_repair = 0.0
        failing: str | None = None  # the error being reported: logged once, not every second
        while not stop.is_set():
            wake.clear()
            now = time.time()
            try:
                self.fired += len(fire_due(store, queue, now, self.grace))
                if now >= next_repair:
                    next_repair = now + _REPAIR_EVERY
                    repaired = store.repair_ticks()
                    if repaired:
                        log.warning(
                            "queued %d scheduled job(s) whose tick was claimed by a process that died", repaired
                        )
                due = store.next_due_at()
            except Exception as exc:
                if str(exc) != failing:
                    failing = str(exc)
                    log.error("firing schedules failed (%s: %s); trying again every second", type(exc).__name__, exc)
                stop.wait(1.0)
                continue
            if failing is not None:
                failing = None
                log.warning("firing schedules works again")
            # Never less than _MIN_WAIT: a tick that stays due (its claim keeps failing)
            # must not turn this loop into a busy one.
            wait = _IDLE_WAIT if due is None else min(_IDLE_WAIT, max(_MIN_WAIT, due - time.time() + _WAKE_LATE))
            wake.wait(wait)
