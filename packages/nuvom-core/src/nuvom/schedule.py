"""Schedules: a task call that a worker queues at given times (once, every N
seconds, or on a cron expression).

``task.schedule(...)`` (:meth:`nuvom._task.Task.schedule`) stores a
:class:`Schedule` in the app's queue backend; every worker (and ``nuvom
runscheduler``) queues one job per *tick*, a due time of the schedule. A tick
is claimed in the same transaction that queues its job
(:meth:`nuvom.plugins.contracts.BaseScheduleStore.claim_tick`), so each tick
becomes exactly one job however many workers run. docs/scheduling.md tells
the whole story.

Cron expressions are evaluated by `cronsim <https://pypi.org/project/cronsim/>`_
(``pip install "nuvom-core[cron]"``), in an IANA time zone, DST-correct.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import time
import warnings
from typing import Any, Literal

from nuvom.errors import NuvomError
from nuvom.job import Job, JobStatus
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MISFIRE_POLICIES",
    "Every",
    "MisfirePolicy",
    "Schedule",
    "ScheduleError",
    "every",
    "tick_job_id",
]

log = logging.getLogger("nuvom.schedule")

MisfirePolicy = Literal["run_once", "skip", "catch_up"]
MISFIRE_POLICIES: tuple[str, ...] = ("run_once", "skip", "catch_up")

# A key is what names a schedule in files, rows and CLI arguments.
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@")
_MAX_KEY = 200
# Catching up never queues more than this many missed ticks in one pass.
MAX_CATCH_UP = 1000


class ScheduleError(NuvomError, ValueError):
    """A schedule's timing, time zone, key or policy is not usable."""


class Every(BaseModel):
    """An interval for ``@task(schedule=every(300))``."""

    model_config = ConfigDict(frozen=True)

    seconds: float

    def __str__(self) -> str:
        return f"every {self.seconds:g}s"


def every(seconds: float) -> Every:
    """``@task(schedule=every(300))``: run the task every ``seconds`` seconds."""
    _check_interval(seconds)
    return Every(seconds=float(seconds))


def tick_job_id(key: str, tick: float) -> str:
    """The id of the job a schedule's tick makes: the same in every process, so
    a tick queued twice (a crash between claiming and queueing, repaired) is one job."""
    return hashlib.sha256(f"{key}\x00{tick_ms(tick)}".encode()).hexdigest()[:32]


def tick_ms(tick: float) -> int:
    """A tick as whole milliseconds: how stores name it."""
    return round(tick * 1000)


