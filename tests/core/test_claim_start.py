"""BaseJobQueue.pop_batch_starting: a claim whose first jobs are also start-marked.
The contract's default (claim, then mark_started in order) on the file backend
and on a third-party queue that knows nothing of it, and the worker handing
such jobs to its idle threads without marking them twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from nuvom import job as job_module
from nuvom.app import App
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import Settings, load_settings
from nuvom.job import Job, JobStatus
from nuvom.plugins.contracts import BaseJobQueue
from nuvom.worker import Worker


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


def make(n: int, **fields: object) -> list[Job]:
    return [Job(func_name="t", args=[i], **fields) for i in range(n)]  # type: ignore[arg-type]


class ListQueue(BaseJobQueue):
    """A third-party queue written before pop_batch_starting: a list, claims,
    and a start mark that fails for the ids in ``lost`` (taken over)."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[Job] = []
        self.marked: list[str] = []
        self.lost: set[str] = set()

    def enqueue(self, job: Job) -> None:
        self.jobs.append(job)

    def claim(self, batch_size: int) -> list[Job]:
        out, self.jobs = self.jobs[:batch_size], self.jobs[batch_size:]
        for job in out:
            job.mark_claimed()
        return out

    def pop_batch(self, batch_size: int, timeout: float | None = 0.0) -> list[Job]:
        return self.claim(batch_size)  # overridden without the new argument, as old backends are

    def mark_started(self, job: Job) -> bool:
        self.marked.append(job.id)
        return job.id not in self.lost

    def ack(self, job_ids: Sequence[str]) -> None:
        pass

    def requeue(self, jobs: Sequence[Job]) -> None:
        self.jobs.extend(jobs)

    def get(self, job_id: str) -> Job | None:
        return None

    def qsize(self) -> int:
        return len(self.jobs)

    def clear(self) -> int:
        n, self.jobs = len(self.jobs), []
        return n


def test_the_default_marks_the_first_jobs_in_order_and_returns_them_first() -> None:
    queue = ListQueue()
    jobs = make(5)
    for job in jobs:
        queue.enqueue(job)
    claimed = queue.pop_batch_starting(5, start=2)
    assert [j.id for j in claimed] == [j.id for j in jobs]
    assert queue.marked == [jobs[0].id, jobs[1].id]
    assert queue.pop_batch_starting(5, start=2) == []


def test_the_default_drops_a_job_whose_mark_failed_and_marks_the_next_instead() -> None:
    queue = ListQueue()
    jobs = make(4)
    for job in jobs:
        queue.enqueue(job)
    queue.lost = {jobs[1].id}  # its claim was taken over: it must not run here
    claimed = queue.pop_batch_starting(4, start=2)
    assert [j.id for j in claimed] == [jobs[0].id, jobs[2].id, jobs[3].id]
    assert queue.marked == [jobs[0].id, jobs[1].id, jobs[2].id]  # the first two returned are marked


def test_the_default_with_start_zero_or_more_than_claimed() -> None:
    queue = ListQueue()
    for job in make(3):
        queue.enqueue(job)
    assert len(queue.pop_batch_starting(1)) == 1 and queue.marked == []
    assert len(queue.pop_batch_starting(10, start=5)) == 2 and len(queue.marked) == 2


def test_on_files_the_started_claims_count_as_lost_runs_and_the_others_do_not(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "LEASE_MARGIN_SECS", 0.0)
    short = settings.model_copy(update={"lease_secs": 0.2, "job_timeout_secs": 0.2})
    dead = FileJobQueue(short)
    jobs = make(3)
    dead.enqueue_many(jobs)
    claimed = dead.pop_batch_starting(3, timeout=5, start=2)
    assert [j.id for j in claimed] == [j.id for j in jobs]
    # ...and the worker dies holding all three.
    again = {j.id: j for j in FileJobQueue(short).pop_batch(3, timeout=5) + FileJobQueue(short).pop_batch(3, timeout=5)}
    assert set(again) == {j.id for j in jobs}
    assert [again[j.id].attempts for j in jobs] == [2, 2, 1]
    assert [again[j.id].mark_lost_runs(time.time()) for j in jobs] == [1, 1, 0]


class CountingFileQueue(FileJobQueue):
    claims_started = 0
    marks = 0
    marked: list[str] = []

    def claim_batch(
        self, limit: int, timeout: float | None, idle: Callable[[], int], queues: Sequence[str] = ("default",)
    ) -> list[Job]:
        asked: list[int] = []

        def counted() -> int:
            asked.append(idle())
            return asked[-1]

        jobs = super().claim_batch(limit, timeout, counted, queues)
        type(self).claims_started += min(sum(asked), len(jobs))
        return jobs

    def mark_started(self, job: Job) -> bool:
        type(self).marks += 1
        type(self).marked.append(job.id)
        return super().mark_started(job)


def test_a_worker_marks_each_job_at_most_once_whether_with_its_claim_or_when_it_starts(settings: Settings) -> None:
    app = App(settings)
    ran: list[int] = []

    @app.task(name="note")
    def note(n: int) -> int:
        ran.append(n)
        return n

    queue, results = CountingFileQueue(settings), FileResultBackend(settings)
    with Worker(app=app, queue=queue, results=results, max_workers=2) as worker:
        unknown = Job(func_name="no_such_task")  # marked with its claim, settled without running
        queue.enqueue(unknown)
        failed = results.wait(unknown.id, 10)
        assert failed is not None and failed.status is JobStatus.FAILED
        for n in range(3):  # one at a time: each reaches an idle thread
            job = note.make_job([n], {})
            queue.enqueue(job)
            done = results.wait(job.id, 10)
            assert done is not None and done.status is JobStatus.SUCCESS and done.attempts == 1
        many = [note.make_job([n], {}) for n in range(3, 40)]
        queue.enqueue_many(many)
        for job in many:
            done = results.wait(job.id, 10)
            assert done is not None and done.status is JobStatus.SUCCESS and done.attempts == 1
        assert worker._writer is not None and worker._writer.premarked == set()  # nothing kept for jobs that are done
    assert sorted(ran) == list(range(40))
    assert CountingFileQueue.claims_started >= 3  # the trickle went straight to idle threads
    # The default marks through mark_started: never twice for one job. A job
    # that started from the prefetch and ended before the next group write
    # needs no mark at all: its outcome, written in that group, supersedes it.
    assert len(CountingFileQueue.marked) == len(set(CountingFileQueue.marked)) <= 41
    app.close()
