"""Job control and workflows (issue 29) on Redis: the shared checks of
tests/scenarios/job_control.py, each with an app on a fresh prefix of a real
redis-server, then what only the Redis store shows (its scripts, its keys)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom.app import App
from nuvom.config import Settings, load_settings
from nuvom.job import Flow, Job, JobStatus
from nuvom.redis import RedisJobQueue, RedisResultBackend

from .conftest import RedisServer

sys.path.insert(0, str(Path(__file__).parents[1]))
from scenarios import job_control


@pytest.fixture
def app(redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[App]:
    monkeypatch.setenv("NUVOM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("NUVOM_REDIS_PREFIX", prefix)
    app = App(Settings(queue_backend="redis", result_backend="redis", data_dir=tmp_path / "data"))
    yield app
    app.close()


@pytest.mark.parametrize("check", job_control.CHECKS, ids=job_control.check_id)
def test_job_control_on_the_redis_store(app: App, check) -> None:
    check(app)


def job(label: str, **fields) -> Job:
    return Job(func_name="record", args=[label], **fields)


def labels(jobs: list[Job]) -> list[str]:
    return [j.args[0] for j in jobs]


def finish(jobs: list[Job]) -> list[Job]:
    now = time.time()
    for j in jobs:
        j.status, j.result, j.started_at, j.finished_at = JobStatus.SUCCESS, j.args[0], now, now
    return jobs


def test_claims_take_the_first_queue_first_then_priority_then_arrival(queue: RedisJobQueue) -> None:
    queue.enqueue_many([job("d0"), job("d-high", priority=3), job("d1")])
    queue.enqueue_many([job("e0", queue="emails"), job("e-low", queue="emails", priority=-2)])
    queue.enqueue(job("e1", queue="emails"))
    queue.enqueue(job("other", queue="reports"))
    claimed = queue.claim_batch(4, 0, lambda: 0, queues=["emails", "default"])
    assert labels(claimed) == ["e0", "e1", "e-low", "d-high"]
    assert labels(queue.claim_batch(10, 0, lambda: 0, queues=["default"])) == ["d0", "d1"]
    assert labels(queue.claim(10)) == []  # `claim` serves default only: "reports" stays
    counts = queue.queue_counts()
    assert counts["reports"] == {"queued": 1, "retrying": 0, "running": 0}
    assert counts["emails"] == {"queued": 0, "retrying": 0, "running": 3}
    assert counts["default"]["running"] == 3
    assert queue.counts() == {"queued": 1, "retrying": 0, "running": 6} and queue.qsize() == 1


def test_a_delayed_job_is_not_claimed_before_its_time_whatever_its_priority(queue: RedisJobQueue) -> None:
    queue.enqueue(job("later", priority=9, not_before=time.time() + 0.5))
    queue.enqueue(job("now"))
    assert labels(queue.claim(10)) == ["now"]
    assert queue.claim(10) == [] and queue.qsize() == 1
    got = queue.pop_batch(10, timeout=5)
    assert labels(got) == ["later"] and got[0].not_before is not None and time.time() >= got[0].not_before


def test_a_retry_goes_behind_the_jobs_of_its_priority_and_counts_as_retrying(queue: RedisJobQueue) -> None:
    queue.enqueue_many([job("a"), job("b")])
    (first,) = queue.claim(1)
    queue.requeue([first])  # attempts 1: a retry
    assert queue.counts() == {"queued": 1, "retrying": 1, "running": 0}
    assert labels(queue.claim(10)) == ["b", "a"]
    assert queue.counts() == {"queued": 0, "retrying": 0, "running": 2}


def test_expired_leases_are_recovered_by_the_claims_of_their_own_queue(queue: RedisJobQueue) -> None:
    queue.enqueue(job("mail", queue="emails", priority=1))
    (claimed,) = queue.claim_batch(1, 0, lambda: 1, queues=["emails"])  # start-marked: counts as a run
    queue.client.zadd(queue.key("leases", "emails"), {claimed.id: 0})  # its worker died long ago
    assert queue.claim_batch(10, 0, lambda: 0, queues=["default"]) == []
    assert queue.queue_counts()["emails"]["running"] == 1  # a worker of "default" leaves it alone
    (again,) = queue.claim_batch(10, 0, lambda: 0, queues=["reports", "emails"])
    assert again.id == claimed.id and again.attempts == 2  # the lost run counted
    assert queue.client.zscore(queue.key("leases", "emails"), again.id) > time.time()


def test_a_job_taken_back_from_a_dead_worker_counts_as_retrying(queue: RedisJobQueue) -> None:
    queue.enqueue(job("mail", queue="emails"))
    (claimed,) = queue.claim_batch(1, 0, lambda: 1, queues=["emails"])
    queue.client.zadd(queue.key("leases", "emails"), {claimed.id: 0})
    assert queue.claim_batch(0, 0, lambda: 0, queues=["emails"]) == []  # recovers it, claims nothing
    assert queue.queue_counts()["emails"] == {"queued": 0, "retrying": 1, "running": 0}


def test_arrival_numbers_are_renumbered_before_they_lose_precision(queue: RedisJobQueue) -> None:
    queue.enqueue_many([job("p0-a"), job("p5", priority=5), job("pm1", priority=-1)])
    queue.client.set(queue.key("order"), 2**33 - 2)  # the next arrivals pass the limit
    queue.enqueue_many([job("p0-b"), job("p5-b", priority=5)])
    assert int(queue.client.get(queue.key("order"))) < 10
    assert labels(queue.claim(10)) == ["p5", "p5-b", "p0-a", "p0-b", "pm1"]


def test_jobs_queued_by_the_release_before_named_queues_are_claimed(queue: RedisJobQueue) -> None:
    # That release kept every waiting job in <prefix>:q:due, scored by due time.
    old = job("old")
    queue.client.hset(queue.key("payload"), old.id, old.to_bytes())
    queue.client.hset(queue.key("attempts"), old.id, 0)
    queue.client.zadd(queue.key("due"), {old.id: 0})
    assert labels(queue.claim(10)) == ["old"]


def test_a_unique_key_is_taken_by_one_of_many_racing_producers(queue: RedisJobQueue) -> None:
    views = [RedisJobQueue(load_settings(), redis=queue.redis_settings) for _ in range(8)]
    candidates = [job(f"c{i}", unique_key="the-key") for i in range(8)]
    holders: list[str] = []
    barrier = threading.Barrier(len(views))

    def race(view: RedisJobQueue, candidate: Job) -> None:
        barrier.wait()
        holders.append(view.enqueue_unique(candidate))

    threads = [threading.Thread(target=race, args=pair) for pair in zip(views, candidates, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for view in views:
        view.close()
    assert len(set(holders)) == 1 and queue.qsize() == 1
    assert holders[0] in {c.id for c in candidates}


def test_a_unique_key_is_held_through_retries_and_freed_by_cancel_and_ack(queue: RedisJobQueue) -> None:
    first = job("u", unique_key="k")
    assert queue.enqueue_unique(first) == first.id
    (claimed,) = queue.claim(1)
    queue.requeue([claimed])  # a retry keeps the key
    assert queue.enqueue_unique(job("u2", unique_key="k")) == first.id
    assert queue.cancel(first.id) is not None
    second = job("u3", unique_key="k")
    assert queue.enqueue_unique(second) == second.id
    queue.claim(1)
    queue.ack([second.id])
    assert queue.client.hlen(queue.key("unique")) == 0


def test_a_waiting_job_is_released_by_the_script_that_completes_its_last_parent(
    queue: RedisJobQueue, results: RedisResultBackend
) -> None:
    a, b = job("a"), job("b")
    queue.enqueue_many([a, b])
    child = job("child", status=JobStatus.WAITING, flow=Flow(parents=[a.id, b.id, a.id]))
    queue.enqueue(child)
    assert queue.get(child.id).status is JobStatus.WAITING  # type: ignore[union-attr]
    assert queue.dependents(a.id) == [child.id] and queue.counts()["queued"] == 3
    claimed = queue.claim(10)
    assert labels(claimed) == ["a", "b"]  # the child is in no ready set
    queue.settle(finish(claimed[:1]), [], [], results)
    assert queue.claim(10) == [] and queue.dependents(a.id) == []
    queue.settle(finish(claimed[1:]), [], [], results)  # COMPLETE stores it and releases the child
    assert queue.get(child.id).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert labels(queue.claim(10)) == ["child"]


def test_a_child_of_parents_gone_from_the_queue_is_ready_at_once(queue: RedisJobQueue) -> None:
    queue.enqueue(job("orphan", status=JobStatus.WAITING, flow=Flow(parents=["finished-long-ago"])))
    assert labels(queue.claim(10)) == ["orphan"]


def test_cancelling_a_waiting_parent_releases_its_children_and_a_waiting_child_leaves_its_parents(
    queue: RedisJobQueue,
) -> None:
    parent = job("parent", not_before=time.time() + 60)
    queue.enqueue(parent)
    kids = [job(f"kid{i}", status=JobStatus.WAITING, flow=Flow(parents=[parent.id])) for i in range(2)]
    queue.enqueue_many(kids)
    assert queue.cancel(kids[1].id) is not None
    assert queue.dependents(parent.id) == [kids[0].id]
    cancelled = queue.cancel(parent.id)
    assert cancelled is not None and cancelled.id == parent.id
    assert labels(queue.claim(10)) == ["kid0"]
    assert queue.cancel(kids[0].id) is None  # claimed: not waiting any more


def test_cancel_requests_are_kept_for_claimed_jobs_until_they_leave(queue: RedisJobQueue) -> None:
    waiting, running = job("w"), job("r")
    queue.enqueue(running)
    queue.claim(1)
    queue.enqueue(waiting)
    assert not queue.request_cancel(waiting.id) and not queue.request_cancel("unknown")
    assert queue.request_cancel(running.id)
    assert queue.cancel_requested([running.id, waiting.id]) == {running.id}
    queue.ack([running.id])
    assert queue.cancel_requested([running.id]) == set()


def test_rate_limits_are_shared_across_queue_objects(queue: RedisJobQueue) -> None:
    other = RedisJobQueue(load_settings(), redis=queue.redis_settings)
    try:
        taken = [q.acquire_rate("task:x", 3, 10.0) for q in (queue, other, queue)]
        assert taken == [0.0, 0.0, 0.0]
        wait = other.acquire_rate("task:x", 3, 10.0)
        assert 3.0 < wait <= 10 / 3 + 0.01  # the next start frees one interval (10/3 s) after the first
        assert queue.acquire_rate("task:y", 3, 10.0) == 0.0  # keys are counted apart
    finally:
        other.close()
