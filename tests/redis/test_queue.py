"""The queue's delivery contract on a real redis-server: claims, leases, fencing,
due order, delays, settling."""

from __future__ import annotations

import threading
import time

import pytest
from nuvom.config import load_settings
from nuvom.errors import BackendError
from nuvom.job import Job, JobStatus, lease_secs_for
from nuvom.redis import RedisJobQueue, RedisResultBackend


def make(n: int, **fields) -> list[Job]:
    return [Job(func_name="record", args=[f"k{i}"], **fields) for i in range(n)]


def finish(jobs: list[Job]) -> list[Job]:
    now = time.time()
    for job in jobs:
        job.status, job.result, job.started_at, job.finished_at = JobStatus.SUCCESS, job.args[0], now, now
    return jobs


def expire_leases(queue: RedisJobQueue) -> None:
    """Make every claim's lease run out now (as if its worker had died long ago)."""
    key = queue.key("leases")
    for member in queue.client.zrange(key, 0, -1):
        queue.client.zadd(key, {member: 0})


def other_view(queue: RedisJobQueue) -> RedisJobQueue:
    """Another process's view of the same queue (its own claims table)."""
    return RedisJobQueue(load_settings(), redis=queue.redis_settings)


def test_claim_marks_jobs_running_and_counts_the_attempt_in_storage(queue):
    queue.enqueue_many(make(3))
    jobs = queue.claim(10)
    assert [j.status for j in jobs] == [JobStatus.RUNNING] * 3
    assert [j.attempts for j in jobs] == [1, 1, 1]
    stored = other_view(queue).get(jobs[0].id)
    assert stored.status is JobStatus.RUNNING and stored.attempts == 1
    assert queue.qsize() == 0 and queue.running() == 3


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
    assert queue.client.hget(queue.key("started"), job.id) is None  # the new claim has not started
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


def server_time(queue: RedisJobQueue) -> float:
    secs, micros = queue.client.time()
    return float(secs) + float(micros) / 1e6


def test_a_start_mark_renews_the_lease_from_the_start_and_is_fenced_by_the_claim(queue):
    other = other_view(queue)
    queue.enqueue(make(1, timeout_secs=600)[0])
    [waited] = queue.claim(1)
    claim_lease = queue.client.zscore(queue.key("leases"), waited.id)
    time.sleep(1.2)  # the job waits in this worker's buffer past the claim's first second
    before = server_time(queue)
    assert queue.mark_started(waited)
    lease = queue.client.zscore(queue.key("leases"), waited.id)
    assert queue.client.hget(queue.key("started"), waited.id) is not None
    assert lease > claim_lease and lease - before >= 600 * 1.1 + 2  # the job's lease, from its start
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
    claim_lease = queue.client.zscore(queue.key("leases"), job.id)
    assert queue.mark_started(job)
    assert queue.client.zscore(queue.key("leases"), job.id) == claim_lease
    assert queue.client.hget(queue.key("started"), job.id) is not None


def test_settle_writes_outcomes_retries_and_start_marks_in_one_round_trip_each_fenced_by_its_claim(queue, results):
    other = other_view(queue)
    queue.enqueue_many(make(4))
    done, again, following, lost = queue.claim(4)
    assert queue.mark_started(done) and queue.mark_started(again)
    again.mark_retrying(time.time() + 60)
    assert queue.settle(finish([done]), [again], [following], results) == [True]
    assert results.get_full(done.id).status is JobStatus.SUCCESS
    started = queue.client.hgetall(queue.key("started"))
    assert set(started) == {following.id.encode()}  # done's mark went with it, again's with its hand-back
    assert queue.client.zscore(queue.key("due"), again.id) is not None  # waiting for its retry
    assert queue.mark_started(following)  # marked again when it starts: harmless
    # The next job's claim was taken over meanwhile: the outcome is stored, the mark is refused.
    expire_leases(queue)
    retaken = {j.id: j for j in other.claim(10)}
    assert retaken[lost.id].attempts == 1 and retaken[following.id].attempts == 2
    assert queue.settle(finish([following]), [], [lost], results) == [False]
    assert results.get_full(following.id) is None  # fenced too: its claim was taken over
    assert lost.id not in queue._claims
    other.close()


def test_settle_reloads_scripts_a_restarted_server_lost(queue, results):
    queue.enqueue_many(make(2))
    done, following = queue.claim(2)
    assert queue.mark_started(done)
    queue.client.script_flush()
    assert queue.settle(finish([done]), [], [following], results) == [True]
    assert results.get_full(done.id).status is JobStatus.SUCCESS
    assert queue.client.hget(queue.key("started"), following.id) is not None


def test_ack_and_requeue_drop_start_marks(queue):
    queue.enqueue_many(make(2))
    a, b = queue.claim(2)
    assert queue.mark_started(a) and queue.mark_started(b)
    queue.ack([a.id])
    a.mark_handed_back()
    queue.requeue([b.model_copy(update={"status": JobStatus.RETRYING})])
    assert queue.client.hlen(queue.key("started")) == 0


