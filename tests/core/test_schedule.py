"""Schedules on the memory and file stores: timing, keys, misfires, overlap,
pause/resume, bad input, and the store contract (exactly one claim per tick)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nuvom._scheduler import fire_due
from nuvom.app import App
from nuvom.config import Settings
from nuvom.errors import BackendError
from nuvom.job import Job
from nuvom.plugins.contracts import BaseJobQueue
from nuvom.schedule import Schedule, ScheduleError, every, tick_job_id
from nuvom.worker import Worker

pytest.importorskip("cronsim")

GRACE = 60.0


@pytest.fixture(params=["memory", "file"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    kind = request.param
    a = App(Settings(queue_backend=kind, result_backend=kind, data_dir=tmp_path / "data"))
    yield a
    a.close()


def make_task(app: App) -> Any:
    @app.task(name="report")
    def report(n: int = 0) -> int:
        return n

    return report


def drain(queue: BaseJobQueue) -> list[Job]:
    jobs = queue.claim(10_000)
    queue.ack([j.id for j in jobs])
    return jobs


# -- timing and keys ------------------------------------------------------------
def test_rescheduling_the_same_call_updates_one_schedule(app: App) -> None:
    report = make_task(app)
    first = report.schedule(1, interval=60)
    again = report.schedule(1, interval=60)
    assert first.key == again.key and len(app.queue.list_schedules()) == 1  # type: ignore[attr-defined]
    assert again.next_run_at == first.next_run_at  # progress kept, not restarted
    report.schedule(2, interval=60)
    report.schedule(1, interval=30, key=first.key)  # same key, new timing: replaced
    stored = {s.key: s for s in app.queue.list_schedules()}  # type: ignore[attr-defined]
    assert len(stored) == 2 and stored[first.key].interval == 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of at=, in_=, interval= or cron="),
        ({"interval": 5, "cron": "* * * * *"}, "got interval and cron"),
        ({"cron": "61 * * * *"}, "cron='61 \\* \\* \\* \\*' is not valid"),
        ({"cron": "* * *"}, "not a 5-field cron expression"),
        ({"cron": "* * * * *", "timezone_name": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"interval": 0}, "interval=0 is not valid"),
        ({"interval": 5, "misfire": "sometimes"}, "misfire='sometimes' is not valid"),
        ({"interval": 5, "key": "a b/c"}, "key='a b/c' is not valid"),
    ],
)
def test_bad_timing_is_one_clear_error(app: App, kwargs: dict[str, Any], message: str) -> None:
    report = make_task(app)
    with pytest.raises(ScheduleError, match=message):
        report.schedule(**kwargs)
    assert app.queue.list_schedules() == []  # type: ignore[attr-defined]


def test_bad_declared_schedule_fails_at_decoration(app: App) -> None:
    with pytest.raises(ScheduleError, match="@task nightly: schedule='not cron'"):

        @app.task(schedule="not cron")
        def nightly() -> None: ...


def test_naive_at_is_taken_as_utc_with_a_warning(app: App) -> None:
    report = make_task(app)
    with pytest.warns(UserWarning, match="taken as UTC"):
        s = report.schedule(at=dt.datetime(2030, 1, 1, 12, 0))
    assert s.next_run_at == dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp()


def test_a_queue_without_schedules_fails_at_schedule() -> None:
    class PlainQueue(BaseJobQueue):
        def enqueue(self, job: Job) -> None: ...
        def claim(self, batch_size: int) -> list[Job]:
            return []

        def ack(self, job_ids: Any) -> None: ...
        def requeue(self, jobs: Any) -> None: ...
        def get(self, job_id: str) -> Job | None:
            return None

        def qsize(self) -> int:
            return 0

        def clear(self) -> int:
            return 0

    app = App(Settings(queue_backend="memory", result_backend="memory"), queue=PlainQueue())
    report = make_task(app)
    with pytest.raises(BackendError, match="PlainQueue does not keep schedules"):
        report.schedule(interval=5)


# -- cron and DST ---------------------------------------------------------------------
def test_cron_follows_the_zone_across_dst_changes() -> None:
    ny = "America/New_York"
    start = dt.datetime(2026, 3, 7, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    s = Schedule(key="k", task="t", cron="30 2 * * *", timezone_name=ny, anchor=start)
    ticks = [s.first_tick()]
    for _ in range(2):
        ticks.append(s.tick_after(ticks[-1]))  # type: ignore[arg-type]
    from zoneinfo import ZoneInfo

    local = [dt.datetime.fromtimestamp(t, ZoneInfo(ny)) for t in ticks]
    # 02:30 on 8 March does not exist (clocks jump 02:00 -> 03:00): it runs at 03:00, once.
    assert [(d.day, d.hour, d.minute) for d in local] == [(8, 3, 0), (9, 2, 30), (10, 2, 30)]
    # In autumn 01:30 happens twice (1 November): it runs once, 24 h apart from the day before.
    s = Schedule(
        key="k",
        task="t",
        cron="30 1 * * *",
        timezone_name=ny,
        anchor=dt.datetime(2026, 10, 31, 12, tzinfo=dt.timezone.utc).timestamp(),
    )
    a = s.first_tick()
    b = s.tick_after(a)
    c = s.tick_after(b)  # type: ignore[arg-type]
    assert b is not None and c is not None
    assert (b - a, c - b) == (25 * 3600, 24 * 3600)  # the clock went back one hour between a and b


def test_cron_schedule_fires_each_tick_once_under_a_simulated_clock(app: App) -> None:
    report = make_task(app)
    base = dt.datetime(2026, 3, 8, 6, 50, tzinfo=dt.timezone.utc).timestamp()  # 01:50 in New York, before the jump
    s = report.schedule(cron="*/30 * * * *", timezone_name="America/New_York", misfire="skip")
    # Rewind the schedule to the simulated clock.
    s = s.model_copy(update={"anchor": base, "next_run_at": None})
    s.next_run_at = s.first_tick()
    app.queue.upsert_schedule(s)  # type: ignore[attr-defined]
    fired = []
    clock = base
    while clock < base + 3 * 3600:
        clock += 7.0
        fired += fire_due(app.queue, app.queue, clock, GRACE)  # type: ignore[arg-type]
    from zoneinfo import ZoneInfo

    ids = [j.id for j in fired]
    assert len(ids) == len(set(ids))
    local = [dt.datetime.fromtimestamp(j.created_at, ZoneInfo("America/New_York")) for j in fired]
    # 02:00 and 02:30 do not exist that night: 03:00, 03:30, ... one each.
    assert [(d.hour, d.minute // 30 * 30) for d in local][:4] == [(3, 0), (3, 30), (4, 0), (4, 30)]


# -- misfires -------------------------------------------------------------------------
def _interval_schedule(app: App, misfire: str, *, interval: float = 10.0, overlap: bool = True) -> Schedule:
    report = make_task(app)
    s = report.schedule(interval=interval, misfire=misfire, overlap=overlap)
    # The simulated clock runs in the past, so the ticks' jobs are due for real.
    past = time.time() - 1000.0
    s = s.model_copy(update={"anchor": past, "next_run_at": past})
    return app.queue.upsert_schedule(s)  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [
        ("run_once", 1),  # one job for all the missed ticks
        ("skip", 0),  # the newest tick is 5 s late but the grace is 2 s... see below
        ("catch_up", 0),
    ],
)
def test_misfire_policies_after_a_long_outage(app: App, misfire: str, expected: int) -> None:
    s = _interval_schedule(app, misfire)
    first = s.next_run_at
    assert first is not None
    # Every worker was down for 100 s (ten ticks); the newest tick is 5 s old, grace is 2 s.
    now = first + 95.0
    jobs = fire_due(app.queue, app.queue, now, 2.0)  # type: ignore[arg-type]
    assert len(jobs) == expected
    after = app.queue.get_schedule(s.key)  # type: ignore[attr-defined]
    assert after.next_run_at == pytest.approx(first + 100.0)  # no tick left behind to fire later
    assert fire_due(app.queue, app.queue, now + 1, 2.0) == []  # type: ignore[arg-type]


def test_catch_up_queues_each_missed_tick_within_the_grace_window(app: App) -> None:
    s = _interval_schedule(app, "catch_up")
    first = s.next_run_at
    assert first is not None
    now = first + 95.0  # ticks at +0 ... +90 are due
    jobs = fire_due(app.queue, app.queue, now, 45.0)  # type: ignore[arg-type]
    # Ticks within 45 s of now: +50, +60, +70, +80, +90.
    assert [round(j.created_at - first) for j in jobs] == [95] * 5
    assert sorted(j.id for j in jobs) == sorted(tick_job_id(s.key, first + k) for k in (50, 60, 70, 80, 90))


def test_skip_fires_the_newest_tick_if_it_is_within_grace(app: App) -> None:
    s = _interval_schedule(app, "skip")
    first = s.next_run_at
    assert first is not None
    assert len(fire_due(app.queue, app.queue, first + 91.0, 2.0)) == 1  # type: ignore[arg-type]


# -- overlap, pause, run-now --------------------------------------------------------
def test_overlap_false_skips_a_tick_while_the_previous_job_waits(app: App) -> None:
    s = _interval_schedule(app, "run_once", overlap=False)
    first = s.next_run_at
    assert first is not None
    assert len(fire_due(app.queue, app.queue, first + 0.01, GRACE)) == 1  # type: ignore[arg-type]
    assert fire_due(app.queue, app.queue, first + 10.01, GRACE) == []  # type: ignore[arg-type]
    drain(app.queue)  # the first job ran and is gone from the queue
    assert len(fire_due(app.queue, app.queue, first + 20.01, GRACE)) == 1  # type: ignore[arg-type]


def test_pause_stops_firing_and_resume_runs_the_missed_ticks_once(app: App) -> None:
    from nuvom import sdk

    s = _interval_schedule(app, "run_once")
    first = s.next_run_at
    assert first is not None
    assert sdk.pause_schedule(s.key, app=app).paused  # type: ignore[union-attr]
    assert fire_due(app.queue, app.queue, first + 35, GRACE) == []  # type: ignore[arg-type]
    assert not sdk.resume_schedule(s.key, app=app).paused  # type: ignore[union-attr]
    assert len(fire_due(app.queue, app.queue, first + 35, GRACE)) == 1  # type: ignore[arg-type]
    assert sdk.get_schedule(s.key, app=app).last_job_id == tick_job_id(s.key, first + 30)  # type: ignore[union-attr]
    job = sdk.run_schedule_now(s.key, app=app)
    assert job is not None and job.schedule_key == s.key
    assert sdk.cancel_schedule(s.key, app=app) and sdk.get_schedule(s.key, app=app) is None
    assert sdk.pause_schedule(s.key, app=app) is None and not sdk.cancel_schedule(s.key, app=app)


def test_a_one_off_fires_once(app: App) -> None:
    report = make_task(app)
    s = report.schedule(7, in_=dt.timedelta(seconds=30))
    assert s.next_run_at is not None
    assert fire_due(app.queue, app.queue, s.next_run_at - 1, GRACE) == []  # type: ignore[arg-type]
    jobs = fire_due(app.queue, app.queue, s.next_run_at + 1, GRACE)  # type: ignore[arg-type]
    assert [j.args for j in jobs] == [[7]]
    assert fire_due(app.queue, app.queue, s.next_run_at + 100, GRACE) == []  # type: ignore[arg-type]
    assert app.queue.get_schedule(s.key).next_run_at is None  # type: ignore[attr-defined]


# -- the store contract: one claim per tick --------------------------------------------
def test_each_tick_is_claimed_once_by_racing_threads(app: App) -> None:
    s = _interval_schedule(app, "catch_up", interval=1.0)
    first = s.next_run_at
    assert first is not None
    results: list[list[Job]] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        results.append(fire_due(app.queue, app.queue, first + 20.5, GRACE))  # type: ignore[arg-type]

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [j.id for batch in results for j in batch]
    assert len(ids) == 21 and len(set(ids)) == 21
    assert len(drain(app.queue)) == 21


def test_claim_tick_refuses_a_tick_older_than_the_progress(app: App) -> None:
    s = _interval_schedule(app, "run_once")
    first = s.next_run_at
    assert first is not None
    store: Any = app.queue
    assert store.claim_tick(s.key, first + 10, None, first + 20)
    assert not store.claim_tick(s.key, first, s.make_job(first, first), first + 10)
    assert not store.claim_tick(s.key, first + 10, None, first + 20)
    assert not store.claim_tick("no-such-key", first, None, None)
    assert drain(app.queue) == []


# -- in a worker ----------------------------------------------------------------------
def test_a_worker_runs_declared_and_called_schedules(app: App) -> None:
    done = threading.Event()
    seen: list[str] = []

    @app.task(name="tick", schedule=every(0.2))
    def tick() -> None:
        seen.append("declared")
        if len(seen) >= 3:
            done.set()

    with Worker(app=app):
        assert done.wait(10), seen
    keys = [s.key for s in app.queue.list_schedules()]  # type: ignore[attr-defined]
    assert len(keys) == 1 and app.queue.list_schedules()[0].declared  # type: ignore[attr-defined]
    jobs = app.results.list_jobs(limit=100)
    assert jobs and all(j.schedule_key == keys[0] for j in jobs)


def test_idle_loop_sleeps_with_no_schedules(app: App) -> None:
    from nuvom._scheduler import SchedulerLoop

    loop = SchedulerLoop(app).start()
    try:
        t0 = time.process_time()
        time.sleep(1.0)  # measuring idle CPU over a wall-clock second, not synchronising
        assert time.process_time() - t0 < 0.2
    finally:
        loop.stop()
