"""The queue's delivery contract on a real PostgreSQL: claims, leases, fencing,
due order, delays, settling, wake-ups."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from nuvom.config import load_settings
from nuvom.errors import BackendError
from nuvom.job import Job, JobStatus, lease_secs_for
from nuvom.postgres import PostgresJobQueue, PostgresResultBackend


def make(n: int, **fields: Any) -> list[Job]:
    return [Job(func_name="record", args=[f"k{i}"], **fields) for i in range(n)]


def finish(jobs: list[Job]) -> list[Job]:
    now = time.time()
    for job in jobs:
        job.status, job.result, job.started_at, job.finished_at = JobStatus.SUCCESS, job.args[0], now, now
    return jobs


def sql(queue: PostgresJobQueue, statement: str, params: Any = ()) -> list[Any]:
    """A statement on the queue's own tables (``{q}`` is nuvom_queue), through its pool."""
    return queue.db.run("a test", lambda c: c.execute(statement.replace("{q}", queue.sql.queue), params).fetchall())


def write(queue: PostgresJobQueue, statement: str, params: Any = ()) -> None:
    queue.db.run("a test", lambda c: c.execute(statement.replace("{q}", queue.sql.queue), params))


def expire_leases(queue: PostgresJobQueue) -> None:
    """Make every claim's lease run out now (as if its worker had died long ago)."""
    write(queue, "UPDATE {q} SET ready_at = 0 WHERE state = 1")


def row(queue: PostgresJobQueue, job_id: str) -> dict[str, Any]:
    names = ("state", "attempts", "ready_at", "started_at", "claim_token", "now")
    [values] = sql(
        queue,
        "SELECT state, attempts, ready_at, started_at, claim_token, date_part('epoch', now()) FROM {q} WHERE id = %s",
        (job_id,),
    )
    return dict(zip(names, values, strict=True))


def other_view(queue: PostgresJobQueue) -> PostgresJobQueue:
    """Another process's view of the same queue (its own claims table)."""
    return PostgresJobQueue(load_settings(), postgres=queue.postgres_settings)


def test_claim_marks_jobs_running_and_counts_the_attempt_in_storage(queue):
    queue.enqueue_many(make(3))
    jobs = queue.claim(10)
    assert [j.status for j in jobs] == [JobStatus.RUNNING] * 3
    assert [j.attempts for j in jobs] == [1, 1, 1]
    stored = other_view(queue).get(jobs[0].id)
    assert stored.status is JobStatus.RUNNING and stored.attempts == 1
    assert queue.qsize() == 0 and queue.running() == 3
    assert queue.counts() == {"queued": 0, "retrying": 0, "running": 3}


def test_claims_come_oldest_first_in_batches(queue):
    jobs = make(5)
    queue.enqueue_many(jobs)
    assert [j.id for j in queue.claim(2)] == [jobs[0].id, jobs[1].id]
    assert [j.id for j in queue.claim(10)] == [j.id for j in jobs[2:]]
    assert queue.claim(10) == []


def test_a_claimed_job_is_invisible_to_other_claimers(queue):
    other = other_view(queue)
    queue.enqueue(make(1)[0])
    assert len(queue.claim(1)) == 1
    assert other.claim(1) == []
    other.close()


def test_a_job_whose_lease_expired_is_claimed_again_with_its_attempt_counted(queue):
    other = other_view(queue)
    job = make(1)[0]
    queue.enqueue(job)
    [claimed] = queue.claim(1)
    assert queue.mark_started(claimed)
    expire_leases(queue)
    again = other.claim(1)
    assert [j.id for j in again] == [job.id]
    assert again[0].attempts == 2
    assert again[0].mark_lost_runs(time.time()) == 1
    assert row(queue, job.id)["started_at"] is None  # the new claim has not started
    other.close()


def test_an_expired_claim_that_never_started_is_handed_back_without_counting(queue):
    other = other_view(queue)
    job = make(1)[0]
    queue.enqueue(job)
    for _ in range(5):  # claimed and lost five times, never started
        assert [j.id for j in queue.claim(1)] == [job.id]
        expire_leases(queue)
    [again] = other.claim(1)
    assert again.attempts == 1
    assert again.mark_lost_runs(time.time()) == 0 and again.history == []
    assert other.get(job.id).attempts == 1
    # Started this time, then lost: that run counts, once.
    assert other.mark_started(again)
    expire_leases(queue)
    [third] = queue.claim(1)
    assert third.attempts == 2 and third.mark_lost_runs(time.time()) == 1
    other.close()


