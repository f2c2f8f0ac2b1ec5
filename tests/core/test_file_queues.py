"""Named queues and priorities in the file store: a folder per queue, a lane per priority."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from nuvom.backends.file import FileJobQueue
from nuvom.config import Settings, load_settings
from nuvom.errors import BackendError
from nuvom.job import Job


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


@pytest.fixture
def queue(settings: Settings) -> FileJobQueue:
    return FileJobQueue(settings)


def make(label: str, **fields: object) -> Job:
    return Job(func_name="t", args=[label], **fields)  # type: ignore[arg-type]


def labels(jobs: list[Job]) -> list[str]:
    return [job.args[0] for job in jobs]


def claim(queue: FileJobQueue, limit: int, queues: list[str]) -> list[Job]:
    return queue.claim_batch(limit, 0, lambda: 0, queues)


def test_a_claim_fills_its_batch_from_the_first_queue_then_the_next(queue: FileJobQueue) -> None:
    queue.enqueue_many([make(f"a{i}", queue="alpha") for i in range(3)])
    queue.enqueue_many([make(f"b{i}", queue="beta") for i in range(3)])
    queue.enqueue_many([make(f"d{i}") for i in range(3)])
    assert labels(claim(queue, 4, ["beta", "alpha"])) == ["b0", "b1", "b2", "a0"]
    assert labels(claim(queue, 10, ["alpha"])) == ["a1", "a2"]
    assert labels(queue.claim(10)) == ["d0", "d1", "d2"]  # claim() serves the default queue


def test_higher_priority_first_then_oldest_due_first(queue: FileJobQueue) -> None:
    now = time.time()
    queue.enqueue_many(
        [
            make("low-old", priority=-1, created_at=now - 10),
            make("mid-1"),
            make("mid-2"),
            make("urgent-later", priority=9, not_before=now + 60),  # not due: holds nothing back
        ]
    )
    queue.enqueue(make("high", priority=5))
    queue.enqueue(make("mid-0-older", created_at=now - 5))
    assert labels(queue.claim(10)) == ["high", "mid-0-older", "mid-1", "mid-2", "low-old"]


def test_a_higher_priority_job_queued_later_is_claimed_before_the_rest_of_a_listing(queue: FileJobQueue) -> None:
    queue.enqueue_many([make(f"low{i}") for i in range(5)])
    assert labels(queue.claim(1)) == ["low0"]  # the lane is listed: four names left in memory
    queue.enqueue(make("urgent", priority=3))
    assert labels(queue.claim(2)) == ["urgent", "low1"]


def test_queues_and_priorities_get_their_own_folders(queue: FileJobQueue) -> None:
    queue.enqueue(make("x", queue="Emails"))
    queue.enqueue(make("y", queue="emails", priority=-2))
    queue.enqueue(make("z", queue="a:b.c"))
    folders = sorted(os.listdir(Path(queue.root, "queues")))
    # Names that differ only in case, or hold ':' (not allowed on Windows), get folders of their own.
    assert folders == [".45mails", "a.3ab.2ec", "emails"]
    assert os.listdir(Path(queue.root, "queues", "emails", "priorities")) == ["-2"]
    assert labels(claim(queue, 5, ["Emails"])) == ["x"]
    assert labels(claim(queue, 5, ["emails"])) == ["y"]
    assert labels(claim(queue, 5, ["a:b.c"])) == ["z"]


def test_a_job_for_a_queue_with_an_unsafe_name_is_refused(queue: FileJobQueue) -> None:
    with pytest.raises(BackendError, match="queue name"):
        queue.enqueue(make("x", queue="../../etc"))
    assert queue.qsize() == 0


def test_expired_claims_are_taken_over_only_by_workers_of_their_queue(settings: Settings) -> None:
    settings = settings.model_copy(update={"lease_secs": 0.2, "job_timeout_secs": 0.1})
    dead, default_worker, emails_worker = FileJobQueue(settings), FileJobQueue(settings), FileJobQueue(settings)
    dead.enqueue(make("mail", queue="emails"))
    [taken] = claim(dead, 1, ["emails"])
    dead.mark_started(taken)
    taken_over: list[Job] = []
    deadline = time.monotonic() + 30
    # The lease (0.1 s timeout x 1.1 + 2 s) runs out: its worker is gone. Only a worker of "emails" takes it.
    while not taken_over and time.monotonic() < deadline:
        default_worker._next_reclaim = emails_worker._next_reclaim = 0.0
        assert default_worker.claim(10) == []
        taken_over = claim(emails_worker, 10, ["emails"])
        time.sleep(0.05)
    [again] = taken_over
    assert again.id == taken.id and again.attempts == 2  # the lost run counts


def test_counts_by_queue_include_jobs_waiting_for_their_parents(queue: FileJobQueue) -> None:
    parent = make("p", queue="work")
    queue.enqueue(parent)
    queue.enqueue_many([make("d1"), make("d2", priority=4)])
    from nuvom.job import Flow

    queue.enqueue(make("child", queue="work", flow=Flow(parents=[parent.id])))
    claim(queue, 1, ["work"])
    assert queue.queue_counts() == {
        "default": {"queued": 2, "running": 0},
        "work": {"queued": 1, "running": 1},
    }
    assert queue.counts() == {"queued": 3, "running": 1}
    assert queue.qsize() == 3
    assert [j.args[0] for j in queue.peek()] == ["d2", "d1"]


def test_get_and_cancel_find_jobs_in_every_queue_and_lane(queue: FileJobQueue) -> None:
    jobs = [make("a", queue="q1"), make("b", queue="q2", priority=7), make("c", priority=-3)]
    queue.enqueue_many(jobs)
    for job in jobs:
        found = queue.get(job.id)
        assert found is not None and found.queue == job.queue and found.priority == job.priority
    cancelled = queue.cancel(jobs[1].id)
    assert cancelled is not None and cancelled.id == jobs[1].id
    assert queue.get(jobs[1].id) is None and queue.qsize() == 2
    assert queue.clear() == 2 and queue.qsize() == 0


def test_a_scheduled_job_goes_to_its_task_queue(queue: FileJobQueue) -> None:
    job = make("tick", queue="reports", priority=2)
    queue._queue_tick_job(job, time.time())
    assert labels(claim(queue, 5, ["reports"])) == ["tick"]
