"""The engine on the in-process store: threads fed from one line, the event
loop started by the first async job, a stop that takes nothing more, outcomes
kept while storing fails; and the cheaper per-job steps (attempts built
without validation, scalar payloads not encoded for the size check, one
private dict shared by a task's jobs)."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from nuvom._engine.wake import Wake
from nuvom.app import App
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.config import Settings
from nuvom.errors import BackendError, JobFailed, SerializationError
from nuvom.job import Attempt, Job, JobStatus
from nuvom.task import task
from nuvom.testing import isolated_app
from nuvom.worker import Worker

sys.path.insert(0, str(Path(__file__).parent))
import _exec_tasks as t
from _waiting import wait_until

GATES: dict[str, threading.Event] = {}


@task
def echo(x):
    return x


@task
def thread_name(_):
    return threading.current_thread().name


@task
def big_int():
    return 2**70  # msgpack takes ints of 64 bits at most


@task
def gated(key):
    GATES[key].wait(30)
    return key


def job(**fields) -> Job:
    return Job(func_name="echo", **fields)


# -- the worker's side ------------------------------------------------------------
def test_wake_is_an_auto_reset_event() -> None:
    wake = Wake()
    assert not wake.wait(0.01)
    wake.set()
    wake.set()  # set twice: still one wake-up
    assert wake.wait(0)
    assert not wake.wait(0.01)
    threading.Timer(0.05, wake.set).start()
    assert wake.wait(5)


def test_idle_threads_are_handed_jobs_and_every_result_comes_back() -> None:
    with isolated_app() as app, Worker(app=app, max_workers=4):
        jobs = [echo.delay(i) for i in range(500)] + echo.map(range(500, 1000))
        assert [j.get(timeout=20) for j in jobs] == list(range(1000))
        for j in jobs:
            assert j.status is JobStatus.SUCCESS and j.attempts == 1 and len(j.history) == 1
            assert j.history[0].outcome == "success" and j.history[0].executor == "thread"
        assert app.queue.counts() == {"queued": 0, "retrying": 0, "running": 0}


def test_one_busy_thread_leaves_jobs_queued_for_the_idle_ones() -> None:
    key = uuid.uuid4().hex
    GATES[key] = threading.Event()
    with isolated_app() as app, Worker(app=app, max_workers=2):
        blocker = gated.delay(key)
        wait_until(lambda: app.queue.counts()["running"] == 1)
        names = {j.get(timeout=10) for j in thread_name.map(range(30))}
        assert len(names) == 1  # all on the idle thread
        GATES[key].set()
        assert blocker.get(timeout=10) == key


def test_a_delayed_job_runs_when_due_with_every_thread_idle() -> None:
    with isolated_app() as app, Worker(app=app, max_workers=2):
        assert echo.delay(0).get(timeout=5) == 0  # threads idle, the claim loop waiting in the queue
        due = time.time() + 0.3
        later = echo.make_job([1], {}, app)
        later.not_before = due
        app.queue.enqueue(later)
        assert later.get(timeout=10) == 1
        assert later.history[0].started_at >= due


def test_an_async_job_starts_the_event_loop_and_both_kinds_still_run() -> None:
    with isolated_app() as app, Worker(app=app, max_workers=2) as worker:
        assert [j.get(timeout=5) for j in echo.map(range(10))] == list(range(10))
        assert worker.executor("async") is None
        async_job = t.ex_nap.delay(0)
        assert async_job.get(timeout=10) == "nuvom-async-loop"
        assert async_job.history[0].executor == "async"
        assert worker.executor("async") is not None
        mixed = [echo.delay(i) for i in range(20)] + [t.ex_nap.delay(0) for _ in range(5)]
        assert [j.get(timeout=10) for j in mixed] == list(range(20)) + ["nuvom-async-loop"] * 5


def test_stop_returns_at_once_and_takes_no_job_queued_after_it() -> None:
    with isolated_app() as app:
        worker = Worker(app=app, max_workers=4).start()
        assert echo.delay(1).get(timeout=5) == 1
        started = time.monotonic()
        worker.stop(grace=10)
        assert time.monotonic() - started < 2.0  # idle threads woke; none waited out the grace
        late = echo.delay(2)
        threading.Event().wait(0.1)  # a thread that still took jobs would have claimed it by now
        assert app.queue.get(late.id) is late and late.status is JobStatus.PENDING and late.attempts == 0
        assert app.queue.qsize() == 1


class FlakyResults(MemoryResultBackend):
    """Fails to store until ``fixed`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fixed = threading.Event()
        self.failures = 0

    def store(self, jobs):
        if not self.fixed.is_set():
            self.failures += 1
            raise BackendError("the store is down")
        super().store(jobs)


def test_while_storing_fails_the_worker_stops_claiming_beyond_capacity_then_stores_everything() -> None:
    settings = Settings(queue_backend="memory", result_backend="memory", batch_size=2)
    queue, results = MemoryJobQueue(), FlakyResults()
    app = App(settings, queue=queue, results=results)
    runs: list[int] = []
    counted = app.task(lambda i: runs.append(i) or i, name="counted")
    with Worker(app=app, max_workers=2) as worker:
        jobs = counted.map(range(20))
        wait_until(lambda: results.failures > 0 and worker._writer is not None and len(worker._writer.unstored) >= 1)
        # Claims stop at the capacity (threads + batch) while nothing can be stored.
        wait_until(lambda: queue.counts()["running"] == worker.capacity)
        threading.Event().wait(0.3)
        assert queue.counts()["running"] == worker.capacity and len(runs) <= worker.capacity
        results.fixed.set()
        assert [j.get(timeout=20) for j in jobs] == list(range(20))
    assert sorted(runs) == list(range(20))  # each ran once
    app.close()


class ClaimsSeen(MemoryJobQueue):
    """Records which thread made each claim that took jobs, and how many."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[tuple[str, int]] = []

    def claim_batch(self, limit, timeout, idle, queues=("default",)):  # type: ignore[no-untyped-def]
        jobs = super().claim_batch(limit, timeout, idle, queues)
        if jobs:
            self.claims.append((threading.current_thread().name, len(jobs)))
        return jobs


def test_while_the_claim_loop_waits_for_room_the_writer_claims_after_the_group_that_freed_it() -> None:
    settings = Settings(queue_backend="memory", result_backend="memory", batch_size=8)
    queue = ClaimsSeen()
    app = App(settings, queue=queue, results=MemoryResultBackend())
    runs: list[int] = []
    counted = app.task(lambda i: runs.append(i) or i, name="counted")
    jobs = counted.map(range(400))  # a backlog: the worker is full from its first claim
    with Worker(app=app, max_workers=2) as worker:
        assert [j.get(timeout=30) for j in jobs] == list(range(400))
        capacity = worker.capacity
    app.close()
    assert sorted(runs) == list(range(400))  # each ran once
    by = {name for name, _ in queue.claims}
    assert "nuvom-outcomes" in by, queue.claims  # the writer's thread, not only the loop's
    assert sum(n for _, n in queue.claims) == 400 and max(n for _, n in queue.claims) <= capacity


# -- the cheaper per-job steps -----------------------------------------------------
def test_the_attempt_a_start_builds_is_the_validated_one() -> None:
    queued = job()
    queued.mark_claimed()
    attempt = queued.mark_started("w-1", 12.5, "thread")
    assert attempt == Attempt(number=1, started_at=12.5, executor="thread", worker_id="w-1")
    assert attempt.model_dump() == Attempt.model_validate(attempt.model_dump()).model_dump()
    queued.mark_succeeded(attempt, 3, 13.0)
    assert Job.from_bytes(queued.to_bytes()).history == [
        Attempt(number=1, started_at=12.5, finished_at=13.0, executor="thread", worker_id="w-1")
    ]
    # Values of another shape still go through validation (an int time becomes a float).
    other = job()
    other.mark_claimed()
    assert other.mark_started(None, 7).started_at == 7.0


def test_jobs_of_one_task_share_no_state_through_their_app() -> None:
    with isolated_app() as app:
        other = App(Settings(queue_backend="memory", result_backend="memory"))
        a, b = echo.make_job([1], {}, app), echo.make_job([2], {}, app)
        a.bind(other)
        assert a._app is other and b._app is app
        a.tags.append("x")
        assert b.tags == []
        other.close()


def test_scalar_payloads_skip_the_encoding_but_not_the_checks() -> None:
    with isolated_app() as app, Worker(app=app, max_workers=1):
        assert echo.delay(2**64 - 1).get(timeout=5) == 2**64 - 1
        assert echo.delay(-(2**63)).get(timeout=5) == -(2**63)
        with pytest.raises(SerializationError, match="positional argument 0"):
            echo.delay(2**64)
        with pytest.raises(JobFailed, match="cannot be serialized"):
            big_int.delay().get(timeout=5)
        assert echo.delay(None).get(timeout=5) is None and echo.delay(True).get(timeout=5) is True
    with isolated_app(max_payload_bytes=1024):
        with pytest.raises(SerializationError, match="over the limit"):
            echo.delay("x" * 2000)