class Schedule(BaseModel):
    """A task call queued at the ticks of its timing.

    Exactly one of ``at`` (a one-off time), ``interval`` (seconds) or ``cron``
    (5 fields, in ``timezone_name``) is set. ``next_run_at`` is the next tick
    not yet fired (``None``: nothing left, a one-off that ran); ``last_run_at``
    the last tick fired, ``last_job_id`` its job.
    """

    model_config = ConfigDict(extra="ignore")

    key: str
    task: str
    task_path: str | None = None
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: The task's options as job fields (max_retries, timeout_secs, ...).
    job_fields: dict[str, Any] = Field(default_factory=dict)
    at: float | None = None
    interval: float | None = None
    cron: str | None = None
    timezone_name: str = "UTC"
    #: Interval ticks fall on ``anchor + k * interval``; cron ticks count from it.
    anchor: float = 0.0
    misfire: MisfirePolicy = "run_once"
    overlap: bool = True
    paused: bool = False
    next_run_at: float | None = None
    last_run_at: float | None = None
    last_job_id: str | None = None
    created_at: float = Field(default_factory=time.time)
    #: Declared with ``@task(schedule=...)`` rather than ``task.schedule()``.
    declared: bool = False

    @property
    def id(self) -> str:
        return self.key

    @property
    def kind(self) -> str:
        return "at" if self.at is not None else "interval" if self.interval is not None else "cron"

    def timing(self) -> str:
        """The timing in words: ``cron '*/5 * * * *' (Europe/Riga)``, ``every 60s``, ``at 2026-...``."""
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone_name})"
        if self.interval is not None:
            return f"every {self.interval:g}s"
        return f"at {dt.datetime.fromtimestamp(self.at or 0.0, dt.timezone.utc).isoformat()}"

    def same_timing(self, other: Schedule) -> bool:
        return (self.at, self.interval, self.cron, self.timezone_name) == (
            other.at,
            other.interval,
            other.cron,
            other.timezone_name,
        )

    # -- ticks ----------------------------------------------------------------
    def first_tick(self) -> float:
        if self.at is not None:
            return self.at
        if self.interval is not None:
            return self.anchor
        return self._cron_after(self.anchor)

    def tick_after(self, t: float) -> float | None:
        """The first tick strictly after ``t`` (``None`` for a one-off)."""
        if self.at is not None:
            return None
        if self.interval is not None:
            if t < self.anchor:
                return self.anchor
            k = math.floor((t - self.anchor) / self.interval) + 1
            tick = self.anchor + k * self.interval
            return tick if tick > t else tick + self.interval  # float rounding
        return self._cron_after(t)

    def _cron_after(self, t: float) -> float:
        zone = zone_info(self.timezone_name)
        start = dt.datetime.fromtimestamp(t, zone)
        cron_sim = _cronsim()
        # cronsim works on whole minutes from `start` onwards, inclusive of `start`'s
        # own minute only when it has no seconds; a tick equal to t must not repeat.
        it = cron_sim.CronSim(self.cron, start.replace(microsecond=0))
        for _ in range(3):
            nxt = next(it).timestamp()
            if nxt > t:
                return float(nxt)
        raise ScheduleError(f"cron {self.cron!r} gives no time after {start.isoformat()}")

    def due_ticks(self, now: float, limit: int = MAX_CATCH_UP) -> list[float]:
        """Ticks from ``next_run_at`` up to ``now``, oldest first (at most ``limit``,
        the newest ones)."""
        tick = self.next_run_at
        if tick is None or tick > now:
            return []
        if self.interval is not None:
            # Computed, not walked: a schedule of 1 s down for a day has 86400 ticks.
            last = self.anchor + math.floor((now - self.anchor) / self.interval) * self.interval
            count = round((last - tick) / self.interval) + 1
            first = max(0, count - limit)
            return [tick + i * self.interval for i in range(first, count)]
        out: list[float] = []
        while tick is not None and tick <= now:
            out.append(tick)
            if len(out) > limit:
                out.pop(0)
            tick = self.tick_after(tick)
        return out

    def make_job(self, tick: float | None, now: float) -> Job:
        """The job a tick (``None``: a run asked for by hand) queues."""
        job_id = tick_job_id(self.key, tick) if tick is not None else None
        fields: dict[str, Any] = {
            **self.job_fields,
            "func_name": self.task,
            "task_path": self.task_path,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "status": JobStatus.PENDING,
            "created_at": now,
            "schedule_key": self.key,
        }
        if job_id is not None:
            fields["id"] = job_id
        return Job(**fields)


# -- validation ---------------------------------------------------------------
def zone_info(name: str) -> dt.tzinfo:
    """The IANA zone ``name``; :class:`ScheduleError` naming it when unknown."""
    if name == "UTC":
        return dt.timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"timezone_name={name!r} is not a known IANA time zone (e.g. 'Europe/Berlin', 'America/New_York'); "
            "on Windows install the tzdata package"
        ) from None


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:
        raise ScheduleError(
            'cron schedules need the cronsim package: pip install "nuvom-core[cron]" (or pip install cronsim)'
        ) from None
    return cronsim


def check_cron(expr: str, timezone_name: str) -> None:
    if not isinstance(expr, str) or len(expr.split()) != 5:
        raise ScheduleError(
            f"cron={expr!r} is not a 5-field cron expression (minute hour day-of-month month day-of-week, "
            "e.g. '*/5 * * * *')"
        )
    cron_sim = _cronsim()
    try:
        next(cron_sim.CronSim(expr, dt.datetime.now(zone_info(timezone_name)).replace(microsecond=0)))
    except (cron_sim.CronSimError, StopIteration) as exc:
        raise ScheduleError(f"cron={expr!r} is not valid: {exc or 'it never fires'}") from None


def _check_interval(seconds: object) -> None:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not seconds >= 0.001
        or seconds == math.inf
    ):
        raise ScheduleError(f"interval={seconds!r} is not valid: give a number of seconds, 0.001 or more")


def check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY or not set(key) <= _KEY_CHARS:
        raise ScheduleError(
            f"key={key!r} is not valid: use 1-{_MAX_KEY} letters, digits or '-_.:@' "
            "(or leave it out to derive one from the task, arguments and timing)"
        )
    return key


