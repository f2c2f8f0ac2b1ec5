"""The file result backend: records, history through the index, corrupt
files, ids; and the SDK round trip on file backends."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from nuvom import sdk
from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import Settings, load_settings
from nuvom.errors import InvalidJobId, JobFailed
from nuvom.job import Job, JobError, JobStatus
from nuvom.task import task
from nuvom.worker import Worker


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


@pytest.fixture
def results(settings: Settings) -> FileResultBackend:
    return FileResultBackend(settings)


def finished(
    name: str = "add", status: JobStatus = JobStatus.SUCCESS, at: float | None = None, **fields: object
) -> Job:
    error = JobError(type="ValueError", message="bad") if status is JobStatus.FAILED else None
    return Job(func_name=name, status=status, finished_at=at or time.time(), error=error, **fields)  # type: ignore[arg-type]


def test_a_stored_job_reads_back_whole(results: FileResultBackend) -> None:
    job = finished(result={"sum": 3}, attempts=2, tags=["t"])
    results.store([job])
    record = results.get_full(job.id)
    assert record is not None and record.model_dump() == job.model_dump()
    assert results.get_result(job.id) == {"sum": 3}
    assert results.get_full("unknown") is None


def test_storing_again_replaces_the_record(results: FileResultBackend) -> None:
    job = finished(status=JobStatus.FAILED)
    results.store([job])
    job.status, job.error, job.result = JobStatus.SUCCESS, None, 1
    results.store([job])
    assert results.get_full(job.id).status is JobStatus.SUCCESS  # type: ignore[union-attr]
    assert results.count() == 1
    assert [j.id for j in results.list_jobs()] == [job.id]
    assert results.list_jobs(status="FAILED") == []


def test_history_is_newest_first_and_filtered(results: FileResultBackend) -> None:
    base = time.time() - 100
    jobs = [
        finished("a", JobStatus.SUCCESS, base + 1),
        finished("b", JobStatus.FAILED, base + 3),
        finished("a", JobStatus.FAILED, base + 2),
        finished("b", JobStatus.SUCCESS, base + 4),
    ]
    results.store(jobs[:2])
    results.store(jobs[2:])
    ids = [j.id for j in jobs]
    assert [j.id for j in results.list_jobs()] == [ids[3], ids[1], ids[2], ids[0]]
    assert [j.id for j in results.list_jobs(limit=2)] == [ids[3], ids[1]]
    assert [j.id for j in results.list_jobs(status=JobStatus.FAILED)] == [ids[1], ids[2]]
    assert [j.id for j in results.list_jobs(status="success", task="a")] == [ids[0]]
    assert results.list_jobs(task="nope") == []


def test_history_merges_what_several_processes_stored(settings: Settings) -> None:
    # Each backend instance writes an index segment of its own, as each process
    # does: here two instances stand for two processes.
    base = time.time() - 100
    one, two = FileResultBackend(settings), FileResultBackend(settings)
    old, new, newest = finished(at=base), finished(at=base + 1), finished(at=base + 2)
    one.store([old])
    two.store([new])
    one.store([newest])
    assert len(os.listdir(Path(one.root, "index"))) == 2
    assert [j.id for j in FileResultBackend(settings).list_jobs()] == [newest.id, new.id, old.id]


def test_history_reads_only_the_records_it_returns(results: FileResultBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    base = time.time() - 10_000
    for start in range(0, 3000, 500):
        results.store([finished(at=base + i) for i in range(start, start + 500)])
    reads: list[str] = []
    original = results.get_full

    def counting(job_id: str) -> Job | None:
        reads.append(job_id)
        return original(job_id)

    monkeypatch.setattr(results, "get_full", counting)
    newest = results.list_jobs(limit=10)
    assert [j.finished_at for j in newest] == [base + i for i in range(2999, 2989, -1)]
    assert len(reads) == 10


def test_history_is_rebuilt_when_the_index_is_gone(results: FileResultBackend, settings: Settings) -> None:
    jobs = [finished(at=time.time() - 10 + i) for i in range(3)]
    results.store(jobs)
    results.close()
    shutil.rmtree(Path(results.root, "index"))
    fresh = FileResultBackend(settings)
    assert [j.id for j in fresh.list_jobs()] == [j.id for j in reversed(jobs)]


def test_a_torn_index_line_is_skipped(results: FileResultBackend) -> None:
    job = finished()
    results.store([job])
    [segment] = Path(results.root, "index").iterdir()
    with segment.open("ab") as f:
        f.write(b"123\tnot a line\n1700000000\t17")  # garbage, then half a line
    assert [j.id for j in results.list_jobs()] == [job.id]


def test_a_corrupt_result_file_is_quarantined(results: FileResultBackend, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = finished(), finished()
    results.store([good, bad])
    Path(results.jobs_dir, f"{bad.id}.msgpack").write_bytes(b"\x92\x01")  # msgpack, but not a job
    with caplog.at_level(logging.WARNING, logger="nuvom.backends.file"):
        assert results.get_full(bad.id) is None
        assert [j.id for j in results.list_jobs()] == [good.id]
    assert os.listdir(Path(results.root, "corrupt")) == [f"jobs-{bad.id}.msgpack.corrupt"]
    assert "quarantined" in caplog.text


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "..", "a\\b", "/etc/passwd", ""])
def test_path_like_ids_raise_invalid_job_id(results: FileResultBackend, job_id: str) -> None:
    with pytest.raises(InvalidJobId):
        results.get_full(job_id)
    with pytest.raises(InvalidJobId):
        results.store([finished(id=job_id)])
    with pytest.raises(InvalidJobId):
        sdk.get_job(job_id)


def test_file_backends_are_registered_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "file")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "file")
    assert isinstance(get_queue_backend(), FileJobQueue)
    assert isinstance(get_result_backend(), FileResultBackend)


@task(name="file_results_add")
def add(x: int, y: int) -> int:
    return x + y


@task(name="file_results_explode")
def explode() -> None:
    raise ValueError("boom")


def test_job_get_sdk_get_job_and_list_jobs_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "file")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "file")
    job = add.delay(2, 3)
    pending = sdk.get_job(job.id)
    assert pending is not None and pending.status is JobStatus.PENDING
    assert sdk.queue_size() == 1
    failing = explode.delay()
    with Worker(max_workers=2):
        assert job.get(timeout=10) == 5
        with pytest.raises(JobFailed, match="boom"):
            failing.get(timeout=10)
    record = sdk.get_job(job.id)
    assert record is not None and record.status is JobStatus.SUCCESS and record.result == 5 and record.attempts == 1
    assert [j.id for j in sdk.list_jobs(status="FAILED")] == [failing.id]
    assert {j.id for j in sdk.list_jobs(limit=10)} == {job.id, failing.id}
    assert sdk.queue_size() == 0
