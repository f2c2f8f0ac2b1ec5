"""Job control (issue 29) in the SQLite file itself: named queues and
priorities in the claim, unique keys, workflow jobs released in the
transaction that removes their last parent, cancel requests, rate limits."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterator

import pytest
from nuvom.job import Flow, Job, JobStatus
from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend
from nuvom.sqlite._queue import _SELECT_DUE

from .conftest import expire_leases


def make(n: int, prefix: str = "k", **fields) -> list[Job]:
    return [Job(func_name="record", args=[f"{prefix}{i}"], **fields) for i in range(n)]


def child_of(*parents: Job, **fields) -> Job:
    return Job(
        func_name="record",
        args=["child"],
        status=JobStatus.WAITING,
        flow=Flow(parents=[p.id for p in parents]),
        **fields,
    )


def finish(jobs: list[Job]) -> list[Job]:
    now = time.time()
    for job in jobs:
        job.status, job.result, job.started_at, job.finished_at = JobStatus.SUCCESS, job.args[0], now, now
    return jobs


def claim(queue: SQLiteJobQueue, limit: int = 100, queues: tuple[str, ...] = ("default",)) -> list[Job]:
    return queue.claim_batch(limit, 0, lambda: 0, queues)


def state_of(queue: SQLiteJobQueue, job: Job) -> int | None:
    row = queue.db.connection().execute("SELECT state FROM nuvom_queue WHERE id = ?", (job.id,)).fetchone()
    return None if row is None else row[0]


@pytest.fixture
def traced(queue: SQLiteJobQueue) -> Iterator[list[str]]:
    """The statements this thread's connection to the queue's file runs."""
    queue.qsize()  # open the connection
    statements: list[str] = []
    conn = queue.db.connection()
    conn.set_trace_callback(statements.append)
    yield statements
    conn.set_trace_callback(None)


# -- named queues and priorities ---------------------------------------------------
def test_claims_take_higher_priority_first_then_oldest_due(queue):
    low = make(3, "low")
    queue.enqueue_many(low)
    high = make(2, "high", priority=5)
    queue.enqueue_many(high)
    later_high = make(1, "later", priority=5, not_before=time.time() + 60)  # not due: never claimed early
    queue.enqueue_many(later_high)
    middle = make(2, "mid", priority=1)
    queue.enqueue_many(middle)
    got = [j.id for j in claim(queue, 4)] + [j.id for j in claim(queue, 10)]
    assert got == [j.id for j in [*high, *middle, *low]]
    assert claim(queue) == []


def test_a_worker_fills_its_batch_from_its_first_queue_then_the_next(queue):
    emails, reports, other = make(2, "e", queue="emails"), make(3, "r", queue="reports"), make(2, "o", queue="other")
    default = make(2, "d")
    queue.enqueue_many([*default, *other, *reports, *emails])
    assert [j.id for j in claim(queue, 4, ("emails", "reports"))] == [j.id for j in [*emails, *reports[:2]]]
    assert [j.queue for j in claim(queue, 10, ("reports",))] == ["reports"]
    # claim() and pop_batch() (no queues given) serve the default queue only.
    assert [j.id for j in queue.claim(10)] == [j.id for j in default]
    assert queue.pop_batch(10) == []
    assert [j.id for j in claim(queue, 10, ("other",))] == [j.id for j in other]


def test_an_expired_lease_comes_back_in_its_own_queue_only(db_path, queue):
    other = SQLiteJobQueue(path=db_path)
    [job] = make(1, queue="emails")
    queue.enqueue(job)
    assert [j.id for j in claim(queue, 1, ("emails",))] == [job.id]
    expire_leases(db_path)
    assert claim(other, 10) == []  # a worker of the default queue does not take it
    assert [j.id for j in claim(other, 10, ("emails",))] == [job.id]
    other.close()


def test_the_claim_reads_a_range_of_its_index_not_the_jobs_not_yet_due(queue):
    later = time.time() + 3600
    queue.enqueue_many([Job(func_name="record", args=[i], not_before=later) for i in range(20_000)])
    due = make(3, "now", priority=2) + make(2, "now-low")
    queue.enqueue_many(due)
    conn = queue.db.connection()
    steps = [0]

    def count_steps() -> int:
        steps[0] += 1
        return 0

    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    conn.set_progress_handler(count_steps, 100)  # called every 100 VM instructions
    try:
        got = claim(queue, 32)
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_trace_callback(None)
    assert [j.id for j in got] == [j.id for j in due]
    # Scanning the 20,000 delayed rows would run hundreds of thousands of instructions.
    assert steps[0] * 100 < 20_000, f"{steps[0] * 100} VM instructions to claim 5 of 20,005 jobs"
    assert any("FROM lv CROSS JOIN nuvom_queue AS q INDEXED BY nuvom_queue_claim" in s for s in statements)
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _SELECT_DUE, ("default", time.time(), 32))]
    assert "SEARCH q USING INDEX nuvom_queue_claim (queue=? AND priority=? AND ready_at<?)" in plan, plan
    assert not any("TEMP B-TREE" in line for line in plan), plan


def test_queue_counts_are_kept_per_queue_and_a_waiting_job_counts_as_queued(queue):
    queue.enqueue_many(make(2, "e", queue="emails") + make(1))
    [parent] = make(1, "p")
    queue.enqueue(parent)
    queue.enqueue(child_of(parent))
    claim(queue, 1, ("emails",))
    assert queue.queue_counts() == {
        "default": {"queued": 3, "retrying": 0, "running": 0},
        "emails": {"queued": 1, "retrying": 0, "running": 1},
    }
    assert queue.counts() == {"queued": 4, "retrying": 0, "running": 1}
    assert queue.qsize() == 4


# -- unique keys ------------------------------------------------------------------
def test_a_unique_key_is_held_until_its_job_leaves_the_queue(queue, results):
    first = Job(func_name="record", args=["a"], unique_key="k")
    assert queue.enqueue_unique(first) == first.id
    assert queue.enqueue_unique(Job(func_name="record", args=["b"], unique_key="k")) == first.id
    [claimed] = claim(queue)
    assert queue.enqueue_unique(Job(func_name="record", unique_key="k")) == first.id  # running: still held
    claimed.mark_handed_back()
    claimed.set_fields(not_before=time.time() - 1)
    queue.requeue([claimed])  # a retry keeps the key
    assert queue.enqueue_unique(Job(func_name="record", unique_key="k")) == first.id
    [claimed] = claim(queue)
    queue.settle(finish([claimed]), [], [], results)
    second = Job(func_name="record", args=["c"], unique_key="k")
    assert queue.enqueue_unique(second) == second.id  # its outcome stored: free again
    assert queue.cancel(second.id) is not None
    third = Job(func_name="record", unique_key="k")
    assert queue.enqueue_unique(third) == third.id  # cancelled: free again
    assert queue.qsize() == 1


def test_the_file_refuses_a_second_holder_of_a_key_whatever_writes_the_row(db_path, queue):
    queue.enqueue_unique(Job(func_name="record", unique_key="k"))
    conn = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.IntegrityError, match=r"nuvom_queue\.unique_key"):
        conn.execute(
            "INSERT INTO nuvom_queue (id, func_name, ready_at, created_at, payload, unique_key) "
            "VALUES ('x', 'record', 0, 0, x'80', 'k')"
        )
    conn.close()


def test_a_job_put_back_by_a_process_that_did_not_claim_it_never_takes_a_held_key(db_path, queue):
    # A requeue of a job this queue object never claimed writes the row as given;
    # if the job left meanwhile and another took its key, the row goes back without it.
    gone = Job(func_name="record", args=["gone"], unique_key="k")
    holder = Job(func_name="record", args=["holder"], unique_key="k")
    queue.enqueue_unique(holder)
    stranger = SQLiteJobQueue(path=db_path)
    stranger.requeue([gone])
    stranger.close()
    assert queue.qsize() == 2
    assert queue.enqueue_unique(Job(func_name="record", unique_key="k")) == holder.id


# -- workflows --------------------------------------------------------------------
def test_a_waiting_job_is_claimed_only_once_its_last_parent_has_left(queue, results, traced):
    a, b = make(2, "parent")
    queue.enqueue_many([a, b])
    child = child_of(a, b)
    queue.enqueue(child)
    assert queue.get(child.id).status is JobStatus.WAITING and state_of(queue, child) == 2
    assert queue.dependents(a.id) == [child.id] and queue.dependents(b.id) == [child.id]
    claimed = {j.id: j for j in claim(queue)}
    assert set(claimed) == {a.id, b.id}  # the child is due, but waits
    queue.settle(finish([claimed[a.id]]), [], [], results)
    assert state_of(queue, child) == 2 and claim(queue) == [] and queue.dependents(a.id) == []
    traced.clear()
    queue.settle(finish([claimed[b.id]]), [], [], results)
    # Released by the transaction that removed its last parent and stored its outcome.
    writes = [s for s in traced if s.split()[0] in ("BEGIN", "COMMIT", "DELETE", "UPDATE", "INSERT")]
    assert writes[0] == "BEGIN IMMEDIATE" and writes[-1] == "COMMIT" and writes.count("COMMIT") == 1
    assert any(s.startswith("UPDATE nuvom_queue SET state = 0") for s in writes), writes
    assert queue.get(child.id).status is JobStatus.PENDING
    [released] = claim(queue)
    assert released.id == child.id and released.flow == child.flow


def test_a_retrying_parent_keeps_its_children_waiting(queue, results):
    [parent] = make(1)
    queue.enqueue(parent)
    child = child_of(parent)
    queue.enqueue(child)
    [claimed] = claim(queue)
    claimed.mark_handed_back()
    claimed.set_fields(not_before=time.time() - 1)
    queue.settle([], [claimed], [], results)  # a retry: still in the queue
    [again] = claim(queue)
    assert again.id == parent.id and state_of(queue, child) == 2
    again.status, again.finished_at = JobStatus.FAILED, time.time()
    queue.settle([again], [], [], results)  # failed for good: the child is released, the worker decides
    assert [j.id for j in claim(queue)] == [child.id]


def test_a_child_of_a_parent_no_longer_in_the_queue_is_due_at_once(queue, results):
    [parent] = make(1)
    queue.enqueue(parent)
    queue.settle(finish(claim(queue)), [], [], results)
    child = child_of(parent)
    queue.enqueue(child)
    assert child.status is JobStatus.PENDING and state_of(queue, child) == 0
    assert [j.id for j in claim(queue)] == [child.id]


def test_parents_and_children_queued_together_wait_in_order(queue, results):
    [parent] = make(1)
    first, second = child_of(parent), None
    second = child_of(first)
    queue.enqueue_many([parent, first, second])  # a chain of three in one call
    assert [state_of(queue, j) for j in (parent, first, second)] == [0, 2, 2]
    for expected in (parent, first, second):
        [got] = claim(queue)
        assert got.id == expected.id
        queue.settle(finish([got]), [], [], results)
    assert queue.qsize() == 0 and queue.counts()["running"] == 0


def test_cancelling_a_queued_parent_releases_its_children_and_a_waiting_child_leaves_no_edge(queue):
    a, b = make(2)
    queue.enqueue_many([a, b])
    child, other = child_of(a), child_of(b)
    queue.enqueue_many([child, other])
    assert queue.cancel(a.id) is not None
    assert state_of(queue, child) == 0  # released in the cancel's transaction
    cancelled = queue.cancel(other.id)  # a waiting job can be cancelled too
    assert cancelled is not None and cancelled.id == other.id
    assert queue.dependents(b.id) == []
    conn = queue.db.connection()
    assert conn.execute("SELECT count(*) FROM nuvom_deps").fetchone()[0] == 0


def test_an_ack_after_results_stored_elsewhere_releases_the_children(queue, tmp_path):
    elsewhere = SQLiteResultBackend(path=tmp_path / "results.db")
    [parent] = make(1)
    queue.enqueue(parent)
    child = child_of(parent)
    queue.enqueue(child)
    queue.settle(finish(claim(queue)), [], [], elsewhere)
    assert elsewhere.get_full(parent.id) is not None
    assert [j.id for j in claim(queue)] == [child.id]
    elsewhere.close()


def test_clear_drops_waiting_jobs_with_their_edges_and_keeps_claimed_ones(queue, results):
    [parent, other] = make(2)
    queue.enqueue_many([parent, other])
    [claimed] = claim(queue, 1)
    queue.enqueue(child_of(claimed))
    assert queue.clear() == 2  # the other queued job and the waiting child
    assert queue.dependents(claimed.id) == []
    queue.settle(finish([claimed]), [], [], results)  # releases nothing, fails nothing
    assert queue.qsize() == 0


def test_plain_jobs_settle_with_the_statements_they_did(queue, results, traced):
    queue.enqueue_many(make(5))
    jobs = finish(claim(queue))
    traced.clear()
    queue.settle(jobs, [], [], results)
    # One delete of the claimed rows, the results' inserts (one per row), and nothing for workflows.
    assert not any("nuvom_deps" in s for s in traced), traced
    kinds = [s.split()[0] for s in traced if s.split()[0] in ("BEGIN", "DELETE", "INSERT", "UPDATE", "COMMIT")]
    assert [kind for kind, _ in itertools.groupby(kinds)] == ["BEGIN", "DELETE", "INSERT", "COMMIT"]
    assert kinds.count("DELETE") == 1


# -- cancel requests and rate limits ----------------------------------------------
def test_a_cancel_request_is_kept_for_a_claimed_job_and_goes_with_it(db_path, queue, results):
    a, b = make(2)
    queue.enqueue_many([a, b])
    assert not queue.request_cancel(a.id)  # not claimed: nothing to ask
    claimed = claim(queue)
    other = SQLiteJobQueue(path=db_path)  # another process asks
    assert other.request_cancel(a.id)
    assert queue.cancel_requested([a.id, b.id]) == {a.id}
    queue.settle(finish([j for j in claimed if j.id == a.id]), [], [], results)
    assert queue.cancel_requested([a.id, b.id]) == set()
    assert other.db.connection().execute("SELECT count(*) FROM nuvom_queue WHERE cancel_at IS NOT NULL").fetchone() == (
        0,
    )
    other.close()


def test_a_rate_limit_is_shared_by_every_queue_object_on_the_file(db_path, queue):
    other = SQLiteJobQueue(path=db_path)
    assert [queue.acquire_rate("task:t", 3, 1.0) for _ in range(2)] == [0.0, 0.0]
    assert other.acquire_rate("task:t", 3, 1.0) == 0.0
    wait = other.acquire_rate("task:t", 3, 1.0)
    assert 0.2 < wait <= 1 / 3  # the fourth start within a second frees a third of a second after the first
    assert queue.acquire_rate("task:other", 3, 1.0) == 0.0  # per key
    time.sleep(wait)
    assert queue.acquire_rate("task:t", 3, 1.0) == 0.0
    other.close()


def test_a_schedule_tick_queues_its_job_in_its_tasks_queue_at_its_priority(queue):
    from nuvom.schedule import Schedule

    past = time.time() - 100
    schedule = Schedule(
        key="report",
        task="record",
        interval=60,
        anchor=past,
        next_run_at=past,
        job_fields={"queue": "reports", "priority": 3},
    )
    queue.upsert_schedule(schedule)
    job = schedule.make_job(past, past)
    assert queue.claim_tick("report", past, job, past + 60)
    assert claim(queue) == []  # not the default queue's
    [got] = claim(queue, 10, ("reports",))
    assert got.id == job.id and (got.queue, got.priority) == ("reports", 3)