def build(
    *,
    task: str,
    task_path: str | None,
    args: list[Any],
    kwargs: dict[str, Any],
    job_fields: dict[str, Any],
    at: dt.datetime | None = None,
    in_: dt.timedelta | float | None = None,
    interval: float | None = None,
    cron: str | None = None,
    timezone_name: str = "UTC",
    key: str | None = None,
    misfire: str = "run_once",
    overlap: bool = True,
    now: float | None = None,
    declared: bool = False,
) -> Schedule:
    """Check the arguments of ``task.schedule(...)`` and make the :class:`Schedule`;
    any bad input raises one :class:`ScheduleError` that says what to change."""
    now = time.time() if now is None else now
    given = [
        name for name, value in (("at", at), ("in_", in_), ("interval", interval), ("cron", cron)) if value is not None
    ]
    if len(given) != 1:
        what = "none was given" if not given else f"got {' and '.join(given)}"
        raise ScheduleError(f"give exactly one of at=, in_=, interval= or cron= to .schedule(); {what}")
    if misfire not in MISFIRE_POLICIES:
        raise ScheduleError(f"misfire={misfire!r} is not valid: use one of {', '.join(MISFIRE_POLICIES)}")
    if not isinstance(timezone_name, str):
        raise ScheduleError(f"timezone_name={timezone_name!r} is not valid: give an IANA zone name such as 'UTC'")
    zone_info(timezone_name)
    at_ts: float | None = None
    if at is not None:
        if not isinstance(at, dt.datetime):
            raise ScheduleError(f"at={at!r} is not valid: give a datetime (aware, e.g. with tzinfo=timezone.utc)")
        if at.tzinfo is None or at.utcoffset() is None:
            warnings.warn(f"at={at.isoformat()} has no time zone; taken as UTC", stacklevel=3)
            at = at.replace(tzinfo=dt.timezone.utc)
        at_ts = at.timestamp()
    elif in_ is not None:
        secs = in_.total_seconds() if isinstance(in_, dt.timedelta) else in_
        if isinstance(secs, bool) or not isinstance(secs, (int, float)) or secs < 0:
            raise ScheduleError(f"in_={in_!r} is not valid: give a timedelta (or seconds) of 0 or more")
        at_ts = now + float(secs)
    elif interval is not None:
        _check_interval(interval)
    elif cron is not None:
        check_cron(cron, timezone_name)
    timing = (
        f"in={in_.total_seconds() if isinstance(in_, dt.timedelta) else in_:g}"
        if in_ is not None
        else f"at={tick_ms(at_ts)}"
        if at_ts is not None
        else f"every={float(interval):g}"
        if interval is not None
        else f"cron={cron}@{timezone_name}"
    )
    if key is None:
        key = derive_key(task, args, kwargs, timing)
    schedule = Schedule(
        key=check_key(key),
        task=task,
        task_path=task_path,
        args=args,
        kwargs=kwargs,
        job_fields=job_fields,
        at=at_ts,
        interval=float(interval) if interval is not None else None,
        cron=cron,
        timezone_name=timezone_name,
        anchor=now + float(interval) if interval is not None else now,
        misfire=misfire,  # type: ignore[arg-type]
        overlap=overlap,
        created_at=now,
        declared=declared,
    )
    schedule.next_run_at = schedule.first_tick()
    return schedule


def derive_key(task: str, args: list[Any], kwargs: dict[str, Any], timing: str) -> str:
    """``<task>:<12 hex digits of a hash of arguments and timing>``: the same call
    with the same timing names the same schedule in every process and at every start."""
    from nuvom import serialization

    payload = serialization.dumps([args, sorted(kwargs.items()), timing])
    digest = hashlib.sha256(payload).hexdigest()[:12]
    name = "".join(c if c in _KEY_CHARS else "_" for c in task)[: _MAX_KEY - 13]
    return f"{name}:{digest}"


def merge(new: Schedule, old: Schedule | None) -> Schedule:
    """What storing ``new`` over ``old`` (same key) keeps: with the same timing,
    the progress (next/last run, last job, anchor) and the paused flag; with
    another timing, a fresh start."""
    if old is None:
        return new
    merged = new.model_copy()
    merged.paused = old.paused
    merged.created_at = old.created_at
    if new.same_timing(old):
        merged.anchor = old.anchor
        merged.next_run_at = old.next_run_at
    merged.last_run_at = old.last_run_at
    merged.last_job_id = old.last_job_id
    return merged
