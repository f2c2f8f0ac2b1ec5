"""A file written by schema version 5 (before job control) is migrated in
place to version 6: every queued, delayed and claimed job and every result
kept, the queued jobs claimed in the default queue as before."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from nuvom import serialization
from nuvom.job import Job, JobStatus
from nuvom.sqlite import SCHEMA_VERSION, SQLiteJobQueue, SQLiteResultBackend

# Schema version 5 as nuvom-sqlite wrote it (sqlite_master of a file its code
# created), frozen here so that later edits to the migrations cannot change
# what this test starts from. The tag triggers are left out: no result here is tagged.
SCHEMA_V5 = """
CREATE TABLE nuvom_schema (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL, by TEXT NOT NULL);
CREATE TABLE nuvom_queue (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    func_name    TEXT    NOT NULL,
    state        INTEGER NOT NULL DEFAULT 0,   -- 0 waiting, 1 claimed
    ready_at     REAL    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    timeout_secs REAL,
    claim_token  INTEGER,
    claimed_by   TEXT,
    created_at   REAL    NOT NULL,
    payload      BLOB    NOT NULL
, started_at REAL);
CREATE INDEX nuvom_queue_ready ON nuvom_queue (ready_at);
CREATE TABLE nuvom_results (
    id            TEXT    PRIMARY KEY,
    func_name     TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    worker_id     TEXT,
    created_at    REAL,
    started_at    REAL,
    finished_at   REAL    NOT NULL,
    error_type    TEXT,
    error_message TEXT,
    payload       BLOB    NOT NULL
, tags TEXT);
CREATE INDEX nuvom_results_finished ON nuvom_results (finished_at);
CREATE INDEX nuvom_results_status ON nuvom_results (status, finished_at);
CREATE INDEX nuvom_results_task ON nuvom_results (func_name, finished_at);
CREATE TABLE nuvom_schedules (
    key          TEXT    PRIMARY KEY,
    paused       INTEGER NOT NULL DEFAULT 0,
    next_run_at  REAL,
    last_run_at  REAL,
    last_job_id  TEXT,
    updated_at   REAL    NOT NULL,
    payload      BLOB    NOT NULL
);
CREATE INDEX nuvom_schedules_due ON nuvom_schedules (paused, next_run_at);
CREATE TABLE nuvom_schedule_ticks (
    schedule_key TEXT    NOT NULL,
    tick_ms      INTEGER NOT NULL,
    job_id       TEXT,
    claimed_at   REAL    NOT NULL,
    PRIMARY KEY (schedule_key, tick_ms)
) WITHOUT ROWID;
CREATE TABLE nuvom_job_tags (
    tag         TEXT NOT NULL,
    finished_at REAL NOT NULL,
    job_id      TEXT NOT NULL,
    status      TEXT NOT NULL,
    func_name   TEXT NOT NULL,
    PRIMARY KEY (tag, finished_at, job_id)
) WITHOUT ROWID;
CREATE TABLE nuvom_workers (
    worker_id    TEXT PRIMARY KEY,
    heartbeat_at REAL NOT NULL,
    drop_at      REAL NOT NULL,
    info         TEXT NOT NULL
);
INSERT INTO nuvom_schema VALUES (1, 0, 'nuvom-sqlite'), (2, 0, 'nuvom-sqlite'), (3, 0, 'nuvom-sqlite'),
    (4, 0, 'nuvom-sqlite'), (5, 0, 'nuvom-sqlite');
