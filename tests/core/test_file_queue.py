"""The file queue in one process: claiming, leases, delays, corrupt files, ids."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from nuvom import job as job_module
from nuvom.backends.file import FileJobQueue
from nuvom.config import Settings, load_settings
from nuvom.errors import InvalidJobId
from nuvom.job import Job, JobStatus


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


@pytest.fixture
def queue(settings: Settings) -> FileJobQueue:
    return FileJobQueue(settings)


def make(name: str = "add", **fields: object) -> Job:
    return Job(func_name=name, **fields)  # type: ignore[arg-type]


def queue_files(queue: FileJobQueue) -> list[str]:
    return sorted(os.listdir(queue.queue_dir))


def test_jobs_are_claimed_in_fifo_order(queue: FileJobQueue) -> None:
    jobs = [make(args=[i]) for i in range(5)]
    queue.enqueue_many(jobs)
    claimed = queue.claim(3) + queue.claim(10)
    assert [j.id for j in claimed] == [j.id for j in jobs]


def test_a_claim_marks_running_and_counts_an_attempt(queue: FileJobQueue) -> None:
    job = make()
    queue.enqueue(job)
    [claimed] = queue.claim(1)
    assert claimed.status is JobStatus.RUNNING
    assert claimed.attempts == 1
    stored = queue.get(job.id)
    # In storage the attempt counts once it starts (a claim that never starts is undone).
    assert stored is not None and stored.status is JobStatus.RUNNING and stored.attempts == 0
    assert queue.mark_started(claimed)
    stored = queue.get(job.id)
    assert stored is not None and stored.status is JobStatus.RUNNING and stored.attempts == 1


def test_claimed_jobs_are_invisible_to_other_claimers(settings: Settings) -> None:
    first, second = FileJobQueue(settings), FileJobQueue(settings)
    first.enqueue_many([make() for _ in range(4)])
    a = first.claim(2)
    b = second.claim(10)
    assert len(a) == 2 and len(b) == 2
    assert not {j.id for j in a} & {j.id for j in b}
    assert first.claim(10) == [] and second.claim(10) == []


def test_ack_removes_the_claimed_job(queue: FileJobQueue) -> None:
    job = make()
    queue.enqueue(job)
    queue.claim(1)
    queue.ack([job.id, "unknown-id"])
    assert queue.get(job.id) is None
    assert os.listdir(queue.claimed_dir) == []


def test_requeue_puts_the_job_back_as_given(queue: FileJobQueue) -> None:
    job = make()
    queue.enqueue(job)
    [claimed] = queue.claim(1)
    claimed.status = JobStatus.RETRYING
    claimed.tags = ["changed"]
    queue.requeue([claimed])
    assert os.listdir(queue.claimed_dir) == []
    back = queue.get(job.id)
    assert back is not None and back.status is JobStatus.RETRYING and back.attempts == 1 and back.tags == ["changed"]
    [again] = queue.claim(1)
    assert again.attempts == 2


def test_delayed_jobs_are_not_claimed_before_they_are_due(queue: FileJobQueue) -> None:
    due_in = 0.4
    later = make(not_before=time.time() + due_in)
    now = make()
    queue.enqueue_many([later, now])
    started = time.monotonic()
    assert [j.id for j in queue.claim(10)] == [now.id]
    assert queue.qsize() == 1
    [claimed] = queue.pop_batch(10, timeout=5)
    assert claimed.id == later.id
    assert time.monotonic() - started >= due_in - 0.05


def test_a_retry_due_earlier_goes_before_later_jobs(queue: FileJobQueue) -> None:
    old = make(not_before=time.time() - 60)
    queue.enqueue(make())
    queue.enqueue(old)
    assert queue.claim(1)[0].id == old.id


def test_an_expired_claim_is_claimed_again_by_another_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(job_module, "LEASE_MARGIN_SECS", 0.0)
    short = settings.model_copy(update={"lease_secs": 0.2, "job_timeout_secs": 0.2})
    dead, alive = FileJobQueue(short), FileJobQueue(short)
    job = make()
    dead.enqueue(job)
    [claimed] = dead.claim(1)
    assert dead.mark_started(claimed)  # and then its process "dies": no ack, no renewal
    assert alive.claim(1) == []  # the lease still holds
    with caplog.at_level(logging.WARNING, logger="nuvom.backends.file"):
        [again] = alive.pop_batch(1, timeout=5)
    assert again.id == job.id and again.attempts == 2
    assert again.mark_lost_runs(time.time()) == 1
    assert "claim expired" in caplog.text


def test_an_expired_claim_that_never_started_is_handed_back_without_counting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "LEASE_MARGIN_SECS", 0.0)
    short = settings.model_copy(update={"lease_secs": 0.2, "job_timeout_secs": 0.2})
    job = make()
    FileJobQueue(short).enqueue(job)
    for _ in range(5):  # five workers claim it and die before starting it
        [claimed] = FileJobQueue(short).pop_batch(1, timeout=5)
        assert claimed.id == job.id and claimed.attempts == 1
    again = FileJobQueue(short)
    [claimed] = again.pop_batch(1, timeout=5)
    assert claimed.attempts == 1 and claimed.mark_lost_runs(time.time()) == 0 and claimed.history == []


def test_a_start_mark_renews_the_lease_from_the_start_and_is_fenced_by_the_claim(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "LEASE_MARGIN_SECS", 0.0)
    short = settings.model_copy(update={"lease_secs": 0.2, "job_timeout_secs": 0.2})
    mine, other = FileJobQueue(short), FileJobQueue(short)
    mine.enqueue_many([make(timeout_secs=600), make()])
    long_one, short_one = mine.claim(2)
    time.sleep(0.3)  # the short claim's lease runs out while it waits in this worker
    [taken] = other.claim(10)
    assert taken.id == short_one.id and taken.attempts == 1
    assert not mine.mark_started(short_one)  # lost: it must not run here
    assert other.mark_started(taken)
    before = time.time_ns()
    assert mine.mark_started(long_one)
    [name] = [n for n in os.listdir(mine.claimed_dir) if long_one.id in n]
    assert int(name[:20]) - before >= 600 * 1.1 * 1e9 - 1e9  # the job's own lease, from its start


def test_renewed_leases_keep_other_claimers_off(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_module, "LEASE_MARGIN_SECS", 0.0)
    short = settings.model_copy(update={"lease_secs": 0.3, "job_timeout_secs": 0.3})
    owner, other = FileJobQueue(short), FileJobQueue(short)
    owner.enqueue(make())
    [job] = owner.claim(1)
    deadline = time.monotonic() + 1.0  # more than three leases
    while time.monotonic() < deadline:
        owner.extend_leases([job.id])
        assert other.pop_batch(1, timeout=0.1) == []
    owner.ack([job.id])
    assert os.listdir(owner.claimed_dir) == []


def test_a_long_timeout_gets_a_longer_lease(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_module, "LEASE_MARGIN_SECS", 0.0)
    short = settings.model_copy(update={"lease_secs": 0.1, "job_timeout_secs": 0.1})
    owner, other = FileJobQueue(short), FileJobQueue(short)
    owner.enqueue(make(timeout_secs=60))
    assert len(owner.claim(1)) == 1
    [name] = os.listdir(owner.claimed_dir)
    assert int(name[:20]) - time.time_ns() > 50 * 10**9
    assert other.pop_batch(1, timeout=0.3) == []


def test_get_qsize_and_clear(queue: FileJobQueue) -> None:
    jobs = [make() for _ in range(3)]
    queue.enqueue_many(jobs)
    queue.claim(1)
    assert queue.qsize() == 2
    assert queue.get(jobs[2].id) is not None
    assert queue.get("no-such-job") is None
    assert queue.clear() == 2
    assert queue.qsize() == 0
    assert queue.get(jobs[0].id) is not None  # claimed jobs are kept


def test_a_corrupt_file_is_quarantined_and_does_not_block_the_jobs_behind_it(
    queue: FileJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    good = make(created_at=time.time())
    bad_name = f"{time.time_ns() - 10**9:020d}-00000000-deadbeef.msgpack"  # due first
    Path(queue.queue_dir, bad_name).write_bytes(b"\xc1 not msgpack")
    queue.enqueue(good)
    with caplog.at_level(logging.WARNING, logger="nuvom.backends.file"):
        claimed = queue.claim(10)
    assert [j.id for j in claimed] == [good.id]
    assert os.listdir(queue.corrupt_dir) == [f"queue-{bad_name}.corrupt"]
    assert "quarantined" in caplog.text and "deadbeef" in caplog.text


def test_a_truncated_file_is_quarantined(queue: FileJobQueue) -> None:
    job = make(args=["x" * 200])
    queue.enqueue(job)
    [name] = queue_files(queue)
    path = Path(queue.queue_dir, name)
    path.write_bytes(path.read_bytes()[:50])
    queue.enqueue(make())
    assert len(queue.claim(10)) == 1
    assert len(os.listdir(queue.corrupt_dir)) == 1


def test_a_file_holding_another_job_than_its_name_says_is_quarantined(queue: FileJobQueue) -> None:
    job = make()
    queue.enqueue(job)
    [name] = queue_files(queue)
    os.replace(Path(queue.queue_dir, name), Path(queue.queue_dir, name.replace(job.id, "other-id")))
    assert queue.claim(10) == []
    assert len(os.listdir(queue.corrupt_dir)) == 1


def test_a_badly_named_file_is_quarantined(queue: FileJobQueue) -> None:
    Path(queue.queue_dir, "garbage.msgpack").write_bytes(b"")
    Path(queue.queue_dir, "notes.txt").write_text("not a job file")
    job = make()
    queue.enqueue(job)
    assert [j.id for j in queue.claim(10)] == [job.id]
    assert os.listdir(queue.corrupt_dir) == ["queue-garbage.msgpack.corrupt"]
    assert "notes.txt" in os.listdir(queue.queue_dir)


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "a/b", "..", "", "x" * 65, "id with space"])
def test_path_like_ids_are_refused_before_touching_a_path(queue: FileJobQueue, job_id: str) -> None:
    with pytest.raises(InvalidJobId):
        queue.get(job_id)
    with pytest.raises(InvalidJobId):
        queue.enqueue(make(id=job_id))
    assert queue_files(queue) == []


def test_stale_temporary_files_are_swept_at_start(settings: Settings) -> None:
    tmp = Path(os.path.abspath(settings.data_dir), "tmp")
    tmp.mkdir(parents=True)
    stale, fresh = tmp / "1-dead-0.tmp", tmp / "2-live-0.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    FileJobQueue(settings)
    assert not stale.exists() and fresh.exists()
