"""The process pool: jobs in child processes, hard timeouts, crashes, recycling,
no orphan process and no leaked descriptor; real children throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from nuvom.errors import JobFailed
from nuvom.job import JobStatus
from nuvom.testing import isolated_app
from nuvom.worker import Worker

# Tests import in importlib mode; pool children import the tasks by module name.
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _exec_tasks as t  # noqa: E402

linux_only = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts processes and fds through /proc")
#: How many hard timeouts in a row the leak test runs (100 in the issue's
#: measurement, `NUVOM_TEST_POOL_KILLS=100`; scaled down for CI's two cores).
KILLS = int(os.environ.get("NUVOM_TEST_POOL_KILLS", "15"))


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def test_a_process_task_runs_in_a_child_and_hooks_run_in_the_worker() -> None:
    calls: list[tuple[str, int]] = []
    with isolated_app() as app:
        app.hooks.register(
            before_job=lambda job: calls.append(("before", os.getpid())),
            after_job=lambda job, result: calls.append(("after", os.getpid())),
        )
        with Worker(app=app, processes=1):
            job = t.ex_whoami.delay(7)
            pid, x = job.get(timeout=60)
    assert x == 7 and pid != os.getpid()
    assert calls == [("before", os.getpid()), ("after", os.getpid())]
    assert job.history[0].executor == "process"


def test_a_spinning_job_is_killed_at_its_timeout_and_the_next_job_runs() -> None:
    with isolated_app() as app, Worker(app=app, processes=1):
        first_pid, _ = t.ex_whoami.delay(0).get(timeout=60)
        job = t.ex_spin.delay()
        with pytest.raises(JobFailed) as info:
            job.get(timeout=60)
        after_pid, _ = t.ex_whoami.delay(1).get(timeout=60)
    assert info.value.exc_type == "TimeoutError" and "its process was killed" in info.value.message
    (attempt,) = job.history
    assert attempt.outcome == "timeout" and attempt.executor == "process"
    assert attempt.finished_at is not None
    # Killed within ~1 s of its 1 s deadline.
    assert 1.0 <= attempt.finished_at - attempt.started_at < 2.0
    assert job.status is JobStatus.FAILED
    assert after_pid != first_pid  # the killed child was replaced


@linux_only
def test_many_timeouts_in_a_row_leave_no_orphan_and_no_leaked_fd() -> None:
    me = os.getpid()
    with isolated_app() as app:
        # Warm up once: first use of the pool opens what stays open for the process (logging, ...).
        with Worker(app=app, processes=2):
            t.ex_whoami.delay(0).get(timeout=60)
        fds_before = len(os.listdir("/proc/self/fd"))
        children_before = children_of(me)
        with Worker(app=app, processes=2) as worker:
            jobs = [t.ex_spin_short.delay() for _ in range(KILLS)]
            seen: set[int] = set()
            for job in jobs:
                with pytest.raises(JobFailed, match="TimeoutError"):
                    job.get(timeout=120)
                seen.update(children_of(me) - children_before)
            assert t.ex_whoami.delay(1).get(timeout=60)[1] == 1
            pool = worker.executor("process")
            assert pool.children_started >= KILLS + 2
            # Never more children than the pool's size at a time.
            assert len(children_of(me) - children_before) <= 2
        assert all(job.history[0].outcome == "timeout" for job in jobs)
        assert children_of(me) == children_before
        assert not [pid for pid in seen if alive(pid)]
        assert len(os.listdir("/proc/self/fd")) == fds_before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ((t.ex_exit_with, 3), "exited with exit code 3"),
        pytest.param(
            (t.ex_segfault,),
            "died with signal 11 (SIGSEGV)",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal"),
        ),
    ],
)
def test_a_crashing_child_fails_only_its_job(call: tuple, message: str) -> None:
    fn, *args = call
    with isolated_app() as app, Worker(app=app, processes=1):
        job = fn.delay(*args)
        with pytest.raises(JobFailed) as info:
            job.get(timeout=60)
        assert t.ex_whoami.delay(5).get(timeout=60)[1] == 5  # the worker goes on
    assert info.value.exc_type == "ChildProcessDied"
    assert "the process running the job" in info.value.message and message in info.value.message
    assert job.history[0].outcome == "error"


def test_an_exception_in_the_child_keeps_its_type_and_traceback() -> None:
    counter = Path.cwd() / f"count-{uuid.uuid4().hex}"
    errors: list[str] = []
    with isolated_app() as app:
        app.hooks.register(on_error=lambda job, exc: errors.append(f"{type(exc).__name__}: {exc}"))
        with Worker(app=app, processes=1):
            job = t.ex_flaky_process.delay(str(counter), 5)
            with pytest.raises(JobFailed) as info:
                job.get(timeout=60)
    assert info.value.exc_type == "RuntimeError" and info.value.message == "attempt 3 fails"
    assert 'raise RuntimeError(f"attempt {n} fails")' in (info.value.remote_traceback or "")
    assert errors == ["RuntimeError: attempt 1 fails", "RuntimeError: attempt 2 fails", "RuntimeError: attempt 3 fails"]


def test_retries_in_the_process_pool() -> None:
    counter = Path.cwd() / f"count-{uuid.uuid4().hex}"
    with isolated_app() as app, Worker(app=app, processes=2):
        job = t.ex_flaky_process.delay(str(counter), 2)
        assert job.get(timeout=60) == 3
    assert [(a.outcome, a.executor) for a in job.history] == [
        ("error", "process"),
        ("error", "process"),
        ("success", "process"),
    ]


def test_a_result_msgpack_cannot_encode_fails_the_job_clearly() -> None:
    with isolated_app() as app, Worker(app=app, processes=1):
        with pytest.raises(JobFailed) as info:
            t.ex_unencodable.delay().get(timeout=60)
    assert info.value.exc_type == "SerializationError"


def test_children_are_recycled_after_max_jobs_per_child() -> None:
    with isolated_app(max_jobs_per_child=3) as app, Worker(app=app, processes=1):
        pids = [t.ex_whoami.delay(i).get(timeout=60)[0] for i in range(7)]
    assert [len(set(pids[i : i + 3])) for i in (0, 3, 6)] == [1, 1, 1]
    assert len(set(pids)) == 3


def test_thread_async_and_process_tasks_in_one_worker() -> None:
    with isolated_app() as app, Worker(app=app, processes=1):
        jobs = [t.ex_plain.delay(1), t.ex_nap.delay(0.01), t.ex_whoami.delay(2), t.ex_async_whoami.delay()]
        results = [j.get(timeout=60) for j in jobs]
    assert results[0] == 2 and results[1] == "nuvom-async-loop" and results[2][1] == 2
    assert results[3] != os.getpid()  # an async task of the process pool runs in a child
    assert [j.history[0].executor for j in jobs] == ["thread", "async", "process", "process"]


def test_pool_process_sends_every_task_to_the_children() -> None:
    with isolated_app(executor="process") as app, Worker(app=app, processes=1) as worker:
        assert worker.executor_for(t.ex_plain.make_job([1], {})) == "process"
        job = t.ex_plain.delay(1)
        assert job.get(timeout=60) == 2
        assert job.history[0].executor == "process"


def test_stop_gives_running_children_the_grace_period() -> None:
    with isolated_app() as app:
        worker = Worker(app=app, processes=2).start()
        long = t.ex_sleep_in_child.delay(60)
        wait_for(lambda: worker.metrics()["inflight_jobs"] == 1, timeout=60)
        short = t.ex_sleep_in_child.delay(2.0)
        # Both running (the second child may still be starting on a loaded machine).
        wait_for(lambda: worker.metrics()["inflight_jobs"] == 2, timeout=60)
        worker.stop(grace=5.0)
        assert isinstance(short.get(timeout=1), int)  # finished within the grace period
        record = app.queue.get(long.id)
        assert record is not None and record.status is JobStatus.RETRYING  # handed back
        assert [a.executor for a in record.history] == []  # interrupted: the claim counts, no outcome yet
        assert not worker.executor("process").child_pids()


@linux_only
def test_children_exit_when_the_worker_is_killed(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NUVOM_QUEUE_BACKEND": "file",
        "NUVOM_RESULT_BACKEND": "file",
        "NUVOM_DATA_DIR": str(tmp_path / ".nuvom"),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", "_exec_tasks", "--pool", "process", "--processes", "2"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    try:
        with isolated_app(queue_backend="file", result_backend="file", data_dir=tmp_path / ".nuvom"):
            job = t.ex_sleep_in_child.delay(60)
            wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=60)
            kids = children_of(worker.pid)
            queue = t.ex_sleep_in_child.app.queue
            wait_for(lambda: (r := queue.get(job.id)) is not None and r.status.value == "RUNNING")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        wait_for(lambda: not [pid for pid in kids if alive(pid)], timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_current_job_in_a_pool_child_says_its_own_job_and_attempt() -> None:
    with isolated_app(), Worker(max_workers=1, processes=1):
        job = t.ex_context_in_child.delay(True)
        job_id, attempt, retries_left, queue, pid = job.get(timeout=60)
        assert (job_id, attempt, retries_left, queue) == (job.id, 2, 0, "default") and pid != os.getpid()


def test_cancelling_a_running_pool_job_kills_its_child_and_ends_it_cancelled(tmp_path: Path) -> None:
    from nuvom.sdk import cancel_job

    marker = tmp_path / "child.pid"
    with isolated_app() as app, Worker(max_workers=1, processes=1):
        job = t.ex_wait_in_child.delay(str(marker))
        wait_for(marker.exists, 60)
        child = int(marker.read_text())
        assert cancel_job(job.id, app=app) is not None
        with pytest.raises(JobFailed) as failed:
            job.get(timeout=30)
        assert failed.value.exc_type == "Cancelled"
        wait_for(lambda: not alive(child), 10)
        record = app.results.get_full(job.id)
        assert record is not None and record.attempts == 1 and len(record.history) == 1
        # The pool goes on with a fresh child.
        assert t.ex_whoami.delay(5).get(timeout=60)[1] == 5
