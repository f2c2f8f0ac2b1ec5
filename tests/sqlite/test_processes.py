"""Real worker processes on one real database file."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict

from nuvom.job import Job, JobStatus
from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend

from .conftest import wait_until


def jobs_for(func: str, keys: list[str], *extra, **fields) -> list[Job]:
    """Jobs as ``tasks.<func>.delay(key, *extra)`` makes them (built here: the
    test process does not import the tasks)."""
    return [Job(func_name=func, task_path=f"tasks:{func}", args=[key, *extra], **fields) for key in keys]


def test_three_workers_run_2000_jobs_each_exactly_once(project, queue, results):
    keys = [f"j{i}" for i in range(2000)]
    queue.enqueue_many(jobs_for("record", keys))
    project.start_workers(3)
    wait_until(lambda: results.count() == 2000, 120, "2000 results")
    project.stop()
    runs = project.executions()
    assert set(runs) == set(keys)
    assert max(runs.values()) == 1, [k for k, n in runs.items() if n > 1][:10]
    assert {j.status for j in results.list_jobs(limit=5000)} == {JobStatus.SUCCESS}
    assert queue.qsize() == 0 and queue.running() == 0


def test_a_producer_enqueuing_while_workers_drain_loses_nothing(project, queue, results):
    project.start_workers(2)
    producer = project.run_python(
        "import tasks\n"
        "for i in range(300):\n"
        "    tasks.record.delay(f'p{i}')\n"
        "tasks.record.map([(f'm{i}',) for i in range(300)])\n"
    )
    queue.enqueue_many(jobs_for("record", [f"t{i}" for i in range(300)]))
    assert producer.wait(60) == 0
    wait_until(lambda: results.count() == 900, 120, "900 results")
    project.stop()
    runs = project.executions()
    assert len(runs) == 900 and set(runs.values()) == {1}


def test_a_killed_worker_jobs_are_run_by_another_after_the_lease(project, queue, results):
    keys = [f"s{i}" for i in range(40)]
    queue.enqueue_many(jobs_for("slow", keys, 0.5, timeout_secs=2))
    # A short lease: max(NUVOM_LEASE_SECS, task timeout 2 s + margin) is about 3.2 s.
    lease = {"NUVOM_LEASE_SECS": "1", "NUVOM_BATCH_SIZE": "8"}
    (victim,) = project.start_workers(1, **lease)
    wait_until(lambda: len(project.run_lines()) >= 4, 30, "the first worker to start its jobs")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    held = {line[0] for line in project.run_lines() if line[1] == str(victim.pid)}
    still_claimed = queue.running()
    assert still_claimed > 0  # the dead worker held jobs mid-batch

    project.start_workers(2, **lease)
    wait_until(lambda: results.count() == 40, 60, "40 results")
    project.stop()

    records = {r.args[0]: r for r in results.list_jobs(limit=100)}
    assert set(records) == set(keys)
    assert {r.status for r in records.values()} == {JobStatus.SUCCESS}
    runs = project.executions()
    assert set(runs) == set(keys)  # none lost
    duplicated = {k for k, n in runs.items() if n > 1}
    assert duplicated <= held  # run twice only if the killed worker had started them
    # A job the dead worker had started counts that lost run as an attempt; one
    # it held but never started was handed back as if never claimed.
    reclaimed = {r.args[0] for r in records.values() if r.attempts > 1}
    assert all([a.outcome for a in records[k].history] == ["lost", "success"] for k in reclaimed)
    assert duplicated <= reclaimed <= held | {k for k in keys if k not in runs or runs[k] == 1}
    # At most its 4 threads' jobs were running when it died; the rest of its claims had not started.
    assert len(reclaimed) <= 4 < still_claimed
    unstarted = [r for k, r in records.items() if k not in held]
    assert all(r.attempts == 1 and [a.outcome for a in r.history] == ["success"] for r in unstarted)


def test_retries_with_delays_run_across_processes_and_wait_their_delay(project, queue, results):
    keys = [f"f{i}" for i in range(20)]
    retry = {"max_retries": 3, "retry_delay_secs": 0.3}  # as @task(retries=3, retry_delay_secs=0.3)
    queue.enqueue_many(jobs_for("flaky", keys, 2, **retry))  # fails twice, then succeeds
    queue.enqueue_many(jobs_for("flaky", ["hopeless"], 10, **retry))  # fails more often than it may
    project.start_workers(2)
    wait_until(lambda: results.count() == 21, 60, "21 results")
    project.stop()
    by_key = {r.args[0]: r for r in results.list_jobs(limit=100)}
    for key in keys:
        record = by_key[key]
        assert record.status is JobStatus.SUCCESS and record.result == 3 and record.attempts == 3
        assert [a.outcome for a in record.history] == ["error", "error", "success"]
    hopeless = by_key["hopeless"]
    assert hopeless.status is JobStatus.FAILED and hopeless.attempts == 4
    assert hopeless.error.type == "RuntimeError" and "attempt 4 of hopeless fails" in hopeless.error.message
    assert "Traceback" in hopeless.error.traceback
    starts: dict[str, list[float]] = defaultdict(list)
    for key, _pid, at in project.run_lines():
        starts[key].append(float(at))
    for key in keys:
        gaps = [b - a for a, b in zip(starts[key], starts[key][1:])]
        assert len(gaps) == 2 and min(gaps) >= 0.3 - 0.01, (key, gaps)


def test_a_corrupt_payload_row_fails_that_job_clearly_and_the_others_run(project, queue, results, db_path):
    keys = [f"c{i}" for i in range(10)]
    jobs = jobs_for("record", keys)
    queue.enqueue_many(jobs)
    conn = queue.db.connection()
    conn.execute("UPDATE nuvom_queue SET payload = ? WHERE id = ?", (b"\xc1\xc1 not msgpack", jobs[3].id))
    project.start_workers(1)
    wait_until(lambda: results.count() == 10, 60, "10 results")
    project.stop()
    bad = results.get_full(jobs[3].id)
    assert bad.status is JobStatus.FAILED
    assert bad.error.type == "SerializationError" and "corrupt" in bad.error.message
    statuses = Counter(r.status for r in results.list_jobs(limit=100))
    assert statuses == {JobStatus.SUCCESS: 9, JobStatus.FAILED: 1}
    assert set(project.executions()) == set(keys) - {"c3"}


def test_a_worker_stopped_gracefully_hands_back_what_it_had_not_started(project, queue, results, db_path):
    keys = [f"g{i}" for i in range(30)]
    queue.enqueue_many(jobs_for("slow", keys, 0.3, timeout_secs=2))
    (worker,) = project.start_workers(1, threads=2, NUVOM_BATCH_SIZE="16")
    wait_until(lambda: len(project.run_lines()) >= 2, 30, "jobs started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    other = SQLiteJobQueue(path=db_path)
    assert other.running() == 0  # nothing left claimed: no lease to wait for
    project.start_workers(1)
    wait_until(lambda: results.count() == 30, 60, "30 results")
    runs = project.executions()
    assert set(runs) == set(keys) and max(runs.values()) == 1
    assert all(r.attempts == 1 for r in SQLiteResultBackend(path=db_path).list_jobs(limit=100))
    other.close()


def test_workers_on_an_idle_queue_pick_up_a_new_job_quickly(project, results, db_path):
    project.start_workers(1)
    producer = SQLiteJobQueue(path=db_path)
    job = jobs_for("record", ["late"])[0]
    t0 = time.time()
    producer.enqueue(job)
    record = results.wait(job.id, timeout=10)
    assert record is not None and record.started_at - t0 < 1.0
    producer.close()


def test_processes_opening_a_new_database_file_together_all_succeed(project, db_path):
    # The first opener switches the new file to WAL mode, which needs an exclusive
    # lock; SQLite answers the others "database is locked" without waiting.
    start = time.time() + 1.0
    code = (
        "import sys, time\n"
        "from nuvom.job import Job\n"
        "from nuvom.sqlite import SQLiteJobQueue\n"
        f"while time.time() < {start}: pass\n"
        f"SQLiteJobQueue(path={str(db_path)!r}).enqueue(Job(func_name='record', args=['x']))\n"
    )
    procs = [project.run_python(code) for _ in range(6)]
    assert [p.wait(60) for p in procs] == [0] * 6
    queue = SQLiteJobQueue(path=db_path)
    assert queue.qsize() == 6
    queue.close()
