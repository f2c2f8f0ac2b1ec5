"""The threaded engine, with real threads and the memory backends."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from nuvom.backends import set_backends
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.errors import JobFailed
from nuvom.hooks import register_hooks
from nuvom.job import JobStatus
from nuvom.task import task
from nuvom.worker import Worker

sys.path.insert(0, str(Path(__file__).parent))
from _waiting import wait_until

# Events shared between tests and tasks, keyed by test so parallel tests never share one.
GATES: dict[str, threading.Event] = {}
RUNS: dict[str, list] = {}


@task
def add(x, y):
    return x + y


@task
def boom(message):
    raise KeyError(message)


@task(retries=2, retry_delay_secs=0.3)
def flaky(key, fail_times):
    RUNS.setdefault(key, []).append((threading.current_thread().name, time.monotonic()))
    if len(RUNS[key]) <= fail_times:
        raise RuntimeError(f"attempt {len(RUNS[key])} fails")
    return len(RUNS[key])


@task
def record(key, value):
    RUNS.setdefault(key, []).append((value, threading.current_thread().name))
    return value


@task
def block(key):
    RUNS.setdefault(key, []).append(threading.current_thread().name)
    GATES[key].wait(30)
    return "released"


@task(timeout_secs=0.3)
def hang_fail(key):
    GATES[key].wait(30)


@task(timeout_secs=0.3, timeout_policy="retry", retries=1)
def hang_retry(key):
    RUNS.setdefault(key, []).append(1)
    if len(RUNS[key]) == 1:
        GATES[key].wait(30)
    return "second try"


@task(timeout_secs=0.2, timeout_policy="ignore")
def slow_ignored(key):
    GATES[key].wait(30)
    return "finished late"


@task
def returns_unencodable():
    return object()


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("no text")


@task
def raises_bad_str():
    raise BadStr()


@pytest.fixture
def key(request):
    k = request.node.nodeid
    GATES[k] = threading.Event()
    yield k
    GATES[k].set()


def test_job_get_returns_the_result(mem):
    with Worker(max_workers=2):
        assert add.delay(2, 3).get(timeout=10) == 5


def test_many_jobs_from_map_all_complete(mem):
    _, results = mem
    with Worker(max_workers=4):
        jobs = add.map([(i, i) for i in range(2000)])
        assert [j.get(timeout=20) for j in jobs] == [2 * i for i in range(2000)]
    assert results.count() == 2000


def test_failed_job_raises_with_remote_type_message_and_traceback(mem):
    with Worker(max_workers=1):
        job = boom.delay("missing-key")
        with pytest.raises(JobFailed) as info:
            job.get(timeout=10)
    err = info.value
    assert err.exc_type == "KeyError" and "missing-key" in err.message
    assert "raise KeyError(message)" in err.remote_traceback
    assert job.status is JobStatus.FAILED and job.attempts == 1


def test_get_raises_timeout_error_when_no_outcome_in_time(mem):
    job = add.delay(1, 1)  # no worker running
    with pytest.raises(TimeoutError):
        job.get(timeout=0.05)


def test_retries_record_every_attempt_and_wait_the_delay(mem, key):
    with Worker(max_workers=2):
        job = flaky.delay(key, 2)
        assert job.get(timeout=10) == 3
    assert job.attempts == 3
    assert [a.outcome for a in job.history] == ["error", "error", "success"]
    assert all("fails" in a.error.message for a in job.history[:2])
    starts = [t for _, t in RUNS[key]]
    assert starts[1] - starts[0] >= 0.29 and starts[2] - starts[1] >= 0.29


def test_job_fails_once_retries_are_used_up(mem, key):
    with Worker(max_workers=1):
        job = flaky.delay(key, 5)
        with pytest.raises(JobFailed, match="attempt 3 fails"):
            job.get(timeout=10)
    assert job.attempts == 3 and len(RUNS[key]) == 3


def test_a_waiting_retry_does_not_hold_a_worker_thread(mem, key):
    # One thread: while the retry of `flaky` waits out its delay, other jobs run.
    with Worker(max_workers=1):
        first = flaky.delay(key, 1)
        wait_until(lambda: len(RUNS.get(key, [])) == 1)
        others = record.map([(key + "-others", i) for i in range(5)])
        assert [j.get(timeout=5) for j in others] == list(range(5))
        # The others finished before the retry was even due.
        assert len(RUNS[key]) == 1
        assert first.get(timeout=5) == 2


def test_timeout_fails_the_job_and_the_pool_keeps_its_size(mem, key):
    with Worker(max_workers=1) as worker:
        job = hang_fail.delay(key)
        with pytest.raises(JobFailed, match="timeout") as info:
            job.get(timeout=10)
        assert info.value.exc_type == "TimeoutError"
        assert job.history[-1].outcome == "timeout"
        # The stuck thread is abandoned and replaced: the single-thread pool still runs jobs.
        assert add.delay(1, 1).get(timeout=5) == 2
        assert worker.metrics()["worker_count"] == 1


def test_timeout_with_retry_policy_runs_the_job_again(mem, key):
    with Worker(max_workers=1):
        job = hang_retry.delay(key)
        assert job.get(timeout=10) == "second try"
    assert [a.outcome for a in job.history] == ["timeout", "success"]


def test_timeout_with_ignore_policy_lets_the_job_finish(mem, key):
    with Worker(max_workers=1):
        job = slow_ignored.delay(key)
        with pytest.raises(TimeoutError):
            job.get(timeout=0.6)  # well past the 0.2 s timeout: still running
        GATES[key].set()
        assert job.get(timeout=5) == "finished late"


def test_hooks_run_in_order_global_plugin_task(mem, key):
    calls = []
    register_hooks(
        before_job=lambda job: calls.append("global-before"),
        after_job=lambda job, result: calls.append(f"global-after:{result}"),
        on_error=lambda job, exc: calls.append(f"global-error:{type(exc).__name__}"),
    )

    @task(
        name="hooked_task",
        before_job=lambda job: calls.append("task-before"),
        after_job=lambda job, result: calls.append("task-after"),
        on_error=lambda job, exc: calls.append("task-error"),
    )
    def hooked(fail):
        calls.append("run")
        if fail:
            raise ValueError("x")
        return 7

    with Worker(max_workers=1):
        hooked.delay(False).get(timeout=5)
        with pytest.raises(JobFailed):
            hooked.delay(True).get(timeout=5)
    assert calls == [
        "global-before",
        "task-before",
        "run",
        "global-after:7",
        "task-after",
        "global-before",
        "task-before",
        "run",
        "global-error:ValueError",
        "task-error",
    ]


def test_a_hook_that_raises_does_not_fail_the_job(mem):
    register_hooks(before_job=lambda job: 1 / 0)
    with Worker(max_workers=1):
        assert add.delay(1, 2).get(timeout=5) == 3


def test_jobs_go_to_idle_threads_not_behind_a_busy_one(mem, key):
    # Thread A is stuck on a long job; every later job must go to thread B.
    with Worker(max_workers=2, batch_size=1):
        blocker = block.delay(key)
        wait_until(lambda: len(RUNS.get(key, [])) == 1)
        busy_thread = RUNS[key][0]
        jobs = record.map([(key + "-r", i) for i in range(20)])
        assert [j.get(timeout=5) for j in jobs] == list(range(20))
        threads = {name for _, name in RUNS[key + "-r"]}
        assert busy_thread not in threads and len(threads) == 1
        GATES[key].set()
        assert blocker.get(timeout=5) == "released"


def test_graceful_stop_lets_running_jobs_finish_and_hands_back_the_rest(key):
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    set_backends(queue, results)
    worker = Worker(max_workers=1, batch_size=5).start()
    running = block.delay(key)
    wait_until(lambda: len(RUNS.get(key, [])) == 1)
    waiting = record.map([(key + "-w", i) for i in range(3)])
    wait_until(lambda: queue.qsize() == 0)  # claimed into the worker's line behind the stuck thread
    stopper = threading.Thread(target=worker.stop, kwargs={"grace": 10})
    stopper.start()
    threading.Timer(0.2, GATES[key].set).start()
    stopper.join(15)
    assert not stopper.is_alive()
    assert results.get_full(running.id).status is JobStatus.SUCCESS
    # Jobs claimed but never started are back in the queue, their claim undone.
    assert queue.qsize() == 3
    for job in waiting:
        back = queue.get(job.id)
        assert back.status is JobStatus.PENDING and back.attempts == 0
    assert RUNS.get(key + "-w") is None


def test_job_still_running_after_grace_goes_back_to_the_queue(mem, key):
    queue, results = mem
    worker = Worker(max_workers=1).start()
    job = block.delay(key)
    wait_until(lambda: len(RUNS.get(key, [])) == 1)
    worker.stop(grace=0.1)
    assert results.get_full(job.id) is None
    assert queue.get(job.id).attempts == 1 and queue.qsize() == 1


def test_unknown_task_fails_the_job_clearly_and_the_worker_goes_on(mem):
    from nuvom.backends import get_queue_backend
    from nuvom.job import Job

    ghost = Job(func_name="no_such_task_anywhere")
    get_queue_backend().enqueue(ghost)
    with Worker(max_workers=1):
        with pytest.raises(JobFailed, match="no task named 'no_such_task_anywhere'"):
            ghost.get(timeout=5)
        assert add.delay(2, 2).get(timeout=5) == 4


def test_unencodable_result_fails_the_job_not_the_worker(mem):
    with Worker(max_workers=1):
        with pytest.raises(JobFailed, match="cannot be serialized"):
            returns_unencodable.delay().get(timeout=5)
        assert add.delay(1, 1).get(timeout=5) == 2


def test_exception_whose_text_cannot_be_rendered_still_fails_cleanly(mem):
    with Worker(max_workers=1):
        with pytest.raises(JobFailed) as info:
            raises_bad_str.delay().get(timeout=5)
        assert info.value.exc_type == "BadStr" and "could not be rendered" in info.value.message
        assert add.delay(1, 1).get(timeout=5) == 2


def test_store_result_false_records_the_outcome_without_the_value(mem):
    @task(name="no_store", store_result=False)
    def no_store():
        return "secret"

    _, results = mem
    with Worker(max_workers=1):
        job = no_store.delay()
        assert job.get(timeout=5) is None
    assert results.get_full(job.id).status is JobStatus.SUCCESS


def test_idle_worker_does_not_burn_cpu_and_picks_up_work_fast(mem):
    with Worker(max_workers=4):
        add.delay(0, 0).get(timeout=5)
        before = time.process_time()
        threading.Event().wait(1.0)  # a measurement window, not synchronisation
        idle_cpu = time.process_time() - before
        start = time.perf_counter()
        add.delay(1, 1).get(timeout=5)
        latency = time.perf_counter() - start
    assert idle_cpu < 0.1, f"idle worker used {idle_cpu:.3f} s CPU in 1 s"
    assert latency < 0.2, f"pickup took {latency * 1000:.1f} ms"


def test_a_waiter_that_times_out_leaves_nothing_behind(mem):
    _, results = mem
    job = add.delay(1, 1)
    with pytest.raises(TimeoutError):
        job.get(timeout=0.01)
    assert results._waiting == {}
    with Worker(max_workers=1):
        assert job.get(timeout=5) == 2
