"""Worker presence (BaseJobQueue.publish_worker / remove_worker / list_workers)
on core's memory and file queues, and the worker that publishes it: at start,
every NUVOM_HEARTBEAT_SECS from its watchdog, removed at a clean stop, gone
(greyed, then dropped) when killed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom import sdk
from nuvom.app import App
from nuvom.backends.file import FileJobQueue
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.config import load_settings
from nuvom.errors import BackendError, ConfigError
from nuvom.job import Job
from nuvom.plugins.contracts import GONE_KEEP_SECS, BaseJobQueue, WorkerInfo
from nuvom.worker import Worker

from ._waiting import wait_until


def info(
    worker_id: str = "host-a:1:abc", heartbeat_at: float | None = None, ttl: float = 15.0, **fields: object
) -> WorkerInfo:
    now = time.time()
    values: dict[str, object] = {
        "worker_id": worker_id,
        "host": "host-a",
        "pid": 1,
        "executor": "thread",
        "slots": 4,
        "busy": 1,
        "started_at": now - 60,
        "heartbeat_at": now if heartbeat_at is None else heartbeat_at,
        "jobs_done": 7,
        "jobs_failed": 2,
        "current": ["a" * 32],
        "store": "test",
        "version": "1.0",
        "ttl_secs": ttl,
    }
    values.update(fields)
    return WorkerInfo.model_validate(values)


@pytest.fixture(params=["memory", "file"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseJobQueue]:
    q: BaseJobQueue = (
        MemoryJobQueue() if request.param == "memory" else FileJobQueue(load_settings(data_dir=tmp_path / "d"))
    )
    yield q
    q.close()


def test_a_published_worker_is_listed_as_published(queue: BaseJobQueue) -> None:
    record = info()
    queue.publish_worker(record)
    [listed] = queue.list_workers() or []
    assert listed == record and listed.is_live()


def test_publishing_again_replaces_the_record(queue: BaseJobQueue) -> None:
    queue.publish_worker(info(busy=1, jobs_done=7))
    queue.publish_worker(info(busy=3, jobs_done=9))
    [listed] = queue.list_workers() or []
    assert (listed.busy, listed.jobs_done) == (3, 9)


def test_a_worker_past_its_ttl_is_listed_gone_then_dropped(queue: BaseJobQueue) -> None:
    now = time.time()
    queue.publish_worker(info("live:1", heartbeat_at=now))
    queue.publish_worker(info("gone:2", heartbeat_at=now - 20, ttl=15))  # 5 s past its ttl
    queue.publish_worker(info("dropped:3", heartbeat_at=now - 15 - GONE_KEEP_SECS - 1, ttl=15))
    listed = queue.list_workers() or []
    assert [(w.worker_id, w.is_live()) for w in listed] == [("live:1", True), ("gone:2", False)]
    if isinstance(queue, FileJobQueue):  # the dropped record's file is deleted by the listing
        assert len(os.listdir(Path(queue.root) / "workers")) == 2


def test_a_removed_worker_is_no_longer_listed(queue: BaseJobQueue) -> None:
    queue.publish_worker(info("a:1"))
    queue.publish_worker(info("b:2"))
    queue.remove_worker("a:1")
    queue.remove_worker("never-published")
    assert [w.worker_id for w in queue.list_workers() or []] == ["b:2"]


def test_a_queue_without_presence_says_so_with_none() -> None:
    class Plain(MemoryJobQueue):
        publish_worker = BaseJobQueue.publish_worker
        remove_worker = BaseJobQueue.remove_worker
        list_workers = BaseJobQueue.list_workers

    queue = Plain()
    queue.publish_worker(info())
    assert queue.list_workers() is None
    assert sdk.list_workers(app=App(queue=queue, results=MemoryResultBackend())) is None


def test_an_unreadable_worker_file_is_quarantined_not_fatal(tmp_path: Path) -> None:
    queue = FileJobQueue(load_settings(data_dir=tmp_path / "d"))
    queue.publish_worker(info("good:1"))
    (Path(queue.root) / "workers" / "0123456789abcdef01234567.worker").write_bytes(b"{not json")
    assert [w.worker_id for w in queue.list_workers() or []] == ["good:1"]
    assert any(p.name.endswith(".corrupt") for p in (Path(queue.root) / "corrupt").iterdir())


def test_a_record_is_bounded_and_validated() -> None:
    with pytest.raises(ValueError):
        info(current=["x"] * 51)  # at most CURRENT_MAX job ids
    assert WorkerInfo.from_json(b'{"worker_id": ""}') is None
    record = info()
    assert WorkerInfo.from_json(record.to_json()) == record


def test_the_store_is_described_without_credentials(tmp_path: Path) -> None:
    queue = FileJobQueue(load_settings(data_dir=tmp_path / "d"))
    assert queue.describe() == f"file {tmp_path / 'd'}"
    assert MemoryJobQueue().describe().startswith("memory")


# -- the worker that publishes -------------------------------------------------------
def test_a_worker_publishes_itself_while_it_runs_and_removes_itself_at_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUVOM_HEARTBEAT_SECS", "0.1")
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    app = App(queue=queue, results=results)

    @app.task(name="presence_wait")
    def wait(path: str) -> str:
        wait_until(lambda: Path(path).exists(), 30)
        return "ok"

    @app.task(name="presence_fail")
    def fail() -> None:
        raise ValueError("no")

    release = Path("release")
    with Worker(app=app, max_workers=3) as worker:
        [me] = sdk.list_workers(app=app) or []
        assert (me.worker_id, me.pid, me.slots, me.executor, me.queues) == (
            worker.worker_id,
            os.getpid(),
            3,
            "thread",
            ["default"],
        )
        assert me.ttl_secs == pytest.approx(0.3) and me.store.startswith("memory") and me.version
        job = wait.delay(str(release))
        # The heartbeat (every 0.1 s, from the watchdog) shows the running job.
        wait_until(lambda: (sdk.list_workers(app=app) or [me])[0].current == [job.id])
        first = (sdk.list_workers(app=app) or [me])[0]
        assert first.busy == 1 and first.heartbeat_at > me.heartbeat_at
        release.touch()
        fail.delay()
        assert job.get(timeout=10) == "ok"
        wait_until(lambda: (w := (sdk.list_workers(app=app) or [me])[0]).jobs_done == 2 and w.busy == 0)
        assert (sdk.list_workers(app=app) or [me])[0].jobs_failed == 1
    assert sdk.list_workers(app=app) == []  # a clean stop removes the record


def test_publishing_errors_are_logged_once_and_the_watchdog_keeps_working(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NUVOM_HEARTBEAT_SECS", "0.1")

    class Refusing(MemoryJobQueue):
        failing = True
        calls = 0

        def publish_worker(self, info: WorkerInfo) -> None:
            type(self).calls += 1
            if self.failing:
                raise BackendError("the store is read-only")
            super().publish_worker(info)

    queue, results = Refusing(), MemoryResultBackend()
    app = App(queue=queue, results=results)

    @app.task(name="presence_sleepy", timeout_secs=0.3)
    def sleepy() -> None:
        time.sleep(5)

    caplog.set_level(logging.INFO, logger="nuvom")
    with Worker(app=app, max_workers=1):
        job = sleepy.delay()
        wait_until(lambda: Refusing.calls >= 5)
        # The watchdog still enforces timeouts while every heartbeat fails.
        record = results.wait(job.id, timeout=10)
        assert record is not None and record.error is not None and record.error.type == "TimeoutError"
        failed = [r for r in caplog.records if "presence failed" in r.getMessage()]
        assert len(failed) == 1 and "read-only" in failed[0].getMessage()
        Refusing.failing = False
        wait_until(lambda: queue.list_workers())
        assert sum("works again" in r.getMessage() for r in caplog.records) == 1


def test_the_heartbeat_setting_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("0", "-1", "inf", "nan", "100000"):
        monkeypatch.setenv("NUVOM_HEARTBEAT_SECS", bad)
        with pytest.raises(ConfigError, match="NUVOM_HEARTBEAT_SECS"):
            load_settings()
    monkeypatch.setenv("NUVOM_HEARTBEAT_SECS", "2.5")
    assert load_settings().heartbeat_secs == 2.5


TASKS = """
import os, time
from pathlib import Path
from nuvom.task import task


