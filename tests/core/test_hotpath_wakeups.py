"""Wake-ups on the hot path (issue 19): the memory queue wakes one claimer per
job and passes the wake-up on, a waiting get() is handed its record when it is
stored, and a get() on the file store finds a record stored by another writer."""

from __future__ import annotations

import threading
import time

from nuvom.backends.file import FileResultBackend
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.config import load_settings
from nuvom.job import Job


def finished(job: Job, result: object) -> Job:
    now = time.time()
    job.mark_claimed()
    job.mark_succeeded(job.mark_started("w", now), result, now)
    return job


def test_two_waiting_claimers_each_get_a_job_of_one_batch() -> None:
    queue = MemoryJobQueue()
    got: list[list[Job]] = []
    waiting = threading.Barrier(3)

    def claimer() -> None:
        waiting.wait()
        got.append(queue.pop_batch(1, timeout=10))

    threads = [threading.Thread(target=claimer) for _ in range(2)]
    for t in threads:
        t.start()
    waiting.wait()
    start = time.monotonic()
    queue.enqueue_many([Job(func_name="a"), Job(func_name="b")])
    for t in threads:
        t.join(10)
    assert sorted(len(jobs) for jobs in got) == [1, 1]
    assert time.monotonic() - start < 5  # woken, not timed out


def test_single_enqueues_each_wake_a_claimer() -> None:
    queue = MemoryJobQueue()
    got: list[Job] = []
    ready = threading.Barrier(4)

    def claimer() -> None:
        ready.wait()
        got.extend(queue.pop_batch(1, timeout=10))

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    for t in threads:
        t.start()
    ready.wait()
    jobs = [Job(func_name=f"j{i}") for i in range(3)]
    for job in jobs:
        queue.enqueue(job)
    for t in threads:
        t.join(10)
    assert {j.id for j in got} == {j.id for j in jobs}


def test_a_waiting_get_is_handed_its_record_and_a_timeout_returns_none() -> None:
    results = MemoryResultBackend()
    job = Job(func_name="t")
    out: list[Job | None] = []
    waiter = threading.Thread(target=lambda: out.append(results.wait(job.id, 10)))
    waiter.start()
    deadline = time.monotonic() + 10
    while job.id not in results._waiting and time.monotonic() < deadline:
        time.sleep(0.001)  # until the waiter has registered (polled with a deadline)
    results.store([finished(job, 42)])
    waiter.join(10)
    assert out and out[0] is not None and out[0].result == 42
    assert results.wait("unknown", 0.05) is None
    assert not results._waiting  # the timed-out waiter left nothing behind


def test_file_get_finds_a_record_stored_by_another_writer(tmp_path) -> None:
    settings = load_settings().model_copy(update={"data_dir": tmp_path / "data"})
    reader, writer = FileResultBackend(settings), FileResultBackend(settings)
    job = Job(func_name="t")
    out: list[Job | None] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        out.append(reader.wait(job.id, 30))

    waiter = threading.Thread(target=wait)
    waiter.start()
    started.wait(10)
    writer.store([finished(job, "done")])
    waiter.join(30)
    assert out and out[0] is not None and out[0].result == "done"
    start = time.monotonic()
    assert reader.wait(Job(func_name="t").id, 0.1) is None
    assert time.monotonic() - start < 5
