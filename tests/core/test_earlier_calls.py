"""Calls from the earlier nuvom's (0.11) own test suite, written as its users wrote them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nuvom.backends.file import FileResultBackend
from nuvom.backends.memory import MemoryResultBackend
from nuvom.config import Settings
from nuvom.job import JobStatus
from nuvom.plugins.contracts import BaseResultBackend


@pytest.fixture(params=["memory", "file"])
def results(request: pytest.FixtureRequest, tmp_path: Path) -> BaseResultBackend:
    if request.param == "memory":
        return MemoryResultBackend()
    return FileResultBackend(Settings(data_dir=str(tmp_path / ".nuvom")))


# -- result backends: set_result / set_error with 0.11's keywords ---------------------------
def test_set_result_with_the_earlier_keywords(results: BaseResultBackend) -> None:
    created = time.time() - 5
    results.set_result(
        "job-1",
        "add",
        3,
        args=(1, 2),
        kwargs={"round": False},
        retries_left=2,
        attempts=1,
        created_at=created,
        completed_at=created + 1,
    )
    assert results.get_result("job-1") == 3
    record = results.get_full("job-1")
    assert record is not None and record.status is JobStatus.SUCCESS
    assert (record.func_name, record.args, record.kwargs) == ("add", [1, 2], {"round": False})
    assert (record.attempts, record.max_retries) == (1, 2)
    assert (record.created_at, record.finished_at) == (pytest.approx(created), pytest.approx(created + 1))


def test_set_error_with_the_earlier_keywords(results: BaseResultBackend) -> None:
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        results.set_error("job-2", "parse", exc, args=("x",), kwargs={}, retries_left=0, attempts=3)
    error = results.get_error("job-2")
    assert error is not None and (error.type, error.message) == ("ValueError", "bad input")
    record = results.get_full("job-2")
    assert record is not None and record.status is JobStatus.FAILED
    assert (record.func_name, record.args, record.attempts, record.max_retries) == ("parse", ["x"], 3, 2)
    assert record.finished_at is not None


def test_set_result_by_keyword_as_0_11_named_them(results: BaseResultBackend) -> None:
    results.set_result(job_id="job-3", func_name="add", result=None)
    record = results.get_full("job-3")
    assert record is not None and record.status is JobStatus.SUCCESS and record.result is None


def test_todays_set_result_and_set_error_still_take_a_job(results: BaseResultBackend) -> None:
    from nuvom.job import Job

    ok, bad = Job(func_name="add", args=[1, 2]), Job(func_name="add")
    results.set_result(ok, 3)
    results.set_error(bad, RuntimeError("boom"))
    assert results.get_result(ok.id) == 3
    assert results.get_error(bad.id).message == "boom"  # type: ignore[union-attr]


def test_a_set_result_call_that_fits_neither_form_says_both(results: BaseResultBackend) -> None:
    with pytest.raises(TypeError, match=r"\(job, result\) or the earlier \(job_id, func_name, result"):
        results.set_result("job-4", 3)  # 0.11 needed the task's name too
    with pytest.raises(TypeError, match="unknown keyword"):
        results.set_result("job-4", "add", 3, retries=1)


# -- a queue backend with the seeds' five methods, no base class -----------------------------
SEED_QUEUE = """
import queue
import threading

from nuvom.plugins.contracts import Plugin


class MyQueue:                                  # the seeds' five methods, as 0.11's memory queue
    def __init__(self, maxsize: int = 0):
        self.q = queue.Queue(maxsize=maxsize)
        self.lock = threading.Lock()

    def enqueue(self, job):
        self.q.put(job)

    def dequeue(self, timeout=1):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None

    def pop_batch(self, batch_size=1, timeout=1):
        batch = []
        with self.lock:
            for _ in range(batch_size):
                try:
                    batch.append(self.q.get(timeout=timeout))
                except queue.Empty:
                    break
        return batch

    def qsize(self):
        return self.q.qsize()

    def clear(self):
        with self.lock:
            count = 0
            while not self.q.empty():
                self.q.get_nowait()
                count += 1
            return count


class MyQueuePlugin(Plugin):
    api_version = "1.0"
    name = "my_queue"
    provides = ["queue_backend"]

    def start(self, settings):
        from nuvom.plugins.registry import register_queue_backend
        register_queue_backend("my_queue", MyQueue)

    def stop(self):
        pass
