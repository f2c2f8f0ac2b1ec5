"""Unique keys in the file store: the key is a hard link to its job's file, so
its link count says whether the job is still in the queue. Crash points are
arranged by leaving the files a killed process would leave."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from nuvom.backends._file_unique import _stem
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import Settings, load_settings
from nuvom.job import Job, JobStatus


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


@pytest.fixture
def queue(settings: Settings) -> FileJobQueue:
    return FileJobQueue(settings)


def unique(key: str = "k", **fields: object) -> Job:
    return Job(func_name="t", unique_key=key, **fields)  # type: ignore[arg-type]


def key_file(queue: FileJobQueue, key: str = "k") -> str:
    return queue._key_path(_stem(key))


def finish(queue: FileJobQueue, job: Job, results: FileResultBackend) -> None:
    job.mark_succeeded(job.mark_started("w", time.time()), "done", time.time())
    queue.complete([job], results)


def test_producers_racing_for_a_key_queue_one_job(settings: Settings) -> None:
    jobs = [unique() for _ in range(8)]
    queues = [FileJobQueue(settings) for _ in jobs]
    barrier = threading.Barrier(len(jobs))
    returned: list[str] = []

    def produce(q: FileJobQueue, job: Job) -> None:
        barrier.wait()
        returned.append(q.enqueue_unique(job))

    threads = [threading.Thread(target=produce, args=pair) for pair in zip(queues, jobs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(returned)) == 1 and len(returned) == len(jobs)
    assert queues[0].qsize() == 1 and queues[0].get(returned[0]) is not None


def test_the_key_is_held_while_its_job_is_queued_claimed_or_retried(queue: FileJobQueue, settings: Settings) -> None:
    results = FileResultBackend(settings)
    first = unique()
    assert queue.enqueue_unique(first) == first.id
    assert os.stat(key_file(queue)).st_nlink == 2  # the key and the job's file: one file
    assert queue.enqueue_unique(unique()) == first.id
    [claimed] = queue.claim(1)
    assert queue.mark_started(claimed)
    assert queue.enqueue_unique(unique()) == first.id
    claimed.mark_retrying(time.time(), 0)
    queue.requeue([claimed])  # new content, a new file: the key moves with it
    assert os.stat(key_file(queue)).st_nlink == 2
    assert queue.enqueue_unique(unique()) == first.id
    [again] = queue.claim(1)
    finish(queue, again, results)
    assert not os.path.exists(key_file(queue))
    later = unique()
    assert queue.enqueue_unique(later) == later.id


def test_cancelling_a_queued_unique_job_frees_its_key(queue: FileJobQueue) -> None:
    first = unique()
    queue.enqueue_unique(first)
    assert queue.cancel(first.id) is not None
    second = unique()
    assert queue.enqueue_unique(second) == second.id


def test_a_key_left_by_a_worker_killed_after_removing_its_claim_is_taken(queue: FileJobQueue) -> None:
    first = unique()
    queue.enqueue_unique(first)
    [claimed] = queue.claim(1)
    os.unlink(queue._claims[claimed.id].path)  # the claim went; the worker died before deleting the key
    assert os.stat(key_file(queue)).st_nlink == 1
    second = unique()
    assert queue.enqueue_unique(second) == second.id
    assert [job.id for job in queue.claim(5)] == [second.id]


def test_a_key_taken_by_a_producer_killed_before_queueing_its_job_is_queued(queue: FileJobQueue) -> None:
    orphan = unique()
    stage = queue._stage_path(_stem("k"), "e")
    Path(stage).write_bytes(orphan.to_bytes())
    os.link(stage, key_file(queue))  # step 2 done, step 3 (the rename into its lane) never came
    old = time.time() - 5
    os.utime(stage, (old, old))
    assert queue.enqueue_unique(unique()) == orphan.id  # the key is held by the orphan...
    assert [job.id for job in queue.claim(5)] == [orphan.id]  # ...which is queued now
    assert os.listdir(os.path.dirname(stage)) == []


def test_the_sweep_queues_the_job_of_a_producer_killed_holding_its_key(queue: FileJobQueue) -> None:
    orphan = unique()
    stage = queue._stage_path(_stem("k"), "e")
    Path(stage).write_bytes(orphan.to_bytes())
    os.link(stage, key_file(queue))
    old = time.time() - 5
    os.utime(stage, (old, old))
    queue._next_reclaim = 0.0
    assert queue.claim(5) == []  # this pass sweeps; the next one claims
    assert [job.id for job in queue.claim(5)] == [orphan.id]


def test_a_producer_waits_for_a_finished_holder_to_leave(queue: FileJobQueue, settings: Settings) -> None:
    results = FileResultBackend(settings)
    first = unique()
    queue.enqueue_unique(first)
    [claimed] = queue.claim(1)
    claimed.mark_succeeded(claimed.mark_started("w", time.time()), "done", time.time())
    results.store([claimed])  # its outcome is stored; its claim goes a moment later
    acker = threading.Timer(0.3, queue.ack, args=([claimed.id],))
    acker.start()
    second = unique()
    started = time.monotonic()
    assert queue.enqueue_unique(second) == second.id
    assert time.monotonic() - started >= 0.25
    acker.join()


def test_a_retry_killed_after_moving_the_key_keeps_it_until_the_job_leaves(
    queue: FileJobQueue, settings: Settings
) -> None:
    results = FileResultBackend(settings)
    first = unique()
    queue.enqueue_unique(first)
    [claimed] = queue.claim(1)
    # The retry wrote its new file and moved the key onto it, then its worker died.
    stage = queue._stage_path(_stem("k"), "r")
    Path(stage).write_bytes(claimed.to_bytes())
    link = queue._stage_path(_stem("k"), "l")
    os.link(stage, link)
    os.replace(link, key_file(queue))
    assert queue.enqueue_unique(unique()) == first.id  # still held: its old file is still claimed
    finish(queue, claimed, results)  # the job runs again and leaves (here: the same claim finishes)
    record = results.get_full(first.id)
    assert record is not None and record.status is JobStatus.SUCCESS
    second = unique()
    assert queue.enqueue_unique(second) == second.id
