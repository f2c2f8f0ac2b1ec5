"""The optional contract methods the dashboard reads through (counts, peek,
cancel, query), on every core backend and on SQLite when nuvom-sqlite is
installed (the e2e environment), and the SDK over them."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
from nuvom import sdk
from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.job import Job, JobError, JobStatus
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend
from nuvom.testing import reset_process_state

HAVE_SQLITE = importlib.util.find_spec("nuvom.sqlite") is not None
BACKENDS = [
    "memory",
    "file",
    pytest.param("sqlite", marks=pytest.mark.skipif(not HAVE_SQLITE, reason="nuvom-sqlite is not installed")),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", request.param)
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", request.param)
    reset_process_state()
    yield request.param


def finished(n: int, start: float = 1_000_000.0, **fields: object) -> list[Job]:
    jobs = []
    for i in range(n):
        status = JobStatus.FAILED if i % 3 == 0 else JobStatus.SUCCESS
        job = Job(
            func_name="add" if i % 2 else "mul",
            status=status,
            started_at=start + i - 0.25,
            finished_at=start + i,
            tags=["even"] if i % 2 == 0 else [],
            error=JobError(type="ValueError", message="no") if status is JobStatus.FAILED else None,
        )
        job.set_fields(**fields)
        jobs.append(job)
    return jobs


def test_queue_counts_tell_queued_retrying_and_running(backend: str) -> None:
    queue = get_queue_backend()
    queue.enqueue_many([Job(func_name="a") for _ in range(3)])
    queue.enqueue(Job(func_name="a", attempts=1, status=JobStatus.RETRYING))
    claimed = queue.claim(2)
    assert len(claimed) == 2
    counts = queue.counts()
    assert counts["running"] == 2
    assert counts["queued"] + counts.get("retrying", 0) == 2
    if backend != "file":  # file names carry no attempt count; the key is left out
        assert counts["retrying"] in (0, 1) and counts["queued"] + counts["retrying"] == 2
    queue.ack([j.id for j in claimed])
    assert queue.counts()["running"] == 0


def test_peek_lists_waiting_jobs_without_claiming_them(backend: str) -> None:
    queue = get_queue_backend()
    jobs = [Job(func_name="a", created_at=1000.0 + i) for i in range(5)]
    queue.enqueue_many(jobs)
    assert [j.id for j in queue.peek(3)] == [j.id for j in jobs[:3]]
    assert len(queue.claim(10)) == 5  # nothing was claimed by peeking


def test_cancel_removes_a_waiting_job_and_records_it_as_cancelled(backend: str) -> None:
    queue = get_queue_backend()
    keep, drop = Job(func_name="a"), Job(func_name="a")
    queue.enqueue_many([keep, drop])
    record = sdk.cancel_job(drop.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error.type == "Cancelled"
    stored = get_result_backend().get_full(drop.id)
    assert stored is not None and stored.error is not None and stored.error.type == "Cancelled"
    assert [j.id for j in queue.claim(10)] == [keep.id]
    assert sdk.cancel_job(drop.id) is None  # no longer waiting


def test_cancel_of_a_claimed_job_asks_its_worker_and_takes_nothing_away(backend: str) -> None:
    queue = get_queue_backend()
    job = Job(func_name="a")
    queue.enqueue(job)
    assert [j.id for j in queue.claim(1)] == [job.id]
    asked = sdk.cancel_job(job.id)
    # Still claimed, no record: its worker ends it (Cancelled) once it sees the request,
    # on a store that records requests; on one that cannot, nothing happens at all.
    assert queue.get(job.id) is not None and get_result_backend().get_full(job.id) is None
    if asked is None:
        assert queue.cancel_requested([job.id]) == set()
    else:
        assert asked.status is JobStatus.RUNNING and queue.cancel_requested([job.id]) == {job.id}


def test_result_counts_by_status(backend: str) -> None:
    results = get_result_backend()
    results.store(finished(30))
    assert results.counts() == {"SUCCESS": 20, "FAILED": 10}
    # A record stored again with another status moves between the counts.
    again = finished(1)[0]
    results.store([again])
    again.set_fields(status=JobStatus.SUCCESS, error=None)
    results.store([again])
    assert results.counts() == {"SUCCESS": 21, "FAILED": 10}


def test_query_pages_newest_first_without_gaps_or_repeats(backend: str) -> None:
    results = get_result_backend()
    jobs = finished(120)
    results.store(jobs)
    seen: list[str] = []
    before = None
    while True:
        page = sdk.query_jobs(before=before, limit=25)
        seen.extend(j.id for j in page)
        if len(page) < 25:
            break
        before = (page[-1].finished_at or 0.0, page[-1].id)
    assert seen == [j.id for j in reversed(jobs)]


def test_query_filters_by_status_task_tag_and_time(backend: str) -> None:
    results = get_result_backend()
    jobs = finished(60)
    results.store(jobs)

    def ids(**filters: object) -> list[str]:
        return [j.id for j in sdk.query_jobs(limit=1000, **filters)]  # type: ignore[arg-type]

    newest = list(reversed(jobs))
    assert ids(status="FAILED") == [j.id for j in newest if j.status is JobStatus.FAILED]
    assert ids(task="add") == [j.id for j in newest if j.func_name == "add"]
    assert ids(tag="even") == [j.id for j in newest if "even" in j.tags]
    assert ids(status="FAILED", tag="even") == [
        j.id for j in newest if "even" in j.tags and j.status is JobStatus.FAILED
    ]
    assert ids(since=1_000_010.0, until=1_000_020.0) == [j.id for j in newest if 10 <= j.finished_at - 1e6 < 20]
    with pytest.raises(ValueError, match="finished jobs only"):
        sdk.query_jobs(status="PENDING")


def test_ties_on_the_finish_time_are_paged_by_id(backend: str) -> None:
    results = get_result_backend()
    same = [Job(func_name="a", status=JobStatus.SUCCESS, finished_at=5000.0) for _ in range(7)]
    results.store(same)
    first = sdk.query_jobs(limit=4)
    rest = sdk.query_jobs(before=(first[-1].finished_at or 0.0, first[-1].id), limit=10)
    assert sorted(j.id for j in first + rest) == sorted(j.id for j in same)
    assert len({j.id for j in first + rest}) == 7


def test_job_counts_merge_queue_and_results(backend: str) -> None:
    get_queue_backend().enqueue(Job(func_name="a"))
    get_result_backend().store(finished(3))
    counts = sdk.job_counts()
    assert counts["queued"] == 1 and counts["SUCCESS"] == 2 and counts["FAILED"] == 1


class _Minimal(BaseJobQueue):
    """A third-party queue that implements only the required methods."""

    def enqueue(self, job: Job) -> None: ...
    def claim(self, batch_size: int) -> list[Job]:
        return []

    def ack(self, job_ids: object) -> None: ...
    def requeue(self, jobs: object) -> None: ...
    def get(self, job_id: str) -> Job | None:
        return None

    def qsize(self) -> int:
        return 4

    def clear(self) -> int:
        return 0


class _MinimalResults(BaseResultBackend):
    def __init__(self, jobs: list[Job]) -> None:
        super().__init__()
        self.jobs = jobs

    def store(self, jobs: object) -> None: ...
    def get_full(self, job_id: str) -> Job | None:
        return None

    def list_jobs(self, status: object = None, limit: int = 100, task: str | None = None) -> list[Job]:
        out = sorted(self.jobs, key=lambda j: j.finished_at or 0.0, reverse=True)
        out = [j for j in out if (status is None or j.status is status) and (task is None or j.func_name == task)]
        return out[:limit]


def test_defaults_serve_backends_that_implement_only_the_required_methods() -> None:
    from nuvom.errors import BackendError

    queue = _Minimal()
    assert queue.counts() == {"queued": 4}
    assert queue.peek() == []
    with pytest.raises(BackendError, match="cannot cancel"):
        queue.cancel("abc")
    jobs = finished(300)
    results = _MinimalResults(jobs)
    assert results.counts() == {"SUCCESS": 200, "FAILED": 100}
    page = results.query(tag="even", limit=10, before=(jobs[-5].finished_at or 0.0, jobs[-5].id))
    assert [j.id for j in page] == [j.id for j in reversed(jobs[:-5]) if "even" in j.tags][:10]


@pytest.mark.skipif(not HAVE_SQLITE, reason="nuvom-sqlite is not installed")
def test_sqlite_counts_follow_writes_from_other_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    # The counts are cached until the file changes: a write by another
    # connection (another process, here another backend object) must show.
    from nuvom.sqlite import SQLiteResultBackend

    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "sqlite")
    reset_process_state()
    results = get_result_backend()
    assert isinstance(results, SQLiteResultBackend)
    assert results.counts() == {"SUCCESS": 0, "FAILED": 0}
    other = SQLiteResultBackend(path=results.path)
    other.store(finished(3))
    assert results.counts() == {"SUCCESS": 2, "FAILED": 1}
    results.store(finished(3, start=2_000_000.0))
    assert results.counts() == {"SUCCESS": 4, "FAILED": 2}
    other.close()
