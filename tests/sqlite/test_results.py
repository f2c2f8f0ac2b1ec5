"""Result records: what they keep, how history is listed, retention."""

from __future__ import annotations

import sqlite3
import threading
import time

from nuvom.job import Attempt, Job, JobError, JobStatus
from nuvom.sqlite import SQLiteResultBackend


def done(
    status: JobStatus = JobStatus.SUCCESS, *, func: str = "record", finished: float | None = None, **fields
) -> Job:
    now = time.time()
    values = {
        "func_name": func,
        "args": [1],
        "status": status,
        "attempts": 1,
        "started_at": now - 0.5,
        "finished_at": finished if finished is not None else now,
        "worker_id": "host:1:abc",
    }
    return Job(**{**values, **fields})


def test_a_result_record_keeps_status_result_attempts_timings_and_worker(results):
    job = done(result={"total": 3}, history=[Attempt(number=1, started_at=time.time() - 0.5)])
    results.store([job])
    back = results.get_full(job.id)
    assert back.status is JobStatus.SUCCESS
    assert back.result == {"total": 3}
    assert back.attempts == 1
    assert (back.created_at, back.started_at, back.finished_at) == (job.created_at, job.started_at, job.finished_at)
    assert back.worker_id == "host:1:abc"
    assert len(back.history) == 1


def test_a_failed_record_keeps_error_type_message_and_traceback(results, db_path):
    err = JobError(type="ValueError", message="bad input", traceback="Traceback (most recent call last):\n...")
    job = done(JobStatus.FAILED, error=err, attempts=3)
    results.store([job])
    back = results.get_full(job.id)
    assert back.error == err and back.attempts == 3
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT status, error_type, error_message FROM nuvom_results").fetchone()
    conn.close()
    assert row == ("FAILED", "ValueError", "bad input")


def test_store_replaces_an_earlier_record_with_the_same_id(results):
    job = done()
    results.store([job])
    job.result = "second"
    results.store([job])
    assert results.count() == 1 and results.get_full(job.id).result == "second"


def test_list_jobs_is_newest_first_and_filters_by_status_and_task(results):
    now = time.time()
    jobs = [
        done(finished=now - 30),
        done(JobStatus.FAILED, finished=now - 20, error=JobError(type="E", message="m")),
        done(func="other", finished=now - 10),
        done(finished=now),
    ]
    results.store(jobs)
    assert [j.id for j in results.list_jobs()] == [jobs[3].id, jobs[2].id, jobs[1].id, jobs[0].id]
    assert [j.id for j in results.list_jobs(status="failed")] == [jobs[1].id]
    assert [j.id for j in results.list_jobs(status=JobStatus.SUCCESS, task="record")] == [jobs[3].id, jobs[0].id]
    assert [j.id for j in results.list_jobs(limit=2)] == [jobs[3].id, jobs[2].id]


def test_history_queries_use_an_index_not_a_scan_and_sort(results):
    conn = results.db.connection()
    for where in ("", "WHERE status = 'FAILED'", "WHERE func_name = 'x'"):
        plan = " ".join(
            r[3]
            for r in conn.execute(
                f"EXPLAIN QUERY PLAN SELECT payload FROM nuvom_results {where} ORDER BY finished_at DESC LIMIT 100"
            )
        )
        assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan


def test_results_older_than_the_retention_are_pruned(db_path):
    results = SQLiteResultBackend(path=db_path, ttl_secs=60)
    old, fresh = done(finished=time.time() - 120), done()
    results.store([old, fresh])  # the first store prunes
    assert results.get_full(old.id) is None
    assert results.get_full(fresh.id) is not None
    results.close()


def test_the_retention_is_read_from_nuvom_result_ttl_secs(monkeypatch, db_path):
    monkeypatch.setenv("NUVOM_RESULT_TTL_SECS", "5")
    results = SQLiteResultBackend(path=db_path)
    assert results.ttl_secs == 5
    results.close()


def test_wait_returns_when_another_connection_stores_the_record(results, db_path):
    job = done()
    writer = SQLiteResultBackend(path=db_path)
    threading.Timer(0.05, writer.store, args=([job],)).start()
    t0 = time.monotonic()
    assert results.wait(job.id, timeout=5).id == job.id
    assert time.monotonic() - t0 < 2
    assert results.wait("missing", timeout=0.05) is None
    writer.close()


def test_get_many_reads_the_records_there_in_one_read_past_sqlites_variable_limit(results, db_path):
    jobs = [done(result=i) for i in range(2500)]
    results.store(jobs[:2000])
    missing = [job.id for job in jobs[2000:]]
    reads = []
    results.db.connection().set_trace_callback(lambda sql: reads.append(sql) if sql.startswith("SELECT") else None)
    found = results.get_many([job.id for job in jobs[1000:2000]] + missing + [job.id for job in jobs[:1000]])
    results.db.connection().set_trace_callback(None)
    assert {k: v.result for k, v in found.items()} == {job.id: job.result for job in jobs[:2000]}
    assert len(reads) <= 5  # chunks of a few hundred ids, not a read each