def test_a_start_mark_renews_the_lease_from_the_start_and_is_fenced_by_the_claim(queue):
    other = other_view(queue)
    queue.enqueue(make(1, timeout_secs=600)[0])
    [waited] = queue.claim(1)
    claim_lease = row(queue, waited.id)["ready_at"]
    time.sleep(1.2)  # the job waits in this worker's buffer past the claim's first second
    assert queue.mark_started(waited)
    marked = row(queue, waited.id)
    assert marked["started_at"] is not None
    assert marked["ready_at"] > claim_lease and marked["ready_at"] - marked["started_at"] >= 600 * 1.1 + 2
    # A claim that expired in this worker's buffer and was taken by another
    # worker: the start mark fails, and the job must not run here.
    queue.enqueue(make(1)[0])
    [lost] = queue.claim(1)
    expire_leases(queue)  # (the first job's lease too: the other worker takes both)
    taken = {j.id: j for j in other.claim(10)}
    assert lost.id in taken and taken[lost.id].attempts == 1
    assert taken[waited.id].attempts == 2  # it had started: a run lost with its worker
    assert not queue.mark_started(lost)
    assert lost.id not in queue._claims  # forgotten here: nothing of it is settled by this worker
    assert other.mark_started(taken[lost.id])
    other.close()


def test_a_job_started_right_after_its_claim_keeps_the_claims_lease(queue):
    queue.enqueue(make(1, timeout_secs=600)[0])
    [job] = queue.claim(1)
    claim_lease = row(queue, job.id)["ready_at"]
    assert queue.mark_started(job)
    marked = row(queue, job.id)
    assert marked["ready_at"] == claim_lease and marked["started_at"] is not None


def test_settle_writes_outcomes_retries_and_start_marks_in_one_statement_each_fenced_by_its_claim(queue, results):
    other = other_view(queue)
    queue.enqueue_many(make(4))
    done, again, following, lost = queue.claim(4)
    assert queue.mark_started(done) and queue.mark_started(again)
    again.mark_retrying(time.time() + 60)
    assert queue.settle(finish([done]), [again], [following], results) == [True]
    assert results.get_full(done.id).status is JobStatus.SUCCESS
    assert queue.get(done.id) is None
    assert row(queue, again.id)["state"] == 0 and row(queue, again.id)["started_at"] is None  # waiting for its retry
    assert row(queue, again.id)["ready_at"] > time.time() + 50
    assert row(queue, following.id)["started_at"] is not None
    assert queue.mark_started(following)  # marked again when it starts: harmless
    # The next job's claim was taken over meanwhile: the outcome is refused, the mark too.
    expire_leases(queue)
    retaken = {j.id: j for j in other.claim(10)}
    assert retaken[lost.id].attempts == 1 and retaken[following.id].attempts == 2
    assert queue.settle(finish([following]), [], [lost], results) == [False]
    assert results.get_full(following.id) is None  # fenced too: its claim was taken over
    assert lost.id not in queue._claims
    other.close()


def test_a_settle_written_twice_changes_nothing_the_second_time(queue, results):
    queue.enqueue_many(make(3))
    done, back, starting = queue.claim(3)
    tokens = dict(queue._claims)
    back.mark_handed_back()
    assert queue.settle(finish([done]), [back], [starting], results) == [True]
    first = results.get_full(done.id)
    [again] = queue.claim(5)  # the handed-back job, claimed again under a new token
    # The same write again, with the tokens it was written with (a retry after a lost reply).
    queue._claims.update(tokens)
    assert queue.settle(finish([done]), [back], [starting], results) == [True]
    assert results.get_full(done.id) == first and results.count() == 1
    assert row(queue, again.id)["state"] == 1  # the new claim stands: not handed back twice
    assert queue.running() == 2 and queue.qsize() == 0


def test_the_lease_follows_the_one_rule_of_core(queue):
    short, long_ = Job(func_name="a", timeout_secs=1), Job(func_name="b", timeout_secs=100)
    queue.enqueue_many([short, long_])
    queue.claim(2)
    s = queue.settings
    for job in (short, long_):
        want = lease_secs_for(job.timeout_secs, lease_secs=s.lease_secs, default_timeout_secs=s.job_timeout_secs)
        got = row(queue, job.id)
        assert got["ready_at"] - got["now"] == pytest.approx(want, abs=1.0)


