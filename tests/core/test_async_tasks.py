"""``async def`` tasks: the worker's event loop, cancellation at the deadline,
retries, hooks, and the async producer API (adelay / amap / aget)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from nuvom.errors import JobFailed
from nuvom.hooks import register_hooks
from nuvom.job import JobStatus
from nuvom.task import task
from nuvom.testing import isolated_app
from nuvom.worker import Worker

# Tests import in importlib mode; pool children import the tasks by module name.
sys.path.insert(0, str(Path(__file__).parent))
import _exec_tasks as t


def test_calling_an_async_task_returns_its_coroutine() -> None:
    coro = t.ex_nap(0)
    assert asyncio.iscoroutine(coro)
    assert asyncio.run(coro) == threading.current_thread().name
    assert t.ex_nap.is_async and t.ex_nap.executor is None


def test_executor_async_on_a_plain_function_is_refused() -> None:
    with pytest.raises(ValueError, match="executor='async' needs an `async def` function"):

        @task(executor="async")
        def not_async() -> None: ...


def test_two_thousand_sleeping_jobs_finish_in_under_3s_on_one_loop_thread() -> None:
    with isolated_app(async_concurrency=2000, batch_size=500) as app, Worker(app=app, max_workers=2) as worker:
        threads_before = threading.active_count()
        started = time.monotonic()
        jobs = t.ex_nap.map([0.5] * 2000)
        names = {job.get(timeout=20) for job in jobs}
        took = time.monotonic() - started
        assert took < 3.0, f"2,000 async jobs took {took:.2f} s"
        # One loop thread ran every coroutine; the executor added two threads in all
        # (the loop and the one that stores outcomes), not one per job.
        assert names == {"nuvom-async-loop"}
        assert threading.active_count() <= threads_before + 2
        assert {a.executor for job in jobs for a in job.history} == {"async"}
        assert worker.metrics()["inflight_jobs"] == 0


def test_concurrency_limit_holds() -> None:
    key = uuid.uuid4().hex
    running = 0
    peak = 0

    @task(name=f"count_{key}")
    async def counted() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    with isolated_app(async_concurrency=7) as app, Worker(app=app) as worker:
        for job in counted.map([()] * 60):
            job.get(timeout=20)
        assert worker.metrics()["inflight_jobs"] == 0
    assert peak == 7


def test_timeout_cancels_the_coroutine_then_the_policy_applies() -> None:
    key = uuid.uuid4().hex
    with isolated_app() as app, Worker(app=app):
        job = t.ex_stuck_async.delay(key)
        started = time.monotonic()
        with pytest.raises(JobFailed) as info:
            job.get(timeout=10)
        assert time.monotonic() - started < 2.0
    assert info.value.exc_type == "TimeoutError"
    assert t.SEEN[key] == ["cancelled"]  # a real CancelledError inside the task
    assert [(a.outcome, a.executor) for a in job.history] == [("timeout", "async")]


def test_timeout_policy_retry_runs_the_coroutine_again() -> None:
    key = uuid.uuid4().hex

    @task(name=f"retry_{key}", timeout_secs=0.2, timeout_policy="retry", retries=1)
    async def slow() -> None:
        SEEN = t.SEEN.setdefault(key, [])
        SEEN.append("start")
        await asyncio.sleep(10)

    with isolated_app() as app, Worker(app=app):
        job = slow.delay()
        with pytest.raises(JobFailed, match="TimeoutError"):
            job.get(timeout=10)
    assert t.SEEN[key] == ["start", "start"]
    assert [a.outcome for a in job.history] == ["timeout", "timeout"]


def test_retries_and_hooks_of_an_async_task() -> None:
    key = uuid.uuid4().hex
    calls: list[tuple[str, str]] = []
    register_hooks(
        before_job=lambda job: calls.append(("before", job.func_name)),
        after_job=lambda job, result: calls.append(("after", repr(result))),
        on_error=lambda job, exc: calls.append(("error", type(exc).__name__)),
    )
    with isolated_app() as app:
        app.hooks.register(
            before_job=lambda job: calls.append(("before", job.func_name)),
            after_job=lambda job, result: calls.append(("after", repr(result))),
            on_error=lambda job, exc: calls.append(("error", type(exc).__name__)),
        )
        with Worker(app=app):
            job = t.ex_flaky_async.delay(key, 2)
            assert job.get(timeout=10) == 3
    assert [a.outcome for a in job.history] == ["error", "error", "success"]
    assert calls == [
        ("before", "ex_flaky_async"),
        ("error", "RuntimeError"),
        ("before", "ex_flaky_async"),
        ("error", "RuntimeError"),
        ("before", "ex_flaky_async"),
        ("after", "3"),
    ]
    assert set(t.SEEN[key]) == {"nuvom-async-loop"}


def test_an_async_task_may_ask_for_a_thread() -> None:
    with isolated_app() as app, Worker(app=app, max_workers=2):
        job = t.ex_async_in_thread.delay()
        assert job.get(timeout=10).startswith("nuvom-worker-")
    assert job.history[0].executor == "thread"


def test_async_producer_api_does_not_block_the_loop() -> None:
    async def main() -> tuple[list[int], float, int]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        job = await t.ex_nap.adelay(0.5)
        jobs = await t.ex_plain.amap([1, 2, 3])
        await job.aget(timeout=10)
        results = [await j.aget(timeout=10) for j in jobs]
        with pytest.raises(TimeoutError, match="has no outcome"):
            await _never(0.05)
        done.set()
        await tick
        return results, max(gaps), len(gaps)

    async def _never(timeout: float) -> None:
        job = t.ex_plain.make_job([1], {})
        await job.aget(timeout=timeout)

    with isolated_app() as app, Worker(app=app):
        results, worst_gap, ticks = asyncio.run(main())
    assert results == [2, 3, 4]
    assert ticks > 20
    assert worst_gap < 0.2, f"the loop stalled for {worst_gap:.3f} s"


@pytest.mark.parametrize("backend", ["file"])
def test_aget_on_a_backend_without_notifications(backend: str) -> None:
    with isolated_app(queue_backend=backend, result_backend=backend) as app, Worker(app=app):

        async def main() -> int:
            job = await t.ex_plain.adelay(41)
            result: int = await job.aget(timeout=10)
            return result

        assert asyncio.run(main()) == 42


def test_stop_gives_async_jobs_the_grace_period_then_hands_them_back() -> None:
    key = uuid.uuid4().hex
    with isolated_app() as app:
        worker = Worker(app=app).start()
        short = t.ex_nap.delay(0.3)
        long = t.ex_stuck_async.make_job([key], {}, app)
        long.timeout_secs = 60
        app.queue.enqueue(long)
        deadline = time.monotonic() + 10
        while worker.metrics()["inflight_jobs"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.stop(grace=1.0)
        assert short.get(timeout=1) == "nuvom-async-loop"  # finished within the grace period
        record = app.queue.get(long.id)
        assert record is not None and record.status is JobStatus.RETRYING  # back in the queue
        assert t.SEEN[key] == ["cancelled"]