"""

# The fields a job had before job control: its payloads lack the new ones.
_NEW_FIELDS = ("queue", "priority", "unique_key", "flow")


def old_payload(job: Job) -> bytes:
    return serialization.dumps({k: v for k, v in job.to_dict().items() if k not in _NEW_FIELDS})


def write_v5_file(path: Path, queued: list[Job], delayed: Job, claimed: Job, results: list[Job]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_V5)
    now = time.time()
    conn.execute("BEGIN")
    insert = (
        "INSERT INTO nuvom_queue (id, func_name, state, ready_at, attempts, timeout_secs, claim_token, claimed_by, "
        "created_at, payload, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    for i, job in enumerate(queued):
        conn.execute(insert, (job.id, job.func_name, 0, now - 10 + i, 0, None, None, None, now, old_payload(job), None))
    conn.execute(insert, (delayed.id, "record", 0, now + 3600, 0, None, None, None, now, old_payload(delayed), None))
    # Claimed and started by a worker that died: its lease ran out before the upgrade.
    conn.execute(
        insert, (claimed.id, "record", 1, now - 1, 1, 5.0, 42, "gone:1", now - 100, old_payload(claimed), now - 60)
    )
    for job in results:
        conn.execute(
            "INSERT INTO nuvom_results (id, func_name, status, attempts, worker_id, created_at, started_at, "
            "finished_at, error_type, error_message, payload, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.func_name, "SUCCESS", 1, "w", now, now, now, None, None, old_payload(job), None),
        )
    conn.execute("COMMIT")
    conn.close()


def dump(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


def test_a_file_of_schema_version_5_is_migrated_in_place_keeping_every_job_and_result(db_path, caplog):
    queued = [Job(func_name="record", args=[i]) for i in range(3)]
    delayed = Job(func_name="record", args=["later"])
    claimed = Job(func_name="record", args=["claimed"], timeout_secs=5.0)
    stored = [Job(func_name="record", args=[f"r{i}"], status=JobStatus.SUCCESS, result=i) for i in range(4)]
    write_v5_file(db_path, queued, delayed, claimed, stored)
    old_columns = "seq, id, func_name, state, ready_at, attempts, timeout_secs, claim_token, claimed_by, created_at"
    queue_before = dump(db_path, f"SELECT {old_columns}, payload, started_at FROM nuvom_queue")
    results_before = dump(db_path, "SELECT * FROM nuvom_results")

    with caplog.at_level(logging.INFO, logger="nuvom.sqlite"):
        queue = SQLiteJobQueue(path=db_path)
        assert queue.qsize() == 4  # opening migrates
    assert SCHEMA_VERSION == 6
    assert [r.getMessage() for r in caplog.records if r.name == "nuvom.sqlite"] == [
        f"SQLite database {db_path}: schema migrated from version 5 to 6"
    ]
    assert dump(db_path, "SELECT version FROM nuvom_schema") == [(v,) for v in range(1, 7)]
    # Every row kept as it was; the new columns hold their defaults.
    assert dump(db_path, f"SELECT {old_columns}, payload, started_at FROM nuvom_queue") == queue_before
    assert (
        dump(db_path, "SELECT queue, priority, unique_key, cancel_at, awaited FROM nuvom_queue")
        == [("default", 0, None, None, None)] * 5
    )
    assert dump(db_path, "SELECT * FROM nuvom_results") == results_before
    indexes = {row[0] for row in dump(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "nuvom_queue_claim" in indexes and "nuvom_queue_ready" not in indexes

    # The migrated file works as a new one: the old jobs are the default queue's,
    # in due order, the dead worker's claim recovered as a lost run.
    results = SQLiteResultBackend(path=db_path)
    got = queue.claim_batch(10, 0, lambda: 0, ("default",))
    assert [j.id for j in got] == [*(j.id for j in queued), claimed.id]  # its lease ended last
    assert got[-1].attempts == 2 and got[-1].mark_lost_runs(time.time()) == 1
    assert all(j.queue == "default" and j.priority == 0 and j.flow is None for j in got)
    now = time.time()
    for job in got:
        job.status, job.result, job.finished_at = JobStatus.SUCCESS, job.args[0], now
    queue.settle(got, [], [], results)
    assert results.count() == len(stored) + 4 and queue.qsize() == 1
    assert [j.args for j in queue.peek()] == [["later"]]
    assert {r.id: r.result for r in results.list_jobs(limit=100)}[stored[2].id] == 2
    results.close()
    queue.close()