def test_a_zombie_whose_claim_was_taken_over_cannot_complete_renew_or_hand_back(queue, results):
    zombie, live = queue, other_view(queue)
    job = make(1)[0]
    zombie.enqueue(job)
    (held,) = zombie.claim(1)
    assert zombie.mark_started(held)  # it ran (and stalled): its run counts
    tokens = dict(zombie._claims)
    expire_leases(queue)
    (again,) = live.claim(1)
    # It cannot hand the job back...
    zombie.requeue([held.model_copy(update={"status": JobStatus.RETRYING})])
    assert live.qsize() == 0 and live.running() == 1
    # ...nor renew the lease it lost...
    zombie._claims.update(tokens)
    lease_end = row(live, job.id)["ready_at"]
    zombie.extend_leases([job.id])
    assert row(live, job.id)["ready_at"] == lease_end
    # ...nor record an outcome: fenced off by the token, in the completing statement.
    finish([held])
    held.result = "zombie"
    zombie.complete([held], results)
    assert results.get_full(job.id) is None
    assert live.get(job.id).status is JobStatus.RUNNING
    finish([again])
    live.complete([again], results)
    record = results.get_full(job.id)
    assert record.result == "k0" and record.attempts == 2
    # ...not even later, once the live worker's row is gone.
    zombie._claims.update(tokens)
    zombie.complete([held], results)
    assert results.get_full(job.id).result == "k0"
    assert live.running() == 0 and live.qsize() == 0
    live.close()


def test_completion_without_a_known_token_checks_the_attempt(queue, results):
    job = make(1)[0]
    queue.enqueue(job)
    (claimed,) = queue.claim(1)
    # A different queue object (a restarted process) completes: the claim must
    # still be the one at this attempt count.
    other = other_view(queue)
    stale = claimed.model_copy(update={"attempts": 7})
    other.complete(finish([stale]), results)
    assert results.get_full(job.id) is None
    other.complete(finish([claimed]), results)
    assert results.get_full(job.id) is not None and queue.running() == 0
    other.close()


def test_requeue_with_a_not_before_time_waits_for_it(queue):
    job = make(1)[0]
    queue.enqueue(job)
    (claimed,) = queue.claim(1)
    claimed.status, claimed.not_before = JobStatus.RETRYING, time.time() + 0.4
    queue.requeue([claimed])
    assert queue.running() == 0 and queue.qsize() == 1
    assert queue.claim(1) == []
    t0 = time.monotonic()
    (again,) = queue.pop_batch(1, timeout=5)
    waited = time.monotonic() - t0
    assert again.id == job.id and again.attempts == 2 and again.status is JobStatus.RUNNING
    assert 0.25 < waited < 1.5  # at its time, not at the 2 s safety poll


def test_requeue_twice_hands_back_once(queue):
    job = make(1)[0]
    queue.enqueue(job)
    (claimed,) = queue.claim(1)
    claimed.mark_handed_back()
    tokens = dict(queue._claims)
    queue.requeue([claimed])
    # The same hand-back again (a retry after a lost reply) finds the token spent.
    queue._claims.update(tokens)
    queue.requeue([claimed])
    assert queue.qsize() == 1
    (again,) = queue.claim(5)
    assert again.attempts == 1


def test_delayed_jobs_become_due_at_their_time_without_polling_each(queue):
    now = time.time()
    later, sooner, ready = (
        Job(func_name="x", not_before=now + 2.0),
        Job(func_name="x", not_before=now + 1.0),
        Job(func_name="x"),
    )
    queue.enqueue_many([later, sooner, ready])
    assert [j.id for j in queue.claim(10)] == [ready.id]
    got = []
    deadline = time.monotonic() + 8
    while len(got) < 2 and time.monotonic() < deadline:
        got += [(j.id, time.time() - now) for j in queue.pop_batch(10, timeout=3)]
    assert [g[0] for g in got] == [sooner.id, later.id]
    # Never early; late by less than the 2 s safety poll: the wait ended at the due time.
    assert 0.99 < got[0][1] < 1.9 and 1.99 < got[1][1] < 2.9


