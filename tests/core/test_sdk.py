from __future__ import annotations

import pytest
from nuvom.errors import InvalidJobId, JobFailed
from nuvom.job import JobStatus
from nuvom.plugins.contracts import BaseJobQueue
from nuvom.sdk import get_job, list_jobs, queue_size, retry_job
from nuvom.task import task
from nuvom.worker import Worker

ATTEMPTS: dict[str, int] = {}


@task
def sdk_add(x, y):
    return x + y


@task
def fails_first_time(key):
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] == 1:
        raise RuntimeError("first run fails")
    return "fine"


def test_get_job_reads_queued_then_finished_records(mem):
    job = sdk_add.delay(1, 2)
    assert get_job(job.id).status is JobStatus.PENDING and queue_size() == 1
    with Worker(max_workers=1):
        job.get(timeout=5)
    record = get_job(job.id)
    assert record.status is JobStatus.SUCCESS and record.result == 3 and record.attempts == 1
    assert record.started_at <= record.finished_at and record.worker_id


def test_unknown_and_malformed_ids(mem):
    assert get_job("0" * 32) is None
    for bad in ("../../etc/passwd", "a/b", "", "x" * 65, "id with space"):
        with pytest.raises(InvalidJobId):
            get_job(bad)


def test_retry_job_requeues_a_failed_job_as_a_new_one(mem, request):
    key = request.node.nodeid
    with Worker(max_workers=1):
        job = fails_first_time.delay(key)
        with pytest.raises(JobFailed):
            job.get(timeout=5)
        again = retry_job(job.id)
        assert again.id != job.id and again.retry_of == job.id
        assert again.get(timeout=5) == "fine"
    assert retry_job("f" * 32) is None
    with pytest.raises(ValueError, match="not FAILED"):
        retry_job(again.id)


def test_list_jobs_newest_first_with_filters(mem, request):
    key = request.node.nodeid
    with Worker(max_workers=1):
        jobs = [sdk_add.delay(i, 0) for i in range(5)]
        for j in jobs:
            j.get(timeout=5)
        failed = fails_first_time.delay(key)
        with pytest.raises(JobFailed):
            failed.get(timeout=5)
    newest = list_jobs(limit=3)
    assert [j.id for j in newest] == [failed.id, jobs[4].id, jobs[3].id]
    assert [j.id for j in list_jobs(status="failed")] == [failed.id]
    assert len(list_jobs(task="sdk_add", limit=100)) == 5
    with pytest.raises(ValueError, match="finished jobs only"):
        list_jobs(status="PENDING")
    with pytest.raises(ValueError, match="unknown status"):
        list_jobs(status="DONE")


def test_retry_job_twice_queues_one_retry_as_nuvom_retry_job_does(mem, request):
    # As the earlier nuvom's users wrote it (README, FAQ): retry_job("<job_id>"), run again.
    queue, _ = mem
    key = request.node.nodeid
    with Worker(max_workers=1):
        job = fails_first_time.delay(key)
        with pytest.raises(JobFailed):
            job.get(timeout=5)
    first = retry_job(job.id)
    second = retry_job(job.id)
    assert first is not None and second is not None
    assert second.id == first.id and queue.qsize() == 1  # the earlier retry stands in
    forced = retry_job(job.id, force=True)
    assert forced is not None and forced.id != first.id and forced.retry_of == job.id
    assert queue.qsize() == 2
    with Worker(max_workers=1):
        assert first.get(timeout=5) == "fine"
    assert retry_job(job.id).id in (first.id, forced.id)  # a finished retry is found too


# -- named queues and workflows (issue 29) --------------------------------------------
def test_queue_counts_are_by_named_queue_with_waiting_jobs_counted_as_queued(mem):
    from nuvom.sdk import queue_counts

    first = sdk_add.with_options(queue="emails").delay(1, 1)
    first.then(sdk_add, 2)  # WAITING in "default" until `first` finishes
    sdk_add.with_options(queue="emails", priority=9).delay(2, 2)
    counts = queue_counts()
    assert counts["emails"] == {"queued": 2, "retrying": 0, "running": 0}
    assert counts["default"] == {"queued": 1, "retrying": 0, "running": 0}


def test_dependents_are_the_jobs_still_waiting_for_a_job(mem):
    from nuvom.sdk import dependents

    first = sdk_add.delay(1, 2)
    then = first.then(sdk_add, 10)
    assert dependents(first.id) == [then.id] and dependents(then.id) == []
    with Worker(max_workers=1):
        assert then.get(timeout=10) == 13
    assert dependents(first.id) == []  # released: the child's record names its parent instead
    assert get_job(then.id).flow.parents == [first.id]
    with pytest.raises(InvalidJobId):
        dependents("../x")


def test_cancels_running_jobs_says_whether_the_store_records_cancel_requests(mem):
    from nuvom.backends import set_backends
    from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
    from nuvom.sdk import cancels_running_jobs

    assert cancels_running_jobs() is True  # the memory store keeps them

    class WithoutRequests(MemoryJobQueue):
        request_cancel = BaseJobQueue.request_cancel  # the contract's default: records nothing

    set_backends(WithoutRequests(), MemoryResultBackend())
    assert cancels_running_jobs() is False


def test_a_retry_goes_to_the_failed_jobs_queue_with_its_priority(mem, request):
    key = request.node.nodeid
    with Worker(max_workers=1, queues=["emails"]):
        job = fails_first_time.with_options(queue="emails", priority=4).delay(key)
        with pytest.raises(JobFailed):
            job.get(timeout=5)
        again = retry_job(job.id)
        assert (again.queue, again.priority) == ("emails", 4)
        assert again.get(timeout=5) == "fine"  # run by the worker of "emails"
