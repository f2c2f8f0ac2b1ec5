"""The queue's delivery contract on a real file: claims, leases, due order, settling."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from nuvom.job import Job, JobStatus
from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend
from nuvom.sqlite._db import Database

from .conftest import expire_leases


def make(n: int, **fields) -> list[Job]:
    return [Job(func_name="record", args=[f"k{i}"], **fields) for i in range(n)]


@contextlib.contextmanager
def count_transactions(db: Database) -> Iterator[Callable[[], int]]:
    """Count the write transactions ``db`` opens meanwhile (its ``write()``)."""
    opened = 0
    original = db.write

    @contextlib.contextmanager
    def counted(what: str = "writing") -> Iterator[sqlite3.Connection]:
        nonlocal opened
        opened += 1
        with original(what) as conn:
            yield conn

    db.write = counted  # type: ignore[method-assign]
    try:
        yield lambda: opened
    finally:
        del db.write


def finish(jobs: list[Job]) -> list[Job]:
    now = time.time()
    for job in jobs:
        job.status, job.result, job.started_at, job.finished_at = JobStatus.SUCCESS, job.args[0], now, now
    return jobs


def test_claim_marks_jobs_running_and_counts_the_attempt_in_storage(queue):
    queue.enqueue_many(make(3))
    jobs = queue.claim(10)
    assert [j.status for j in jobs] == [JobStatus.RUNNING] * 3
    assert [j.attempts for j in jobs] == [1, 1, 1]
    stored = queue.get(jobs[0].id)
    assert stored.status is JobStatus.RUNNING and stored.attempts == 1


def test_claims_come_oldest_first_in_batches(queue):
    jobs = make(5)
    queue.enqueue_many(jobs)
    assert [j.id for j in queue.claim(2)] == [jobs[0].id, jobs[1].id]
    assert [j.id for j in queue.claim(10)] == [j.id for j in jobs[2:]]
    assert queue.claim(10) == []


def test_a_claimed_job_is_invisible_to_other_claimers(db_path, queue):
    other = SQLiteJobQueue(path=db_path)  # another process's view of the same file
    queue.enqueue(make(1)[0])
    assert len(queue.claim(1)) == 1
    assert other.claim(1) == []
    other.close()


def test_a_job_whose_lease_expired_is_claimed_again_with_its_attempt_counted(db_path, queue):
    other = SQLiteJobQueue(path=db_path)
    job = make(1)[0]
    queue.enqueue(job)
    [claimed] = queue.claim(1)
    assert queue.mark_started(claimed)
    expire_leases(db_path)
    again = other.claim(1)
    assert [j.id for j in again] == [job.id]
    assert again[0].attempts == 2
    assert again[0].mark_lost_runs(time.time()) == 1
    other.close()


def test_an_expired_claim_that_never_started_is_handed_back_without_counting(db_path, queue):
    other = SQLiteJobQueue(path=db_path)
    job = make(1)[0]
    queue.enqueue(job)
    for _ in range(5):  # claimed and lost five times, never started
        assert [j.id for j in queue.claim(1)] == [job.id]
        expire_leases(db_path)
    [again] = other.claim(1)
    assert again.attempts == 1
    assert again.mark_lost_runs(time.time()) == 0 and again.history == []
    assert other.get(job.id).attempts == 1
    other.close()


def test_a_start_mark_renews_the_lease_from_the_start_and_is_fenced_by_the_claim(db_path, queue):
    other = SQLiteJobQueue(path=db_path)
    queue.enqueue(make(1, timeout_secs=600)[0])
    [waited] = queue.claim(1)
    time.sleep(1.2)  # the job waits in this worker's buffer past the claim's first second
    before = time.time()
    assert queue.mark_started(waited)
    with sqlite3.connect(db_path) as conn:
        lease, started = conn.execute(
            "SELECT ready_at, started_at FROM nuvom_queue WHERE id = ?", (waited.id,)
        ).fetchone()
    conn.close()
    assert started >= before and lease - before >= 600 * 1.1 + 2  # the job's lease, from its start
    # A claim that expired in this worker's buffer and was taken by another
    # worker: the start mark fails, and the job must not run here.
    queue.enqueue(make(1)[0])
    [lost] = queue.claim(1)
    expire_leases(db_path)  # (the first job's lease too: the other worker takes both)
    taken = {j.id: j for j in other.claim(10)}
    assert lost.id in taken and taken[lost.id].attempts == 1
    assert not queue.mark_started(lost)
    assert other.mark_started(taken[lost.id])
    other.close()


def test_settle_writes_outcomes_retries_and_start_marks_in_one_transaction_each_fenced_by_its_claim(
    db_path, queue, results
):
    other = SQLiteJobQueue(path=db_path)
    queue.enqueue_many(make(4))
    done, again, following, lost = queue.claim(4)
    assert queue.mark_started(done) and queue.mark_started(again)
    again.mark_retrying(time.time() + 60)
    with count_transactions(queue.db) as transactions:
        assert queue.settle(finish([done]), [again], [following], results) == [True]
    assert transactions() == 1
    assert results.get_full(done.id).status is JobStatus.SUCCESS
    with sqlite3.connect(db_path) as conn:
        rows = {r[0]: r[1:] for r in conn.execute("SELECT id, started_at, state FROM nuvom_queue").fetchall()}
    conn.close()
    assert done.id not in rows
    assert rows[again.id] == (None, 0)  # back in the queue, waiting for its retry
    assert rows[following.id][0] is not None and rows[lost.id][0] is None
    assert queue.mark_started(following)  # marked again when it starts: harmless
    # The next job's claim was taken over meanwhile: the outcome is stored, the mark is refused.
    expire_leases(db_path)
    other.claim(10)
    assert queue.settle(finish([following]), [], [lost], results) == [False]
    other.close()


def test_the_lease_is_never_shorter_than_the_job_timeout_plus_a_margin(queue, db_path):
    queue.enqueue(Job(func_name="record", timeout_secs=600))
    queue.enqueue(Job(func_name="record"))
    before = time.time()
    queue.claim(2)
    with sqlite3.connect(db_path) as conn:
        leases = [r[0] - before for r in conn.execute("SELECT ready_at FROM nuvom_queue ORDER BY seq")]
    conn.close()
    assert leases[0] >= 600
    # No timeout on the job: the default NUVOM_JOB_TIMEOUT_SECS (30) plus margin, over NUVOM_LEASE_SECS (30).
    assert 30 < leases[1] < 60


def test_extend_leases_renews_only_claims_held_here(queue, db_path):
    other = SQLiteJobQueue(path=db_path)
    queue.enqueue_many(make(2))
    mine = queue.claim(1)
    theirs = other.claim(1)
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.execute("UPDATE nuvom_queue SET ready_at = 1")
        queue.extend_leases([mine[0].id, theirs[0].id])
        leases = dict(conn.execute("SELECT id, ready_at FROM nuvom_queue"))
    conn.close()
    assert leases[mine[0].id] > time.time() + 10
    assert leases[theirs[0].id] == 1
    other.close()


def test_delayed_jobs_wait_until_due_then_come_in_due_order(queue):
    now = time.time()
    later = Job(func_name="record", args=["later"], not_before=now + 0.4)
    sooner = Job(func_name="record", args=["sooner"], not_before=now + 0.2)
    queue.enqueue_many([later, sooner])
    assert queue.claim(5) == []
    assert queue.qsize() == 2
    got = queue.pop_batch(5, timeout=5)
    assert [j.id for j in got] == [sooner.id]
    assert time.time() >= sooner.not_before
    got = queue.pop_batch(5, timeout=5)
    assert [j.id for j in got] == [later.id]


def test_pop_batch_returns_empty_after_its_timeout(queue):
    t0 = time.monotonic()
    assert queue.pop_batch(4, timeout=0.05) == []
    assert 0.04 <= time.monotonic() - t0 < 1


def test_pop_batch_wakes_for_a_job_queued_by_another_connection(db_path, queue):
    producer = SQLiteJobQueue(path=db_path)
    queue.pop_batch(1, timeout=0.01)  # the file has been seen empty
    job = make(1)[0]
    threading.Timer(0.05, producer.enqueue, args=(job,)).start()
    got = queue.pop_batch(1, timeout=5)
    assert [j.id for j in got] == [job.id]
    assert got[0].started_at is None
    producer.close()


def test_requeue_puts_the_job_back_as_given_with_its_not_before(queue):
    queue.enqueue(make(1)[0])
    job = queue.claim(1)[0]
    job.status, job.not_before = JobStatus.RETRYING, time.time() + 0.2
    queue.requeue([job])
    assert queue.claim(1) == []
    back = queue.pop_batch(1, timeout=5)[0]
    assert back.id == job.id and back.attempts == 2
    assert time.time() >= job.not_before


def test_a_group_is_fenced_job_by_job_and_settled_without_a_step_per_row(db_path, queue, results):
    queue.enqueue_many(make(7))
    jobs = queue.claim(7)
    done, starting = finish(jobs[:4]), jobs[4:]
    with sqlite3.connect(db_path) as conn:
        # Another worker's claims now (their leases ran out here), and a row gone.
        conn.execute("UPDATE nuvom_queue SET claim_token = 1 WHERE id IN (?, ?)", (done[1].id, starting[1].id))
        conn.execute("DELETE FROM nuvom_queue WHERE id = ?", (done[2].id,))
    conn.close()
    statements: list[str] = []
    traced = queue.db.connection()
    traced.set_trace_callback(statements.append)
    try:
        assert queue.settle(done, [], starting, results) == [True, False, True]
    finally:
        traced.set_trace_callback(None)
    assert {j.id for j in done if results.get_full(j.id) is not None} == {done[0].id, done[3].id}
    with sqlite3.connect(db_path) as conn:
        left = {r[0]: r[1] for r in conn.execute("SELECT id, started_at FROM nuvom_queue").fetchall()}
    conn.close()
    assert set(left) == {done[1].id, *(j.id for j in starting)}  # the other claim's row stays
    assert left[starting[0].id] is not None and left[starting[1].id] is None and left[starting[2].id] is not None
    # Each row a statement returns is a step, and each step lets other threads
    # take the GIL: the common case (every claim held) returns none.
    assert statements and not any("RETURNING" in s for s in statements), statements


def test_requeue_of_a_claim_taken_over_leaves_the_new_claim_alone(db_path, queue):
    other = SQLiteJobQueue(path=db_path)
    queue.enqueue(make(1)[0])
    stale = queue.claim(1)[0]
    assert queue.mark_started(stale)
    expire_leases(db_path)
    current = other.claim(1)[0]
    stale.not_before = time.time() + 60
    queue.requeue([stale])
    assert other.get(current.id).status is JobStatus.RUNNING
    assert other.get(current.id).attempts == 2
    other.close()


def test_complete_stores_the_outcome_and_removes_the_job(queue, results):
    queue.enqueue_many(make(3))
    jobs = finish(queue.claim(3))
    queue.complete(jobs, results)
    assert results.count() == 3
    assert queue.qsize() == 0 and all(queue.get(j.id) is None for j in jobs)
    assert results.get_full(jobs[0].id).result == "k0"


def test_complete_is_one_transaction_when_results_share_the_file(queue, results):
    queue.enqueue_many(make(2))
    jobs = finish(queue.claim(2))
    statements: list[str] = []
    conn = queue.db.connection()
    conn.set_trace_callback(statements.append)
    queue.complete(jobs, results)
    conn.set_trace_callback(None)
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert any(s.startswith("DELETE FROM nuvom_queue") for s in statements)
    assert any(s.startswith("INSERT OR REPLACE INTO nuvom_results") for s in statements)


def test_a_completion_whose_claim_was_taken_over_is_ignored(db_path, queue, results):
    other = SQLiteJobQueue(path=db_path)
    queue.enqueue(make(1)[0])
    late = queue.claim(1)
    assert queue.mark_started(late[0])  # it ran
    finish(late)
    expire_leases(db_path)
    current = finish(other.claim(1))
    queue.complete(late, results)  # the first worker comes back after its lease ran out
    assert results.count() == 0
    other.complete(current, results)
    assert results.count() == 1
    assert results.get_full(current[0].id).attempts == 2
    queue.complete(late, results)  # and again: still recorded once
    assert results.get_full(current[0].id).attempts == 2
    other.close()


def test_complete_with_results_in_another_store_stores_then_acks(queue, tmp_path):
    elsewhere = SQLiteResultBackend(path=tmp_path / "other.db")
    queue.enqueue(make(1)[0])
    jobs = finish(queue.claim(1))
    queue.complete(jobs, elsewhere)
    assert elsewhere.get_full(jobs[0].id).status is JobStatus.SUCCESS
    assert queue.get(jobs[0].id) is None
    elsewhere.close()


def test_enqueue_many_is_one_transaction(queue):
    statements: list[str] = []
    queue.qsize()  # open the connection
    conn = queue.db.connection()
    conn.set_trace_callback(statements.append)
    queue.enqueue_many(make(500))
    conn.set_trace_callback(None)
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert queue.qsize() == 500


def test_map_goes_through_enqueue_many(monkeypatch, tmp_path):
    from nuvom.backends import get_queue_backend
    from nuvom.task import task

    @task(name="sqlite_map_probe")
    def probe(x):
        return x

    probe.map([(i,) for i in range(50)])
    assert get_queue_backend().qsize() == 50


def test_clear_drops_waiting_jobs_and_keeps_claimed_ones(queue):
    queue.enqueue_many(make(4))
    claimed = queue.claim(1)
    assert queue.clear() == 3
    assert queue.qsize() == 0
    assert queue.get(claimed[0].id) is not None


def test_get_returns_queued_jobs_and_none_for_unknown_ids(queue):
    job = make(1)[0]
    queue.enqueue(job)
    assert queue.get(job.id).args == ["k0"]
    assert queue.get("nope") is None


def test_threads_and_connections_contending_never_see_database_is_locked(db_path, results):
    producers = [SQLiteJobQueue(path=db_path) for _ in range(3)]
    consumers = [SQLiteJobQueue(path=db_path) for _ in range(3)]
    total, errors = 1500, []

    def produce(q: SQLiteJobQueue, start: int) -> None:
        try:
            for i in range(start, total, len(producers)):
                q.enqueue(Job(func_name="record", args=[i]))
        except Exception as exc:
            errors.append(exc)

    def consume(q: SQLiteJobQueue) -> None:
        try:
            while results.count() < total and not errors:
                jobs = q.pop_batch(16, timeout=0.05)
                if jobs:
                    q.complete(finish(jobs), results)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(q, i)) for i, q in enumerate(producers)]
    threads += [threading.Thread(target=consume, args=(q,)) for q in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results.count() == total, (results.count(), producers[0].qsize(), producers[0].running())
    for q in producers + consumers:
        q.close()


# -- claims that start jobs (pop_batch_starting) ---------------------------------------
def started_at(db_path, ids):
    with sqlite3.connect(db_path) as conn:
        rows = dict(conn.execute("SELECT id, started_at FROM nuvom_queue").fetchall())
    conn.close()
    return [rows[i] for i in ids]


def test_a_claim_that_starts_jobs_marks_the_first_ones_in_its_own_transaction(db_path, queue):
    jobs = make(5)
    queue.enqueue_many(jobs)
    writes = []
    queue.db.connection().set_trace_callback(writes.append)  # the autocommit path of mark_started
    got = queue.pop_batch_starting(5, timeout=0, start=2)
    queue.db.connection().set_trace_callback(None)
    assert [j.id for j in got] == [j.id for j in jobs]
    marks = started_at(db_path, [j.id for j in got])
    assert marks[0] is not None and marks[1] is not None
    assert marks[2:] == [None, None, None]
    # One transaction, no start mark of its own (those go by id and claim token).
    assert sum(w.startswith("BEGIN") for w in writes) == 1, writes
    assert not [w for w in writes if "started_at =" in w and "WHERE id" in w], writes


def test_started_by_the_claim_counts_as_a_lost_run_the_rest_is_handed_back(db_path, queue):
    other = SQLiteJobQueue(path=db_path)
    jobs = make(3)
    queue.enqueue_many(jobs)
    got = queue.pop_batch_starting(3, timeout=0, start=1)
    assert len(got) == 3
    expire_leases(db_path)  # the worker died right after its claim
    again = {j.id: j for j in other.claim(10)}
    assert again[got[0].id].attempts == 2 and again[got[0].id].mark_lost_runs(time.time()) == 1
    for job in got[1:]:
        assert again[job.id].attempts == 1 and again[job.id].mark_lost_runs(time.time()) == 0
    other.close()


def test_start_beyond_the_jobs_claimed_marks_them_all(db_path, queue):
    jobs = make(2)
    queue.enqueue_many(jobs)
    got = queue.pop_batch_starting(10, timeout=0, start=4)
    assert len(got) == 2 and None not in started_at(db_path, [j.id for j in got])


def test_an_unreadable_marked_row_leaves_the_next_job_marked_in_its_place(db_path, queue):
    jobs = make(3)
    queue.enqueue_many(jobs)
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.execute("UPDATE nuvom_queue SET payload = x'c1c1' WHERE id = ?", (jobs[0].id,))
    conn.close()
    got = queue.pop_batch_starting(3, timeout=0, start=1)
    assert [j.id for j in got] == [jobs[1].id, jobs[2].id]  # the first was quarantined
    assert started_at(db_path, [jobs[1].id])[0] is not None
    assert started_at(db_path, [jobs[2].id]) == [None]
