"""Schedules on Redis: core's schedule-store tests (tests/core/test_schedule.py)
and its soak with real worker processes (tests/core/test_schedule_processes.py)
run here against a real redis-server, plus what only Redis has (the key layout,
the one-script tick claim racing across processes, ``nuvom schedule list``)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from nuvom import sdk
from nuvom.app import App
from nuvom.config import Settings
from nuvom.plugins.contracts import BaseScheduleStore
from nuvom.redis import RedisJobQueue
from nuvom.schedule import Schedule, tick_job_id

from .conftest import RedisServer

CORE = Path(__file__).resolve().parents[1] / "core"


def _load(name: str) -> ModuleType:
    """A module of core's tests, loaded by path: its tests are collected here again,
    with this module's fixtures (``app``, ``soak``) pointing them at Redis."""
    spec = importlib.util.spec_from_file_location(f"_core_{name}", CORE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:
    _core: dict[str, Any] = vars(_load("test_schedule"))
except pytest.skip.Exception:  # no cronsim (the e2e environment); the redis environment has it
    _core = {}
_soak = _load("test_schedule_processes")
# Every core schedule test that runs against an app's store runs here on Redis.
for _name, _test in list(_core.items()):
    if _name.startswith("test_") and "app" in inspect.signature(_test).parameters:
        globals()[_name] = _test
if "NUVOM_TEST_SCHEDULE_SECS" not in os.environ:
    _soak.SOAK_SECS = 15.0  # the 3-worker soak: ~15 ticks at interval=1
test_three_workers_fire_each_tick_of_an_interval_schedule_once = (
    _soak.test_three_workers_fire_each_tick_of_an_interval_schedule_once
)
test_workers_killed_as_they_fire_ticks_lose_and_double_none = (
    _soak.test_workers_killed_as_they_fire_ticks_lose_and_double_none
)

posix_only = pytest.mark.skipif(os.name == "nt", reason="SIGKILL and O_APPEND logs are POSIX")
test_three_workers_fire_each_tick_of_an_interval_schedule_once = posix_only(
    test_three_workers_fire_each_tick_of_an_interval_schedule_once
)
test_workers_killed_as_they_fire_ticks_lose_and_double_none = posix_only(
    test_workers_killed_as_they_fire_ticks_lose_and_double_none
)


@pytest.fixture
def redis_env(redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"NUVOM_REDIS_URL": redis_server.url, "NUVOM_REDIS_PREFIX": prefix}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def app(redis_env: dict[str, str], tmp_path: Path) -> Iterator[App]:
    a = App(Settings(queue_backend="redis", result_backend="redis", data_dir=tmp_path / "data"))
    yield a
    a.close()


@pytest.fixture
def soak(redis_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    s = _soak.Soak(tmp_path, "redis")
    s.env.update(redis_env)  # the workers share the server and this test's prefix
    yield s
    s.stop()


def _past_schedule(app: App, key: str = "beat", interval: float = 1.0) -> Schedule:
    past = time.time() - 100.0
    s = Schedule(key=key, task="report", interval=interval, anchor=past, next_run_at=past, misfire="catch_up")
    return app.queue.upsert_schedule(s)  # type: ignore[attr-defined, no-any-return]


def test_the_redis_queue_is_a_schedule_store(app: App) -> None:
    assert isinstance(app.queue, RedisJobQueue) and isinstance(app.queue, BaseScheduleStore)


def test_schedule_keys_live_under_the_prefix(app: App, prefix: str) -> None:
    name = f"nightly-{prefix}"  # other tests share the server: find this test's keys by name
    s = _past_schedule(app, key=name)
    assert s.next_run_at is not None
    store: Any = app.queue
    assert store.claim_tick(s.key, s.next_run_at, s.make_job(s.next_run_at, time.time()), s.next_run_at + 1)
    named = {k.decode() for k in store.client.keys(f"*{name}*")}
    assert named == {f"{prefix}:s:k:{name}", f"{prefix}:s:ticks:{name}"}, named
    keys = {k.decode() for k in store.client.keys(f"{prefix}:*")}
    assert {f"{prefix}:s:all", f"{prefix}:s:next", f"{prefix}:q:ready"} <= keys
    assert store.next_due_at() == pytest.approx(s.next_run_at + 1)
    store.set_schedule_paused(s.key, True)
    assert store.next_due_at() is None and store.due_schedules(time.time()) == []
    assert store.delete_schedule(s.key)
    left = {k.decode() for k in store.client.keys(f"{prefix}:s:*")}
    assert left == set(), left


def test_a_claim_after_an_upsert_wrote_older_progress_back_is_refused(app: App) -> None:
    """A worker that read a schedule before another claimed a tick, then stored it
    (registering a declared schedule), puts the old next_run_at back: the claimed
    tick must still not be claimed twice."""
    s = _past_schedule(app)
    first = s.next_run_at
    assert first is not None
    store: Any = app.queue
    assert store.claim_tick(s.key, first, s.make_job(first, time.time()), first + 1)
    store.upsert_schedule(s)  # the stale copy: next_run_at == first again
    assert not store.claim_tick(s.key, first, s.make_job(first, time.time()), first + 1)
    assert [j.id for j in store.claim(10)] == [tick_job_id(s.key, first)]


def test_ticks_raced_by_processes_are_each_queued_once(app: App, redis_env: dict[str, str], tmp_path: Path) -> None:
    """Four processes (not threads: separate clients) race for the same 30 ticks."""
    s = _past_schedule(app, interval=1.0)
    first = s.next_run_at
    assert first is not None
    code = (
        "import sys, time; from nuvom.app import App; from nuvom.config import Settings; "
        "from nuvom._scheduler import fire_due; "
        "app = App(Settings(queue_backend='redis', result_backend='redis')); "
        "go = float(sys.argv[1]); time.sleep(max(0.0, go - time.time())); "
        f"print(len(fire_due(app.queue, app.queue, {first} + 29.5, 600.0)))"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}, **redis_env}
    env["NUVOM_DATA_DIR"] = str(tmp_path / "data")
    go = time.time() + 1.5  # the processes start together after their imports
    procs = [
        subprocess.Popen([sys.executable, "-c", code, repr(go)], env=env, stdout=subprocess.PIPE) for _ in range(4)
    ]
    fired = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(fired) == 30, fired
    jobs = app.queue.claim(100)
    assert sorted(j.id for j in jobs) == sorted(tick_job_id(s.key, first + k) for k in range(30))


def test_pause_resume_run_now_and_cancel_through_the_sdk_with_a_worker(app: App) -> None:
    ran: list[Any] = []
    seen = threading.Event()

    @app.task(name="report")
    def report(n: int = 0) -> int:
        ran.append(n)
        seen.set()
        return n

    s = report.schedule(5, interval=3600)  # first tick an hour away: only run-now runs it
    from nuvom.worker import Worker

    with Worker(app=app, max_workers=2):
        assert sdk.pause_schedule(s.key, app=app).paused  # type: ignore[union-attr]
        job = sdk.run_schedule_now(s.key, app=app)  # runs even while paused
        assert job is not None and seen.wait(10) and ran == [5]
        assert app.results.wait(job.id, 10) is not None
        assert not sdk.resume_schedule(s.key, app=app).paused  # type: ignore[union-attr]
        assert [x.key for x in sdk.list_schedules(app=app)] == [s.key]
        assert sdk.cancel_schedule(s.key, app=app)
        assert sdk.get_schedule(s.key, app=app) is None and sdk.run_schedule_now(s.key, app=app) is None


def test_nuvom_schedule_list_shows_redis_schedules(app: App, redis_env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("nuvom.cli")  # nuvom-cli: run by the e2e environment (hatch.toml)
    s = _past_schedule(app, key="nightly")
    sdk.pause_schedule(s.key, app=app)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}, **redis_env}
    env.update(NUVOM_QUEUE_BACKEND="redis", NUVOM_RESULT_BACKEND="redis", NUVOM_DATA_DIR=str(tmp_path / "data"))
    out = subprocess.run(
        [sys.executable, "-m", "nuvom.cli", "schedule", "list", "--format", "json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    rows = listed if isinstance(listed, list) else listed.get("schedules", listed)
    assert [(r["key"], r["paused"]) for r in rows] == [("nightly", True)], rows