def test_the_lease_follows_the_one_rule_of_core(queue):
    short, long_ = Job(func_name="a", timeout_secs=1), Job(func_name="b", timeout_secs=100)
    queue.enqueue_many([short, long_])
    server_now = float(".".join(x.decode() if isinstance(x, bytes) else str(x) for x in queue.client.time()))
    queue.claim(2)
    ends = dict(queue.client.zrange(queue.key("leases"), 0, -1, withscores=True))
    s = queue.settings
    for job in (short, long_):
        want = lease_secs_for(job.timeout_secs, lease_secs=s.lease_secs, default_timeout_secs=s.job_timeout_secs)
        assert ends[job.id.encode()] - server_now == pytest.approx(want, abs=1.0)


def test_a_zombie_whose_claim_was_taken_over_cannot_complete_or_hand_back(queue, results):
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
    lease_end = live.client.zscore(live.key("leases"), job.id)
    zombie.extend_leases([job.id])
    assert live.client.zscore(live.key("leases"), job.id) == lease_end
    # ...nor record an outcome: fenced off by the token, in the completing script.
    finish([held])
    held.result = "zombie"
    zombie.complete([held], results)
    assert results.get_full(job.id) is None
    assert live.get(job.id).status is JobStatus.RUNNING
    finish([again])
    live.complete([again], results)
    record = results.get_full(job.id)
    assert record.result == "k0" and record.attempts == 2
    assert live.running() == 0 and live.qsize() == 0
    live.close()


def test_completion_stores_the_outcome_and_removes_the_claim_in_one_step(queue, results):
    jobs = make(4)
    queue.enqueue_many(jobs)
    claimed = queue.claim(4)
    queue.complete(finish(claimed), results)
    assert results.count() == 4
    assert queue.running() == 0 and queue.qsize() == 0
    assert all(queue.get(j.id) is None for j in jobs)
    # Nothing of the jobs is left in the queue's hashes.
    for name in ("payload", "attempts", "timeout", "token"):
        assert queue.client.hlen(queue.key(name)) == 0, name


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
    assert 0.25 < waited < 0.6


def test_requeue_twice_hands_back_once(queue):
    job = make(1)[0]
    queue.enqueue(job)
    (claimed,) = queue.claim(1)
    claimed.attempts -= 1
    claimed.status = JobStatus.PENDING
    tokens = dict(queue._claims)
    queue.requeue([claimed])
    # The same hand-back again (a retry after a lost reply) finds the token spent.
    queue._claims.update(tokens)
    queue.requeue([claimed])
    assert queue.qsize() == 1
    (again,) = queue.claim(5)
    assert again.attempts == 1


def test_delayed_jobs_become_due_without_polling_each(queue):
    now = time.time()
    later, sooner, ready = (
        Job(func_name="x", not_before=now + 0.6),
        Job(func_name="x", not_before=now + 0.3),
        Job(func_name="x"),
    )
    queue.enqueue_many([later, sooner, ready])
    assert [j.id for j in queue.claim(10)] == [ready.id]
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got += [(j.id, time.time() - now) for j in queue.pop_batch(10, timeout=1)]
    assert [g[0] for g in got] == [sooner.id, later.id]
    assert 0.29 < got[0][1] < 0.45 and 0.59 < got[1][1] < 0.75


def test_extend_leases_renews_only_held_claims(queue):
    jobs = make(2)
    queue.enqueue_many(jobs)
    claimed = queue.claim(2)
    key = queue.key("leases")
    queue.client.zadd(key, {claimed[0].id: 1, claimed[1].id: 1})
    queue._forget([claimed[1].id], queue._tokens([claimed[1].id]))  # not ours any more
    queue.extend_leases([j.id for j in claimed])
    scores = dict(queue.client.zrange(key, 0, -1, withscores=True))
    assert scores[claimed[0].id.encode()] > time.time() + 10
    assert scores[claimed[1].id.encode()] == 1


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


def test_a_duplicate_job_id_is_refused_and_the_stored_job_kept(queue):
    job = make(1)[0]
    queue.enqueue(job)
    copy = job.model_copy(update={"args": ["other"]})
    with pytest.raises(BackendError, match="already queued"):
        queue.enqueue(copy)
    assert queue.get(job.id).args == ["k0"] and queue.qsize() == 1


