"""Worker presence on SQLite (nuvom_workers, schema version 5): publish, list,
expire, remove, and real worker processes seen from another process."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from nuvom.job import Job
from nuvom.plugins.contracts import GONE_KEEP_SECS, WorkerInfo
from nuvom.sqlite import SQLiteJobQueue

from .conftest import Project, wait_until


def info(worker_id: str, heartbeat_at: float | None = None, ttl: float = 15.0, **fields: object) -> WorkerInfo:
    now = time.time()
    values: dict[str, object] = {
        "worker_id": worker_id,
        "host": "host-a",
        "pid": 1,
        "slots": 4,
        "busy": 0,
        "started_at": now - 60,
        "heartbeat_at": now if heartbeat_at is None else heartbeat_at,
        "ttl_secs": ttl,
    }
    values.update(fields)
    return WorkerInfo.model_validate(values)


def test_a_published_worker_is_listed_by_another_connection(db_path: Path, queue: SQLiteJobQueue) -> None:
    record = info("a:1", busy=2, current=["f" * 32], jobs_done=3, jobs_failed=1, store=queue.describe())
    queue.publish_worker(record)
    other = SQLiteJobQueue(path=db_path)
    try:
        assert other.list_workers() == [record]
        queue.publish_worker(info("a:1", busy=0))  # replaced, not added
        assert [(w.worker_id, w.busy) for w in other.list_workers() or []] == [("a:1", 0)]
    finally:
        other.close()
    assert queue.describe() == f"sqlite {db_path}"


def test_gone_workers_are_listed_greyed_then_dropped(queue: SQLiteJobQueue) -> None:
    now = time.time()
    queue.publish_worker(info("gone:1", heartbeat_at=now - 30, ttl=15))
    queue.publish_worker(info("old:2", heartbeat_at=now - 15 - GONE_KEEP_SECS - 1, ttl=15))
    queue.publish_worker(info("live:3"))
    assert [(w.worker_id, w.is_live()) for w in queue.list_workers() or []] == [("live:3", True), ("gone:1", False)]
    # The heartbeat that came after it deleted the old row.
    rows = queue.db.read(lambda c: c.execute("SELECT worker_id FROM nuvom_workers ORDER BY 1").fetchall())
    assert rows == [("gone:1",), ("live:3",)]


def test_a_removed_worker_is_gone_at_once(queue: SQLiteJobQueue) -> None:
    queue.publish_worker(info("a:1"))
    queue.publish_worker(info("b:2"))
    queue.remove_worker("a:1")
    assert [w.worker_id for w in queue.list_workers() or []] == ["b:2"]


def test_an_unreadable_row_is_dropped_not_fatal(queue: SQLiteJobQueue) -> None:
    queue.publish_worker(info("good:1"))
    with queue.db.write() as conn:
        conn.execute("INSERT INTO nuvom_workers VALUES ('bad:2', 0, 1e12, '{not json')")
    assert [w.worker_id for w in queue.list_workers() or []] == ["good:1"]
    assert queue.db.read(lambda c: c.execute("SELECT count(*) FROM nuvom_workers").fetchone()[0]) == 1


def test_worker_processes_are_seen_live_gone_and_removed(project: Project, db_path: Path) -> None:
    killed, stopped = project.start_workers(2, threads=2, NUVOM_HEARTBEAT_SECS="0.2")
    queue = SQLiteJobQueue(path=db_path)
    try:
        wait_until(lambda: {w.pid for w in queue.list_workers() or []} == {killed.pid, stopped.pid}, 10, "both listed")
        jobs = [Job(func_name="slow", task_path="tasks:slow", args=[f"k{i}", 1.0]) for i in range(2)]
        queue.enqueue_many(jobs)
        wait_until(
            lambda: {i for w in queue.list_workers() or [] for i in w.current} == {j.id for j in jobs},
            10,
            "the running jobs listed",
        )
        wait_until(lambda: sum(w.jobs_done for w in queue.list_workers() or []) == 2, 20, "jobs counted")
        killed.send_signal(signal.SIGKILL)
        wait_until(
            lambda: [w.is_live() for w in queue.list_workers() or [] if w.pid == killed.pid] == [False], 10, "gone"
        )
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(30) == 0
        assert [w.pid for w in queue.list_workers() or []] == [killed.pid]
    finally:
        queue.close()