def test_extend_leases_renews_only_held_claims(queue):
    jobs = make(2)
    queue.enqueue_many(jobs)
    claimed = queue.claim(2)
    write(queue, "UPDATE {q} SET ready_at = 1")
    queue._forget([claimed[1].id], queue._tokens([claimed[1].id]))  # not ours any more
    queue.extend_leases([j.id for j in claimed])
    assert row(queue, claimed[0].id)["ready_at"] > time.time() + 10
    assert row(queue, claimed[1].id)["ready_at"] == 1


def test_ack_removes_only_the_holders_claim(queue):
    jobs = make(2)
    queue.enqueue_many(jobs)
    claimed = queue.claim(2)
    queue.ack([claimed[0].id, "unknown-id"])
    assert queue.get(claimed[0].id) is None and queue.running() == 1


def test_clear_drops_waiting_jobs_and_keeps_claimed_ones(queue):
    queue.enqueue_many(make(5))
    queue.claim(2)
    assert queue.clear() == 3
    assert queue.qsize() == 0 and queue.running() == 2


def test_cancel_removes_only_a_waiting_job_and_peek_shows_the_waiting_in_due_order(queue):
    jobs = make(3)
    queue.enqueue_many(jobs)
    [claimed] = queue.claim(1)
    assert [j.id for j in queue.peek()] == [jobs[1].id, jobs[2].id]
    assert queue.cancel(claimed.id) is None
    assert queue.cancel(jobs[1].id).id == jobs[1].id
    assert [j.id for j in queue.peek()] == [jobs[2].id] and queue.cancel(jobs[1].id) is None


def test_a_duplicate_job_id_is_refused_and_the_stored_job_kept(queue):
    job = make(1)[0]
    queue.enqueue(job)
    copy = job.model_copy(update={"args": ["other"]})
    with pytest.raises(BackendError, match="already queued"):
        queue.enqueue(copy)
    with pytest.raises(BackendError, match="already queued"):
        queue.enqueue_many([*make(2), copy])
    assert queue.get(job.id).args == ["k0"] and queue.qsize() == 1  # the whole map() was refused


def test_an_idle_claimer_wakes_within_milliseconds_of_an_enqueue_without_polling(queue):
    other = other_view(queue)
    got: list[tuple[float, list[Job]]] = []
    waiting = threading.Event()
    claims: list[float] = []
    claim = other._claim

    def counted(*args: Any) -> Any:
        claims.append(time.monotonic())
        return claim(*args)

    other._claim = counted  # type: ignore[method-assign]

    def claimer() -> None:
        other.pop_batch(1, timeout=0.1)  # its listener is in place from here on
        waiting.set()
        jobs = other.pop_batch(1, timeout=10)
        got.append((time.perf_counter(), jobs))

    t = threading.Thread(target=claimer)
    t.start()
    waiting.wait(10)
    before = len(claims)
    time.sleep(1.5)  # the claimer waits: what it costs the server meanwhile is the point
    during = len(claims) - before
    t0 = time.perf_counter()
    queue.enqueue(make(1)[0])
    t.join(10)
    ((at, jobs),) = got
    assert len(jobs) == 1
    assert at - t0 < 0.5  # woken by the enqueue's notification, not the 2 s safety poll
    # A poller looking every few milliseconds would have made hundreds of claims.
    assert during <= 2, during
    other.close()


def test_a_crowd_of_claimers_takes_each_job_once(queue):
    queue.enqueue_many(make(600))
    views = [other_view(queue) for _ in range(6)]
    seen: list[str] = []
    lock = threading.Lock()

    def drain(q: PostgresJobQueue) -> None:
        while True:
            jobs = q.pop_batch(7, timeout=0.2)
            if not jobs:
                return
            with lock:
                seen.extend(j.id for j in jobs)

    threads = [threading.Thread(target=drain, args=(v,)) for v in views]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 600 and len(set(seen)) == 600
    for v in views:
        v.close()


def test_a_corrupt_payload_fails_that_job_clearly(queue, results):
    jobs = make(3)
    queue.enqueue_many(jobs)
    write(queue, "UPDATE {q} SET payload = %s WHERE id = %s", (b"\xc1\xc1 not msgpack", jobs[1].id))
    claimed = queue.claim(10)
    assert [j.id for j in claimed] == [jobs[0].id, jobs[2].id]
    bad = results.get_full(jobs[1].id)
    assert bad.status is JobStatus.FAILED and bad.error.type == "SerializationError"
    assert "corrupt" in bad.error.message
    assert queue.get(jobs[1].id) is None