def test_a_blocked_claimer_wakes_within_milliseconds_of_an_enqueue(queue):
    other = other_view(queue)
    got: list[tuple[float, list[Job]]] = []
    started = threading.Event()

    def claimer() -> None:
        started.set()
        jobs = other.pop_batch(1, timeout=10)
        got.append((time.perf_counter(), jobs))

    t = threading.Thread(target=claimer)
    t.start()
    started.wait()
    # Let the claimer reach BLPOP: it looks once, finds nothing and blocks.
    wait_for_blocked = time.monotonic() + 5
    while time.monotonic() < wait_for_blocked:
        clients = queue.client.client_list()
        if any(c.get("cmd") == "blpop" for c in clients):
            break
        time.sleep(0.002)
    t0 = time.perf_counter()
    queue.enqueue(make(1)[0])
    t.join(10)
    ((at, jobs),) = got
    assert len(jobs) == 1
    assert at - t0 < 0.05
    other.close()


def test_a_crowd_of_claimers_takes_each_job_once(queue):
    queue.enqueue_many(make(600))
    views = [other_view(queue) for _ in range(6)]
    seen: list[str] = []
    lock = threading.Lock()

    def drain(q: RedisJobQueue) -> None:
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


def test_a_corrupt_payload_fails_that_job_clearly(queue):
    jobs = make(3)
    queue.enqueue_many(jobs)
    queue.client.hset(queue.key("payload"), jobs[1].id, b"\xc1\xc1 not msgpack")
    results = RedisResultBackend(load_settings(), redis=queue.redis_settings)
    claimed = queue.claim(10)
    assert [j.id for j in claimed] == [jobs[0].id, jobs[2].id]
    bad = results.get_full(jobs[1].id)
    assert bad.status is JobStatus.FAILED and bad.error.type == "SerializationError"
    assert "corrupt" in bad.error.message
    assert queue.get(jobs[1].id) is None
    results.close()


def test_prefixes_keep_apps_apart(queue, rsettings):
    other_app = RedisJobQueue(
        load_settings(), redis=rsettings.model_copy(update={"redis_prefix": rsettings.redis_prefix + "b"})
    )
    queue.enqueue_many(make(3))
    assert other_app.qsize() == 0 and other_app.claim(10) == []
    other_app.enqueue(make(1)[0])
    assert queue.qsize() == 3
    other_app.close()


def test_a_claim_that_starts_jobs_marks_the_first_ones_in_the_same_step(queue):
    other = other_view(queue)
    jobs = make(3, timeout_secs=600)
    queue.enqueue_many(jobs)
    before = server_time(queue)
    claimed = queue.pop_batch_starting(3, start=2)
    assert [j.id for j in claimed] == [j.id for j in jobs]
    started = queue.client.hgetall(queue.key("started"))
    assert set(started) == {jobs[0].id.encode(), jobs[1].id.encode()}
    for job in jobs[:2]:  # the job's own lease, from the claim that started it
        assert queue.client.zscore(queue.key("leases"), job.id) - before >= 600 * 1.1 + 2
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
    assert len(queue.client.hgetall(queue.key("started"))) == 2
    assert queue.pop_batch_starting(10, start=5) == []
    queue.enqueue(make(1)[0])
    assert len(queue.pop_batch(10)) == 1  # the plain claim marks nothing
    assert len(queue.client.hgetall(queue.key("started"))) == 2


def test_a_corrupt_payload_among_the_started_jobs_leaves_the_first_returned_marked(queue, results):
    jobs = make(3)
    queue.enqueue_many(jobs)
    queue.client.hset(queue.key("payload"), jobs[0].id, b"\xc1\xc1 not msgpack")
    claimed = queue.pop_batch_starting(3, start=2)
    assert [j.id for j in claimed] == [jobs[1].id, jobs[2].id]
    # The script marked jobs 0 and 1; job 0 failed as unreadable, so job 2 is marked too.
    assert set(queue.client.hgetall(queue.key("started"))) == {jobs[1].id.encode(), jobs[2].id.encode()}
    assert results.get_full(jobs[0].id).status is JobStatus.FAILED


class CountingQueue(RedisJobQueue):
    """Counts the start marks written one by one (not with a claim)."""

    marks = 0

    def mark_started(self, job: Job) -> bool:
        type(self).marks += 1
        return super().mark_started(job)


def test_an_idle_worker_starts_jobs_with_their_claim_and_writes_no_separate_start_mark(rsettings, tmp_path):
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

    q = CountingQueue(settings, redis=rsettings)
    results = RedisResultBackend(settings, redis=rsettings)
    with Worker(app=app, queue=q, results=results, max_workers=2):
        for n in range(6):  # one at a time: each reaches an idle thread
            job = note.make_job([n], {})
            q.enqueue(job)
            done = results.wait(job.id, 10)
            assert done is not None and done.status is JobStatus.SUCCESS and done.attempts == 1
            if n == 0:
                # The first claim may have been sent before the new threads were
                # waiting (the count of idle threads goes with the claim): not counted.
                CountingQueue.marks = 0
    assert seen == list(range(6))
    assert CountingQueue.marks == 0  # every start mark went with its claim
    assert q.client.hlen(q.key("started")) == 0 and q.running() == 0  # completions cleared them
    results.close()
    q.close()
    app.close()