"""


def test_a_queue_backend_written_to_the_seeds_interface_runs_jobs(tmp_path: Path, monkeypatch, recwarn) -> None:
    import sys

    from nuvom.app import App
    from nuvom.errors import JobFailed
    from nuvom.worker import Worker

    (tmp_path / "my_queue_plugin.py").write_text(SEED_QUEUE)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nqueue_backend = ["my_queue_plugin:MyQueuePlugin"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    app = App(Settings(queue_backend="my_queue", result_backend="memory"), project_dir=tmp_path)
    calls: list[int] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(retries=1, retry_delay_secs=0.2)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return "second"

    @app.task
    def boom() -> None:
        raise ValueError("seed queue error")

    try:
        assert app.queue.qsize() == 0
        with Worker(app=app, max_workers=2):
            assert [j.get(timeout=10) for j in add.map([(1, 2), (3, 4)])] == [3, 7]
            assert flaky.delay().get(timeout=10) == "second"  # retried after its delay
            with pytest.raises(JobFailed, match="seed queue error"):
                boom.delay().get(timeout=10)
        assert type(app.queue).__name__ == "LegacyMyQueue" and app.queue.qsize() == 0
        assert len(calls) == 2
        assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
    finally:
        sys.modules.pop("my_queue_plugin", None)


def test_a_seed_queue_is_cleared_and_counted_through_the_adapter() -> None:
    from nuvom._backends import adapt_backend_class
    from nuvom.job import Job

    class ListQueue:  # the five methods over a list, constructed without arguments
        def __init__(self) -> None:
            self.jobs: list[Job] = []

        def enqueue(self, job: Job) -> None:
            self.jobs.append(job)

        def dequeue(self, timeout: float = 1) -> Job | None:
            return self.jobs.pop(0) if self.jobs else None

        def pop_batch(self, batch_size: int = 1, timeout: float = 1) -> list[Job]:
            batch, self.jobs = self.jobs[:batch_size], self.jobs[batch_size:]
            return batch

        def qsize(self) -> int:
            return len(self.jobs)

        def clear(self) -> int:
            n, self.jobs = len(self.jobs), []
            return n

    queue = adapt_backend_class("queue", "list", ListQueue)(Settings())
    later = Job(func_name="add", not_before=time.time() + 3600)
    now = Job(func_name="add")
    queue.enqueue(later)
    queue.enqueue(now)
    assert queue.qsize() == 2
    claimed = queue.claim(10)
    assert [j.id for j in claimed] == [now.id]  # the job not yet due stays queued
    assert claimed[0].status is JobStatus.RUNNING and claimed[0].attempts == 1
    assert queue.get(now.id) is claimed[0]
    queue.ack([now.id])
    assert queue.get(now.id) is None
    assert queue.clear() == 1 and queue.qsize() == 0


# -- Job.from_dict ------------------------------------------------------------------------
def test_job_from_dict_reads_what_to_dict_wrote() -> None:
    from nuvom.job import Job

    job = Job(func_name="add", args=[1, 2], kwargs={"z": 3}, max_retries=2, tags=["math"])
    assert Job.from_dict(job.to_dict()) == job


def test_job_from_dict_reads_an_earlier_nuvoms_dict() -> None:
    from nuvom.job import Job

    # What 0.11.2's Job.to_dict() returned for a failed job waiting for its retry.
    old = {
        "id": "3f2a",
        "func_name": "add",
        "args": (1, 2),
        "kwargs": {},
        "timeout_secs": 5,
        "store_result": True,
        "status": "FAILED",
        "created_at": 1700000000.0,
        "retries_left": 1,
        "max_retries": 2,
        "result": None,
        "error": "boom",
        "retry_delay_secs": 5,
        "next_retry_at": 1700000010.0,
        "timeout_policy": "retry",
        "priority": 5,
        "scheduled": False,
        "hooks": {"before_job": False, "after_job": False, "on_error": False},
    }
    job = Job.from_dict(old)
    assert (job.id, job.func_name, job.args, job.max_retries) == ("3f2a", "add", [1, 2], 2)
    assert job.status is JobStatus.FAILED and job.error is not None and job.error.message == "boom"
    assert job.not_before == 1700000010.0 and job.timeout_policy == "retry"


def test_job_from_dict_validates_like_model_validate() -> None:
    from nuvom.job import Job
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'colour'"):
        Job.from_dict({"func_name": "add", "colour": "red"})
    with pytest.raises(ValidationError):
        Job.from_dict({"func_name": "add", "attempts": "many"})
