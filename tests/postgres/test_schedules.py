"""Schedules on PostgreSQL: core's schedule-store tests (tests/core/test_schedule.py)
and its soak with three real worker processes (tests/core/test_schedule_processes.py)
run here against a real server, plus what only this store has (the one-statement
tick claim racing across processes)."""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from nuvom.app import App
from nuvom.config import Settings
from nuvom.plugins.contracts import BaseScheduleStore
from nuvom.postgres import PostgresJobQueue
from nuvom.schedule import Schedule, tick_job_id

CORE = Path(__file__).resolve().parents[1] / "core"


def _load(name: str) -> ModuleType:
    """A module of core's tests, loaded by path: its tests are collected here again,
    with this module's fixtures (``app``, ``soak``) pointing them at PostgreSQL."""
    spec = importlib.util.spec_from_file_location(f"_core_pg_{name}", CORE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:
    _core: dict[str, Any] = vars(_load("test_schedule"))
except pytest.skip.Exception:  # no cronsim
    _core = {}
_soak = _load("test_schedule_processes")
for _name, _test in list(_core.items()):
    if _name.startswith("test_") and "app" in inspect.signature(_test).parameters:
        globals()[_name] = _test
if "NUVOM_TEST_SCHEDULE_SECS" not in os.environ:
    _soak.SOAK_SECS = 12.0  # the 3-worker soak: ~12 ticks at interval=1
posix_only = pytest.mark.skipif(os.name == "nt", reason="SIGKILL and O_APPEND logs are POSIX")
test_three_workers_fire_each_tick_of_an_interval_schedule_once = posix_only(
    _soak.test_three_workers_fire_each_tick_of_an_interval_schedule_once
)
test_workers_killed_as_they_fire_ticks_lose_and_double_none = posix_only(
    _soak.test_workers_killed_as_they_fire_ticks_lose_and_double_none
)


@pytest.fixture
def app(pg_env: dict[str, str], tmp_path: Path) -> Iterator[App]:
    a = App(Settings(queue_backend="postgres", result_backend="postgres", data_dir=tmp_path / "data"))
    yield a
    a.close()


@pytest.fixture
def soak(pg_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    s = _soak.Soak(tmp_path, "postgres")
    s.env.update(pg_env)  # the workers share the server and this test's schema
    yield s
    s.stop()


def _past_schedule(app: App, key: str = "beat", interval: float = 1.0) -> Schedule:
    past = time.time() - 100.0
    s = Schedule(key=key, task="report", interval=interval, anchor=past, next_run_at=past, misfire="catch_up")
    return app.queue.upsert_schedule(s)  # type: ignore[attr-defined, no-any-return]


def test_the_postgres_queue_is_a_schedule_store(app: App) -> None:
    assert isinstance(app.queue, PostgresJobQueue) and isinstance(app.queue, BaseScheduleStore)


def test_a_claim_after_an_upsert_wrote_older_progress_back_is_refused(app: App) -> None:
    """A worker that read a schedule before another claimed a tick, then stored it,
    puts the old next_run_at back: the claimed tick must still not be claimed twice."""
    s = _past_schedule(app)
    first = s.next_run_at
    assert first is not None
    store: Any = app.queue
    assert store.claim_tick(s.key, first, s.make_job(first, time.time()), first + 1)
    store.upsert_schedule(s)  # the stale copy: next_run_at == first again
    assert not store.claim_tick(s.key, first, s.make_job(first, time.time()), first + 1)
    assert [j.id for j in store.claim(10)] == [tick_job_id(s.key, first)]


def test_ticks_raced_by_processes_are_each_queued_once(app: App, pg_env: dict[str, str], tmp_path: Path) -> None:
    """Four processes (each its own connections) race for the same 30 ticks."""
    s = _past_schedule(app, interval=1.0)
    first = s.next_run_at
    assert first is not None
    code = (
        "import sys, time; from nuvom.app import App; from nuvom.config import Settings; "
        "from nuvom._scheduler import fire_due; "
        "app = App(Settings(queue_backend='postgres', result_backend='postgres')); app.queue.qsize(); "
        "go = float(sys.argv[1]); time.sleep(max(0.0, go - time.time())); "
        f"print(len(fire_due(app.queue, app.queue, {first} + 29.5, 600.0)))"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}, **pg_env}
    env["NUVOM_DATA_DIR"] = str(tmp_path / "data")
    go = time.time() + 2.0  # the processes start together after their imports
    procs = [
        subprocess.Popen([sys.executable, "-c", code, repr(go)], env=env, stdout=subprocess.PIPE) for _ in range(4)
    ]
    fired = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(fired) == 30, fired
    jobs = app.queue.claim(100)
    assert sorted(j.id for j in jobs) == sorted(tick_job_id(s.key, first + k) for k in range(30))
