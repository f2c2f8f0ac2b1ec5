"""``job.get()`` reads results in batches when the result backend can
(``BaseResultBackend.get_many``): a loop of ``get()`` over many finished jobs
costs a read per batch, only live handles are read for, each record is handed
out once, and a job still running is waited for as before."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from nuvom.app import App
from nuvom.backends.memory import MemoryResultBackend
from nuvom.config import Settings
from nuvom.job import Job, JobStatus


class CountingResults(MemoryResultBackend):
    """The memory store, reading many records a call and saying which it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.single_reads = 0

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        self.batches.append(list(job_ids))
        found = {}
        for job_id in job_ids:
            record = super().get_full(job_id)
            if record is not None:
                found[job_id] = record
        return found

    def get_full(self, job_id: str) -> Job | None:
        self.single_reads += 1
        return super().get_full(job_id)


def app_with(results: MemoryResultBackend) -> App:
    app = App(Settings(queue_backend="memory", result_backend="memory"))
    app.set_backends(results=results)
    return app


def finish(app: App, jobs: Sequence[Job], offset: int = 0) -> None:
    """Store what a worker would: each job succeeded with its argument (plus ``offset``)."""
    app.results.store(
        [
            Job(id=j.id, func_name=j.func_name, args=j.args, status=JobStatus.SUCCESS, result=j.args[0] + offset)
            for j in jobs
        ]
    )


def test_a_loop_of_get_over_finished_jobs_reads_them_in_a_few_batches() -> None:
    results = CountingResults()
    app = app_with(results)
    echo = app.task(lambda x: x, name="echo")
    jobs = echo.map(range(1000)) + [echo.delay(i) for i in range(1000, 1200)]
    finish(app, jobs)
    assert [job.get(timeout=5) for job in jobs] == list(range(1200))
    assert len(results.batches) <= 12, [len(b) for b in results.batches]  # 16, 32, ... 256, 256, ...
    assert sorted(i for batch in results.batches for i in batch) == sorted(job.id for job in jobs)  # each read once
    assert results.single_reads == 0


def test_handles_dropped_are_not_read_for(tmp_path: Path) -> None:
    results = CountingResults()
    # The file queue keeps bytes, not the handles (the memory queue holds the very objects).
    app = App(Settings(queue_backend="file", result_backend="memory", data_dir=tmp_path / "data"))
    app.set_backends(results=results)
    echo = app.task(lambda x: x, name="echo")
    jobs = echo.map(range(100))
    kept = jobs[::10]
    dropped = {job.id for job in jobs} - {job.id for job in kept}
    finish(app, jobs)
    del jobs
    gc.collect()
    assert [job.get(timeout=5) for job in kept] == list(range(0, 100, 10))
    read = {i for batch in results.batches for i in batch}
    assert read and not read & dropped


def test_a_record_is_handed_out_once_and_the_next_get_reads_the_store_again() -> None:
    results = CountingResults()
    app = app_with(results)
    echo = app.task(lambda x: x, name="echo")
    jobs = echo.map(range(20))
    finish(app, jobs)
    assert jobs[0].get(timeout=5) == 0  # read jobs 0-15 in one batch
    finish(app, jobs, offset=100)  # the jobs ran again since (a retry from the CLI, say)
    assert jobs[1].get(timeout=5) == 1  # read ahead with job 0: handed out as read
    assert jobs[1].get(timeout=5) == 101  # its second get() reads the store
    assert jobs[0].get(timeout=5) == 100


def test_a_job_still_running_is_waited_for_and_reading_ahead_stops_while_jobs_run() -> None:
    results = CountingResults()
    app = app_with(results)
    echo = app.task(lambda x: x, name="echo")
    jobs = echo.map(range(64))
    stored = threading.Event()

    def store_one_by_one() -> None:
        for job in jobs:
            time.sleep(0.002)
            finish(app, [job])
        stored.set()

    thread = threading.Thread(target=store_one_by_one)
    thread.start()
    assert [job.get(timeout=10) for job in jobs] == list(range(64))
    thread.join()
    assert stored.is_set()
    # Jobs finishing one by one: a batch finds little, and reading ahead stops;
    # it is tried again once every 16 calls, not on each (64 reads).
    assert len(results.batches) < 16, [len(b) for b in results.batches]


def test_a_backend_that_reads_one_record_a_call_is_not_read_ahead() -> None:
    app = App(Settings(queue_backend="memory", result_backend="memory"))
    echo = app.task(lambda x: x, name="echo")
    jobs = echo.map(range(3))
    assert app._read_ahead() is None
    finish(app, jobs)
    assert [job.get(timeout=5) for job in jobs] == [0, 1, 2]
