"""Worker presence on PostgreSQL (nuvom_workers): publish, list, expire, remove,
and real worker processes seen from another process."""

from __future__ import annotations

import signal
import time

from nuvom.config import load_settings
from nuvom.plugins.contracts import GONE_KEEP_SECS, WorkerInfo
from nuvom.postgres import PostgresJobQueue, PostgresSettings

from .conftest import Project, jobs_for, wait_until


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


def stored_ids(queue: PostgresJobQueue) -> list[str]:
    statement = f"SELECT worker_id FROM {queue.sql.workers} ORDER BY 1"
    return [r[0] for r in queue.db.run("a test", lambda c: c.execute(statement).fetchall())]


def test_a_published_worker_is_listed_by_another_process(queue: PostgresJobQueue) -> None:
    record = info("a:1", busy=2, current=["f" * 32], jobs_done=3, jobs_failed=1)
    queue.publish_worker(record)
    other = PostgresJobQueue(
        load_settings(), postgres=queue.postgres_settings.model_copy(update={"postgres_pool_size": 3})
    )
    try:
        assert other.list_workers() == [record]
        queue.publish_worker(info("a:1", busy=0))
        assert [(w.worker_id, w.busy) for w in other.list_workers() or []] == [("a:1", 0)]
    finally:
        other.close()


def test_gone_workers_are_listed_greyed_then_dropped(queue: PostgresJobQueue) -> None:
    now = time.time()
    queue.publish_worker(info("gone:1", heartbeat_at=now - 30, ttl=15))
    queue.publish_worker(info("old:2", heartbeat_at=now - 15 - GONE_KEEP_SECS - 1, ttl=15))
    queue.publish_worker(info("live:3"))
    assert [(w.worker_id, w.is_live()) for w in queue.list_workers() or []] == [("live:3", True), ("gone:1", False)]
    assert stored_ids(queue) == ["gone:1", "live:3"]  # the heartbeat after it deleted the old record


def test_a_removed_worker_is_gone_at_once(queue: PostgresJobQueue) -> None:
    queue.publish_worker(info("a:1"))
    queue.publish_worker(info("b:2"))
    queue.remove_worker("a:1")
    assert [w.worker_id for w in queue.list_workers() or []] == ["b:2"]


def test_an_unreadable_record_is_dropped_not_fatal(queue: PostgresJobQueue) -> None:
    queue.publish_worker(info("good:1"))
    statement = f"""INSERT INTO {queue.sql.workers} VALUES ('bad:2', 0, 9e12, '{{"worker_id": 5}}')"""
    queue.db.run("a test", lambda c: c.execute(statement))  # type: ignore[arg-type]
    assert [w.worker_id for w in queue.list_workers() or []] == ["good:1"]
    assert stored_ids(queue) == ["good:1"]


def test_the_store_is_described_without_the_user_or_password() -> None:
    queue = PostgresJobQueue(
        load_settings(),
        postgres=PostgresSettings(postgres_url="postgresql://app:hunter2@db.example:5432/shop", postgres_schema="jobs"),
    )
    try:
        assert queue.describe() == "postgres postgresql://db.example:5432/shop (schema jobs)"
    finally:
        queue.close()


def test_worker_processes_are_seen_live_gone_and_removed(project: Project, queue: PostgresJobQueue) -> None:
    killed, stopped = project.start_workers(2, threads=2, NUVOM_HEARTBEAT_SECS="0.2")
    wait_until(lambda: {w.pid for w in queue.list_workers() or []} == {killed.pid, stopped.pid}, 10, "both listed")
    [job] = jobs_for("slow", ["k1"], 1.0)
    queue.enqueue(job)
    wait_until(lambda: any(w.current == [job.id] for w in queue.list_workers() or []), 10, "the running job listed")
    wait_until(lambda: sum(w.jobs_done for w in queue.list_workers() or []) == 1, 20, "the job counted")
    killed.send_signal(signal.SIGKILL)
    wait_until(lambda: [w.is_live() for w in queue.list_workers() or [] if w.pid == killed.pid] == [False], 10, "gone")
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(30) == 0
    assert [w.pid for w in queue.list_workers() or []] == [killed.pid]
    assert all(w.store.startswith("postgres postgresql://127.0.0.1:") for w in queue.list_workers() or [])
