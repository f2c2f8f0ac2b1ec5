"""The tag index (schema version 3): filtering by tag through ``nuvom_job_tags``,
kept in step with the results by every write and delete path, and the in-place
migration of a file written by schema version 2."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nuvom.job import Job, JobStatus
from nuvom.sqlite import SCHEMA_VERSION, SQLiteJobQueue, SQLiteResultBackend


def finished(i: int, base: float, *, tags: list[str], status: JobStatus = JobStatus.SUCCESS, func: str = "t") -> Job:
    # Several jobs share each instant, so paging must break ties by id.
    return Job(
        func_name=func,
        args=[i],
        status=status,
        attempts=1,
        started_at=base - 1,
        finished_at=base - (i // 3),
        tags=tags,
    )


def page_all(results: SQLiteResultBackend, size: int, **filters: object) -> list[Job]:
    out: list[Job] = []
    before = None
    while True:
        page = results.query(**filters, before=before, limit=size)  # type: ignore[arg-type]
        out.extend(page)
        if len(page) < size:
            return out
        before = (page[-1].finished_at, page[-1].id)


def newest_first(jobs: list[Job]) -> list[str]:
    return [j.id for j in sorted(jobs, key=lambda j: (j.finished_at, j.id), reverse=True)]


def tag_rows(db_path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db_path)
    try:
        return sorted(conn.execute("SELECT tag, job_id FROM nuvom_job_tags").fetchall())
    finally:
        conn.close()


def test_keyset_pages_by_tag_return_every_tagged_job_newest_first_once(results):
    base = time.time()
    odd = 'naïve "quoted", tag'  # JSON escaping and non-ASCII survive the index
    jobs = [
        finished(
            i,
            base,
            tags=(["common"] if i % 2 else []) + (["rare"] if i % 37 == 0 else []) + ([odd] if i % 5 == 0 else []),
            status=JobStatus.FAILED if i % 7 == 0 else JobStatus.SUCCESS,
            func=f"t{i % 3}",
        )
        for i in range(400)
    ]
    for start in range(0, len(jobs), 50):  # several transactions, as workers store them
        results.store(jobs[start : start + 50])

    for tag in ("common", "rare", odd):
        expected = newest_first([j for j in jobs if tag in j.tags])
        for size in (1, 7, 50):
            got = [j.id for j in page_all(results, size, tag=tag)]
            assert got == expected, (tag, size)
    assert results.query(tag="nobody-has-this") == []

    # Combined with status, task and time, still paged.
    want = [j for j in jobs if "common" in j.tags and j.status is JobStatus.FAILED]
    assert [j.id for j in page_all(results, 4, tag="common", status="failed")] == newest_first(want)
    want = [j for j in jobs if "common" in j.tags and j.func_name == "t1"]
    assert [j.id for j in page_all(results, 9, tag="common", task="t1")] == newest_first(want)
    since, until = base - 60, base - 20
    want = [j for j in jobs if "common" in j.tags and since <= j.finished_at < until]
    assert want
    assert [j.id for j in page_all(results, 6, tag="common", since=since, until=until)] == newest_first(want)


def test_storing_jobs_without_tags_sends_nothing_to_the_tag_index(results, db_path):
    results.count()  # the schema, before tracing
    conn = results.db.connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        results.store([finished(i, time.time(), tags=[]) for i in range(20)])
    finally:
        conn.set_trace_callback(None)
    assert not [s for s in statements if "nuvom_job_tags" in s or "json_each" in s], statements
    assert tag_rows(db_path) == []
    conn = results.db.connection()
    assert conn.execute("SELECT count(*) FROM nuvom_results WHERE tags IS NOT NULL").fetchone()[0] == 0


def test_a_replaced_or_deleted_result_leaves_no_stale_tag_rows(results, db_path):
    job = finished(0, time.time(), tags=["a", "b"])
    results.store([job])
    assert tag_rows(db_path) == [("a", job.id), ("b", job.id)]
    # Stored again under the same id (INSERT OR REPLACE), later and with another
    # outcome; other tags too, though a job's tags do not change in practice.
    job.tags, job.finished_at, job.status = ["b", "c"], time.time() + 5, JobStatus.FAILED
    results.store([job])
    assert tag_rows(db_path) == [("b", job.id), ("c", job.id)]
    assert results.query(tag="a") == []
    assert [j.status for j in results.query(tag="b")] == [JobStatus.FAILED]
    assert results.query(tag="b", status="SUCCESS") == []
    assert results.delete(job.id)
    assert tag_rows(db_path) == []
    assert results.query(tag="b") == []


def test_pruning_removes_the_tag_rows_of_pruned_results(db_path):
    results = SQLiteResultBackend(path=db_path, ttl_secs=60)
    now = time.time()
    old = [finished(i, now - 3600, tags=["x", f"old{i}"]) for i in range(30)]
    fresh = [finished(i, now, tags=["x"]) for i in range(5)]
    results.store(old + fresh)  # the first store prunes
    assert {job_id for _, job_id in tag_rows(db_path)} == {j.id for j in fresh}
    assert [j.id for j in results.query(tag="x")] == newest_first(fresh)
    results.store(old)  # stored again: pruning by an explicit age also clears them
    assert results.prune(older_than_secs=60) == 30
    assert {job_id for _, job_id in tag_rows(db_path)} == {j.id for j in fresh}
    results.close()


def test_jobs_completed_through_the_queue_are_found_by_tag(db_path):
    # The worker's path: the queue stores results in its own transaction (complete()).
    queue, results = SQLiteJobQueue(path=db_path), SQLiteResultBackend(path=db_path)
    jobs = [Job(func_name="t", args=[i], tags=["batch-7"] if i % 2 else []) for i in range(10)]
    queue.enqueue_many(jobs)
    claimed = queue.claim(10)
    for job in claimed:
        job.status, job.finished_at = JobStatus.SUCCESS, time.time()
    queue.complete(claimed, results)
    assert sorted(j.id for j in results.query(tag="batch-7")) == sorted(j.id for j in jobs if j.tags)
    queue.close()
    results.close()


def test_the_rare_tag_query_walks_the_tag_index_not_the_results(results):
    base = time.time()
    rows = 20_000
    jobs = [finished(i, base, tags=["rare"] if i % 5000 == 0 else []) for i in range(rows)]
    results.store(jobs)
    conn = results.db.connection()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    steps = [0]

    def count_steps() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count_steps, 100)  # called every 100 VM instructions
    try:
        got = results.query(tag="rare", limit=50)
    finally:
        conn.set_trace_callback(None)
        conn.set_progress_handler(None, 0)
    assert sorted(j.id for j in got) == sorted(j.id for j in jobs if j.tags)
    # A scan of 20,000 results runs hundreds of thousands of instructions;
    # four index entries and four lookups run a few hundred.
    assert steps[0] * 100 < 5_000, f"{steps[0] * 100} VM instructions for 4 rows"
    (select,) = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    # Python 3.10 traces the statement with its placeholders, 3.11+ with values.
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + select, [None] * select.count("?"))]
    assert any(line.startswith("SEARCH t USING PRIMARY KEY (tag=?") for line in plan), plan
    assert not any(line.startswith("SCAN") for line in plan), plan
    assert not any("TEMP B-TREE" in line for line in plan), plan


# -- migration ------------------------------------------------------------------------
# Schema version 2 exactly as nuvom-sqlite wrote it (sqlite_master of a file its
# code created), frozen here so that later edits to the migrations cannot change
# what this test starts from.
SCHEMA_V2 = """
CREATE TABLE nuvom_schema (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL, by TEXT NOT NULL);
CREATE TABLE nuvom_queue (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    func_name    TEXT    NOT NULL,
    state        INTEGER NOT NULL DEFAULT 0,
    ready_at     REAL    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    timeout_secs REAL,
    claim_token  INTEGER,
    claimed_by   TEXT,
    created_at   REAL    NOT NULL,
    payload      BLOB    NOT NULL
);
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
);
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
INSERT INTO nuvom_schema VALUES (1, 0, 'nuvom-sqlite'), (2, 0, 'nuvom-sqlite');
"""

V2_INSERT_RESULT = (
    "INSERT INTO nuvom_results (id, func_name, status, attempts, worker_id, created_at, started_at, finished_at, "
    "error_type, error_message, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def write_v2_file(path: Path, results: list[Job], extra_payloads: dict[str, bytes], queued: list[Job]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_V2)
    conn.execute("BEGIN")
    for job in results:
        conn.execute(
            V2_INSERT_RESULT,
            (
                job.id,
                job.func_name,
                job.status.value,
                job.attempts,
                job.worker_id,
                job.created_at,
                job.started_at,
                job.finished_at,
                None,
                None,
                job.to_bytes(),
            ),
        )
    for job_id, payload in extra_payloads.items():
        conn.execute(V2_INSERT_RESULT, (job_id, "t", "FAILED", 1, None, 0, 0, time.time() - 1, "X", "y", payload))
    for job in queued:
        conn.execute(
            "INSERT INTO nuvom_queue (id, func_name, ready_at, created_at, payload) VALUES (?, ?, ?, ?, ?)",
            (job.id, job.func_name, time.time() - 1, job.created_at, job.to_bytes()),
        )
    conn.execute("COMMIT")
    conn.close()


def dump(path: Path, table: str, columns: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute(f"SELECT {columns} FROM {table}").fetchall())
    finally:
        conn.close()


def test_a_file_of_schema_version_2_is_migrated_in_place_with_its_tags_indexed(db_path):
    base = time.time()
    stored = [
        finished(i, base, tags=(["common"] if i % 2 else []) + (["rare"] if i % 50 == 0 else [])) for i in range(300)
    ]
    # Arguments that hold the bytes of the "tags" key must not fool the
    # back-fill's fast path, either way.
    tricky_with = Job(func_name="t", args=[{"tags": []}], status=JobStatus.SUCCESS, finished_at=base, tags=["rare"])
    tricky_without = Job(func_name="t", args=[{"tags": ["rare"]}], status=JobStatus.SUCCESS, finished_at=base)
    stored += [tricky_with, tricky_without]
    garbage = {"f" * 32: b"\xc1 not msgpack", "e" * 32: b"\x93\x01\x02\x03"}  # undecodable; not a map
    queued = [Job(func_name="t", args=[i], tags=["q"]) for i in range(5)]
    write_v2_file(db_path, stored, garbage, queued)
    results_before = dump(db_path, "nuvom_results", "*")
    queue_before = dump(db_path, "nuvom_queue", "*")

    results = SQLiteResultBackend(path=db_path)
    assert results.count() == len(stored) + len(garbage)  # opening migrates

    conn = results.db.connection()
    versions = [r[0] for r in conn.execute("SELECT version FROM nuvom_schema ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION >= 3
    # Every row kept, byte for byte; only the new column is filled.
    after = sorted(row[:-1] for row in conn.execute("SELECT * FROM nuvom_results").fetchall())
    assert after == results_before
    # Columns added by later versions come after the old ones: empty, or their
    # defaults (the start mark; the default queue at priority 0, no unique key,
    # no cancel request, awaited by nothing).
    queue_after = dump(db_path, "nuvom_queue", "*")
    assert [row[: len(queue_before[0])] for row in queue_after] == queue_before
    added = [row[len(queue_before[0]) :] for row in queue_after]
    assert added == [(None, "default", 0, None, None, None)] * len(queued)
    assert sorted(r[0] for r in conn.execute("SELECT id FROM nuvom_results WHERE payload = ?", (garbage["f" * 32],)))
    for tag in ("common", "rare"):
        expected = newest_first([j for j in stored if tag in j.tags])
        assert [j.id for j in page_all(results, 7, tag=tag)] == expected
    assert tricky_without.id not in {j.id for j in results.query(tag="rare", limit=1000)}

    # The migrated file works as a new one: queued jobs complete into the index too.
    queue = SQLiteJobQueue(path=db_path)
    claimed = queue.claim(10)
    assert sorted(j.id for j in claimed) == sorted(j.id for j in queued)
    for job in claimed:
        job.status, job.finished_at = JobStatus.SUCCESS, time.time() + 10
    queue.complete(claimed, results)
    assert [j.id for j in results.query(tag="q")] == newest_first(claimed)
    queue.close()
    results.close()


def test_a_new_file_logs_one_line_and_an_upgrade_one_line(db_path, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nuvom.sqlite"):
        SQLiteJobQueue(path=db_path).qsize()
    lines = [r.getMessage() for r in caplog.records if r.name == "nuvom.sqlite"]
    assert lines == [f"SQLite database {db_path}: created schema version {SCHEMA_VERSION}"]

    old = tmp_path / "old.db"
    write_v2_file(old, [finished(i, time.time(), tags=["m"] if i % 2 else []) for i in range(10)], {}, [])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nuvom.sqlite"):
        SQLiteResultBackend(path=old).count()
        SQLiteResultBackend(path=old).count()  # up to date: nothing to say
    lines = [r.getMessage() for r in caplog.records if r.name == "nuvom.sqlite"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"SQLite database {old}: schema migrated from version 2 to {SCHEMA_VERSION} (")
    assert "tag index: 5 tagged result(s) of 10 indexed" in lines[0]


def test_the_migration_runs_once_when_processes_open_the_old_file_together(db_path, tmp_path):
    write_v2_file(db_path, [finished(i, time.time(), tags=["m"]) for i in range(200)], {}, [])
    code = (
        "import sys; from nuvom.sqlite import SQLiteResultBackend; "
        "r = SQLiteResultBackend(path=sys.argv[1]); print(len(r.query(tag='m', limit=1000)))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode() for _, err in outs]
    assert [out.strip() for out, _ in outs] == [b"200"] * 3
    assert dump(db_path, "nuvom_schema", "version") == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert len(tag_rows(db_path)) == 200


@pytest.mark.parametrize("tags", [["a"], ["a", "a", "b"], []])
def test_the_tags_column_holds_distinct_tags_or_null(results, tags):
    job = finished(0, time.time(), tags=tags)
    results.store([job])
    conn = results.db.connection()
    (value,) = conn.execute("SELECT tags FROM nuvom_results WHERE id = ?", (job.id,)).fetchone()
    assert value == (None if not tags else json.dumps(list(dict.fromkeys(tags))))