def test_schemas_keep_apps_apart(queue, psettings):
    other_app = PostgresJobQueue(
        load_settings(), postgres=psettings.model_copy(update={"postgres_schema": psettings.postgres_schema + "b"})
    )
    queue.enqueue_many(make(3))
    assert other_app.qsize() == 0 and other_app.claim(10) == []
    other_app.enqueue(make(1)[0])
    assert queue.qsize() == 3
    other_app.close()


def test_a_claim_that_starts_jobs_marks_the_first_ones_in_the_same_statement(queue):
    other = other_view(queue)
    jobs = make(3, timeout_secs=600)
    queue.enqueue_many(jobs)
    claimed = queue.pop_batch_starting(3, start=2)
    assert [j.id for j in claimed] == [j.id for j in jobs]
    rows = [row(queue, j.id) for j in jobs]
    assert [r["started_at"] is not None for r in rows] == [True, True, False]
    for r in rows[:2]:  # the job's own lease, from the claim that started it
        assert r["ready_at"] - r["started_at"] >= 600 * 1.1 + 2
    # The worker dies holding all three: the two that started count as lost runs,
    # the one still waiting in its buffer is handed back with its attempt undone.
    expire_leases(queue)
    again = {j.id: j for j in other.claim(10)}
    assert [again[j.id].attempts for j in jobs] == [2, 2, 1]
    assert [again[j.id].mark_lost_runs(time.time()) for j in jobs] == [1, 1, 0]
    other.close()


def test_a_claim_asked_to_start_more_than_it_finds_marks_what_it_claimed(queue):
    jobs = make(2)
    queue.enqueue_many(jobs)
    assert [j.id for j in queue.pop_batch_starting(10, start=5)] == [j.id for j in jobs]
    assert len(sql(queue, "SELECT id FROM {q} WHERE started_at IS NOT NULL")) == 2
    assert queue.pop_batch_starting(10, start=5) == []
    queue.enqueue(make(1)[0])
    assert len(queue.pop_batch(10)) == 1  # the plain claim marks nothing
    assert len(sql(queue, "SELECT id FROM {q} WHERE started_at IS NOT NULL")) == 2


def test_a_corrupt_payload_among_the_started_jobs_leaves_the_first_returned_marked(queue, results):
    jobs = make(3)
    queue.enqueue_many(jobs)
    write(queue, "UPDATE {q} SET payload = %s WHERE id = %s", (b"\xc1\xc1 not msgpack", jobs[0].id))
    claimed = queue.pop_batch_starting(3, start=2)
    assert [j.id for j in claimed] == [jobs[1].id, jobs[2].id]
    # The claim marked jobs 0 and 1; job 0 failed as unreadable, so job 2 is marked too.
    marked = {r[0] for r in sql(queue, "SELECT id FROM {q} WHERE started_at IS NOT NULL")}
    assert marked == {jobs[1].id, jobs[2].id}
    assert results.get_full(jobs[0].id).status is JobStatus.FAILED


class CountingQueue(PostgresJobQueue):
    """Counts the start marks written one by one (not with a claim)."""

    marks = 0

    def mark_started(self, job: Job) -> bool:
        type(self).marks += 1
        return super().mark_started(job)


def test_an_idle_worker_starts_jobs_with_their_claim_and_writes_no_separate_start_mark(psettings, tmp_path):
    from nuvom.app import App
    from nuvom.config import Settings
    from nuvom.worker import Worker

    settings = Settings(data_dir=tmp_path / "data")
    app = App(settings)
    seen: list[int] = []

    @app.task(name="note")
    def note(n: int) -> int:
        seen.append(n)
        return n

    q = CountingQueue(settings, postgres=psettings)
    results = PostgresResultBackend(settings, postgres=psettings)
    with Worker(app=app, queue=q, results=results, max_workers=2):
        for n in range(6):  # one at a time: each reaches an idle thread
            job = note.make_job([n], {})
            q.enqueue(job)
            done = results.wait(job.id, 10)
            assert done is not None and done.status is JobStatus.SUCCESS and done.attempts == 1
            if n == 0:
                CountingQueue.marks = 0
    assert seen == list(range(6))
    assert CountingQueue.marks == 0  # every start mark went with its claim
    assert q.running() == 0 and q.qsize() == 0
    results.close()
    q.close()
    app.close()
