"""File backend delivery hardening (issue 12, items 1-4): a healthy worker runs
each job once with a bounded number of claims, zombies are fenced, a worker
that cannot write keeps its finished jobs and stores them later, and things in
queue/ that are not job files are skipped."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from nuvom.app import App
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import Settings, load_settings
from nuvom.errors import BackendError
from nuvom.job import Job, JobError, JobStatus
from nuvom.worker import Worker


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


# -- item 1: a healthy worker runs each job once, holding a bounded number of claims --


def test_ack_never_lets_a_reclaim_scan_take_the_acknowledged_claim(settings: Settings) -> None:
    queue = FileJobQueue(settings)
    job = Job(func_name="t")
    queue.enqueue(job)
    [claimed] = queue.claim(1)
    # The claim's lease has run out (a long write, say); ack() must still not let
    # this process's own reclaim scan take the file for a dead worker's.
    queue._claims[job.id].expiry_ns = 0
    path = queue._claims[job.id].path
    expired = os.path.join(queue.claimed_dir, "0" * 20 + "-1-" + job.id + ".msgpack")
    os.replace(path, expired)
    queue._claims[job.id].path = expired
    stolen: list[Job] = []
    recycle = queue._temp.recycle
    claimers: list[threading.Thread] = []

    def recycle_while_another_thread_claims(p: str) -> bool:
        queue._next_reclaim = 0.0
        t = threading.Thread(target=lambda: stolen.extend(queue.claim(10)), daemon=True)
        claimers.append(t)
        t.start()
        t.join(0.3)  # the claimer runs now, while ack() is between its steps
        return recycle(p)

    queue._temp.recycle = recycle_while_another_thread_claims  # type: ignore[method-assign]
    queue.ack([claimed.id])
    claimers[0].join(10)
    assert stolen == []
    assert os.listdir(queue.claimed_dir) == []


class SlowResults(FileResultBackend):
    """A slow disk: every write takes a while (real files, real delay)."""

    def store(self, jobs: Any) -> None:
        time.sleep(0.02)
        super().store(jobs)


RUNS: Counter[str] = Counter()


def test_a_healthy_worker_holds_a_bounded_number_of_claims_and_runs_each_job_once(settings: Settings) -> None:
    settings = settings.model_copy(update={"lease_secs": 1.0, "job_timeout_secs": 0.5})
    queue = FileJobQueue(settings)
    app = App(settings, queue=queue, results=SlowResults(settings))

    @app.task(name="count_run")
    def count_run(key: str) -> str:
        RUNS[key] += 1
        return key

    keys = [f"b{i}" for i in range(800)]
    count_run.map(keys)
    worker = Worker(max_workers=2, batch_size=8, app=app)
    most = 0
    with worker:
        deadline = time.monotonic() + 60
        while app.results.count() < len(keys) and time.monotonic() < deadline:
            most = max(most, len(os.listdir(queue.claimed_dir)))
            time.sleep(0.005)
    assert app.results.count() == len(keys)
    twice = [k for k in keys if RUNS[k] != 1]
    assert twice == [], f"{len(twice)} jobs ran more than once"
    # Claims held: what runs, what waits in the threads' inboxes, what awaits its write.
    assert most <= worker.capacity + worker.batch_size, most


# -- item 2: zombie fencing, takeover when the docs say ------------------------------


def test_a_zombie_outcome_never_overwrites_and_takeover_comes_at_the_documented_lease(settings: Settings) -> None:
    settings = settings.model_copy(update={"lease_secs": 1.0})  # job timeout 1 s: lease max(1, 1.1 + 2) = 3.1 s
    zombie, other = FileJobQueue(settings), FileJobQueue(settings)
    results = FileResultBackend(settings)
    job = Job(func_name="t", timeout_secs=1.0)
    zombie.enqueue(job)
    [mine] = zombie.claim(1)
    claimed_at = time.monotonic()
    taken: list[Job] = []
    wait_for(lambda: taken.extend(other.claim(1)) or taken, "the takeover", timeout=40)
    waited = time.monotonic() - claimed_at
    assert 3.0 <= waited <= 4.5, waited
    [theirs] = taken
    theirs.mark_succeeded(theirs.mark_started("other", time.time()), "good", time.time())
    other.complete([theirs], results)
    mine.mark_failed(JobError(type="TimeoutError", message="late"), time.time())
    zombie.complete([mine], results)  # resumed after its lease: must be ignored
    record = results.get_full(job.id)
    assert record is not None and record.status is JobStatus.SUCCESS and record.result == "good"
    assert os.listdir(zombie.claimed_dir) == []


# -- item 3: a worker that cannot write keeps its outcomes and stores them later ------


class BrokenDisk(FileResultBackend):
    """Writes fail while ``broken`` is set, as on a full disk."""

    broken = threading.Event()
    failures = 0

    def store(self, jobs: Any) -> None:
        if self.broken.is_set():
            type(self).failures += 1
            raise BackendError("file backend: storing a result failed: the disk is full (test)")
        super().store(jobs)


def test_a_worker_that_cannot_write_keeps_outcomes_stops_claiming_and_stores_them_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    queue = FileJobQueue(settings)
    results = BrokenDisk(settings)
    results.broken.set()
    app = App(settings, queue=queue, results=results)

    @app.task(name="count_run_disk")
    def count_run_disk(key: str) -> str:
        RUNS[key] += 1
        return key

    keys = [f"d{i}" for i in range(60)]
    count_run_disk.map(keys)
    caplog.set_level(logging.WARNING, logger="nuvom")
    worker = Worker(max_workers=2, batch_size=4, app=app)
    with worker:
        wait_for(lambda: BrokenDisk.failures >= 3, "several failed writes")
        ran = sum(RUNS[k] for k in keys)
        assert ran <= worker.capacity  # past the bound it stops claiming
        assert queue.qsize() >= len(keys) - worker.capacity
        results.broken.clear()
        wait_for(lambda: FileResultBackend(settings).count() == len(keys), "every outcome stored", timeout=60)
    assert [k for k in keys if RUNS[k] != 1] == []
    stored = FileResultBackend(settings)
    assert all(stored.get_full(j.id).status is JobStatus.SUCCESS for j in stored.list_jobs(limit=100))  # type: ignore[union-attr]
    lines = [r.getMessage() for r in caplog.records if r.name == "nuvom.worker"]
    assert sum("storing finished jobs failed" in m for m in lines) == 1, lines
    assert sum("works again" in m for m in lines) == 1, lines
    assert os.listdir(queue.claimed_dir) == []


# -- item 4: FIFOs and directories in queue/ -------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_or_directory_in_the_queue_is_skipped_with_one_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    queue = FileJobQueue(settings)
    fifo = os.path.join(queue.queue_dir, f"{0:020d}-{0:08d}-fifojob.msgpack")
    folder = os.path.join(queue.queue_dir, f"{0:020d}-{1:08d}-dirjob.msgpack")
    os.mkfifo(fifo)
    os.mkdir(folder)
    jobs = [Job(func_name="t", args=[i]) for i in range(5)]
    queue.enqueue_many(jobs)
    caplog.set_level(logging.WARNING, logger="nuvom")
    got: list[Job] = []
    errors: list[BaseException] = []

    def claim_twice() -> None:
        try:
            got.extend(queue.claim(10))
            queue._listed_at = float("-inf")  # list again: still one warning each
            got.extend(queue.claim(10))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=claim_twice, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "claiming blocked on the FIFO"
    assert errors == []
    assert sorted(j.id for j in got) == sorted(j.id for j in jobs)
    warnings = [r.getMessage() for r in caplog.records if "not a regular file" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert os.path.exists(fifo) and os.path.isdir(folder)
