"""The store's own faults (issue 12, items 10 and 11): poison rows are
quarantined with the reason and the queue goes on; a read-only file that
becomes writable recovers without a restart; once SQLite reports the file
corrupt, every process refuses to write to it, saying how to recover."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from nuvom.errors import BackendError
from nuvom.job import Job, JobStatus
from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend

from .test_errors import make_readonly, undo_readonly


def make(n: int) -> list[Job]:
    return [Job(func_name="record", args=[f"k{i}"]) for i in range(n)]


def test_a_row_whose_task_name_is_not_utf8_is_quarantined_and_the_others_are_claimed(
    queue: SQLiteJobQueue, results: SQLiteResultBackend
) -> None:
    jobs = make(20)
    queue.enqueue_many(jobs)
    conn = queue.db.connection()
    conn.execute("UPDATE nuvom_queue SET func_name = CAST(X'FF6E616D65' AS TEXT) WHERE id = ?", (jobs[0].id,))
    claimed = queue.claim(50)
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs[1:])
    record = results.get_full(jobs[0].id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and "not valid UTF-8" in record.error.message
    assert record.result["func_name"] == b"\xffname" and record.result["payload"] == jobs[0].to_bytes()
    assert [r.id for r in results.list_jobs(status="FAILED")] == [jobs[0].id]
    assert queue.get(jobs[0].id) is None  # out of the queue for good


def test_a_row_holding_another_jobs_payload_is_quarantined_once(
    queue: SQLiteJobQueue, results: SQLiteResultBackend
) -> None:
    a, b = make(2)
    queue.enqueue_many([a, b])
    conn = queue.db.connection()
    conn.execute("UPDATE nuvom_queue SET payload = ? WHERE id = ?", (b.to_bytes(), a.id))
    claimed = queue.claim(10)
    assert [j.id for j in claimed] == [b.id]
    record = results.get_full(a.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and f"holds job {b.id!r}" in record.error.message
    assert queue.get(a.id) is None and queue.claim(10) == []


def test_a_read_only_file_made_writable_recovers_without_a_restart(db_path: Path) -> None:
    SQLiteJobQueue(path=db_path).qsize()  # create it
    if not make_readonly(db_path):
        pytest.skip("cannot make a file read-only here (root without chattr)")
    try:
        queue = SQLiteJobQueue(path=db_path)
        with pytest.raises(BackendError, match="read-only"):
            queue.enqueue(Job(func_name="record"))
    finally:
        undo_readonly(db_path)
    deadline = time.monotonic() + 10
    while True:
        try:
            queue.enqueue(Job(func_name="record"))
            break
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert len(queue.claim(10)) == 1


def test_once_sqlite_reports_corruption_every_process_refuses_to_write(db_path: Path) -> None:
    queue = SQLiteJobQueue(path=db_path)
    queue.enqueue_many([Job(func_name="record", args=["x" * 200]) for _ in range(2000)])
    queue.db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(db_path)
    with open(db_path, "r+b") as f:  # garbage over all but the first pages
        f.seek(4096 * 3)
        f.write(os.urandom(size - 4096 * 3))
    producer = SQLiteJobQueue(path=db_path)  # another process's view
    with pytest.raises(BackendError, match="corrupt"):
        SQLiteJobQueue(path=db_path).qsize()  # a reader in another process: SQLite reports the damage
    with pytest.raises(BackendError, match="corrupt"):
        queue.claim(10)  # workers stop claiming
    with pytest.raises(BackendError, match="move it aside") as info:
        producer.enqueue(Job(func_name="record"))
    assert "docs/sqlite.md" in str(info.value)
    with pytest.raises(BackendError, match="corrupt"):
        SQLiteJobQueue(path=db_path).enqueue(Job(func_name="record"))
    # Recovery as docs/sqlite.md says: move it aside; a new file works at once.
    os.replace(db_path, f"{db_path}.broken")
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{db_path}{suffix}"):
            os.replace(f"{db_path}{suffix}", f"{db_path}.broken{suffix}")
    fresh = SQLiteJobQueue(path=db_path)
    fresh.enqueue(Job(func_name="record"))
    assert fresh.qsize() == 1