@task
def hold(path):
    while not Path(path).exists():
        time.sleep(0.01)
    return path
"""

WORKER = (
    "import os, pathlib, tasks; from nuvom.worker import Worker; w = Worker(max_workers=2).start(); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); w.run_forever()"
)


def test_worker_processes_on_the_file_store_are_seen_live_gone_and_removed(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    data = tmp_path / "shared"
    env.update(
        NUVOM_QUEUE_BACKEND="file",
        NUVOM_RESULT_BACKEND="file",
        NUVOM_DATA_DIR=str(data),
        NUVOM_HEARTBEAT_SECS="0.2",
        PYTHONPATH=str(tmp_path),
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 2, 60)
        queue = FileJobQueue(load_settings(data_dir=data))
        pids = {p.pid for p in procs}
        wait_until(lambda: {w.pid for w in queue.list_workers() or []} == pids, 10)
        job = Job(func_name="hold", task_path="tasks:hold", args=[str(tmp_path / "go")])
        queue.enqueue(job)
        # The worker that claimed it names it among its current jobs, seen from this process.
        wait_until(lambda: any(w.current == [job.id] for w in queue.list_workers() or []), 10)
        holder = next(w for w in queue.list_workers() or [] if w.current == [job.id])
        (tmp_path / "go").touch()
        wait_until(lambda: any(w.pid == holder.pid and w.jobs_done == 1 for w in queue.list_workers() or []), 10)
        killed = next(p for p in procs if p.pid == holder.pid)
        stopped = next(p for p in procs if p.pid != holder.pid)
        killed.send_signal(signal.SIGKILL)
        # Killed: no goodbye, so it stays listed, not live, once three heartbeats are missed.
        wait_until(
            lambda: (
                [(w.pid, w.is_live()) for w in queue.list_workers() or [] if w.pid == killed.pid]
                == [(killed.pid, False)]
            ),
            10,
        )
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(30) == 0
        assert [w.pid for w in queue.list_workers() or []] == [killed.pid]  # the clean stop removed its record
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
