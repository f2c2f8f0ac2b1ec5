"""The result backend on a real redis-server: records, history indexes, TTL, wait."""

from __future__ import annotations

import threading
import time

import pytest
from nuvom.app import App
from nuvom.config import Settings, load_settings
from nuvom.job import Job, JobError, JobStatus
from nuvom.redis import RedisResultBackend, RedisSettings

from .conftest import RedisServer


def done(i: int, status: JobStatus = JobStatus.SUCCESS, task: str = "record", at: float | None = None) -> Job:
    job = Job(func_name=task, args=[i], status=status, finished_at=at if at is not None else time.time() + i * 1e-3)
    if status is JobStatus.FAILED:
        job.error = JobError(type="RuntimeError", message=f"boom {i}")
    else:
        job.result = i
    return job


def test_store_and_read_back_every_field(results):
    job = done(1)
    job.attempts, job.worker_id, job.tags = 2, "host:1", ["a"]
    results.store([job])
    record = results.get_full(job.id)
    assert record == job
    assert results.get_result(job.id) == 1 and results.get_error(job.id) is None
    assert results.get_full("missing") is None


def test_list_jobs_newest_first_by_status_and_task(results):
    now = time.time()
    jobs = [
        done(i, JobStatus.FAILED if i % 3 == 0 else JobStatus.SUCCESS, "a" if i % 2 else "b", now + i)
        for i in range(30)
    ]
    results.store(jobs)
    newest = results.list_jobs(limit=5)
    assert [j.args[0] for j in newest] == [29, 28, 27, 26, 25]
    failed = results.list_jobs(status="failed", limit=4)
    assert [j.args[0] for j in failed] == [27, 24, 21, 18]
    by_task = results.list_jobs(task="a", limit=3)
    assert [j.args[0] for j in by_task] == [29, 27, 25]
    both = results.list_jobs(status=JobStatus.SUCCESS, task="b", limit=100)
    assert [j.args[0] for j in both] == [28, 26, 22, 20, 16, 14, 10, 8, 4, 2]
    assert results.count() == 30
    assert results.list_jobs(task="nope") == []


def test_a_replaced_record_moves_to_its_new_status(results):
    job = done(1, JobStatus.FAILED)
    results.store([job])
    job.status, job.error, job.result = JobStatus.SUCCESS, None, 5
    results.store([job])
    assert results.list_jobs(status="FAILED") == []
    assert [j.result for j in results.list_jobs(status="SUCCESS")] == [5]
    assert results.count() == 1


def test_results_expire_after_the_ttl_and_leave_no_index_entries(rsettings):
    results = RedisResultBackend(load_settings(), redis=rsettings, ttl_secs=0.5)
    old = [done(i) for i in range(5)]
    results.store(old)
    assert results.count() == 5
    assert results.client.pttl(results.key(old[0].id)) > 0
    # Wait for the server to expire the records (not a sleep for synchronisation:
    # the condition is what the test is about).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and results.client.exists(results.key(old[0].id)):
        time.sleep(0.05)
    fresh = done(99, at=time.time())
    results.store([fresh])
    listed = results.list_jobs(limit=10)
    assert [j.id for j in listed] == [fresh.id]
    # The read trimmed the indexes: no dangling ids stay behind.
    assert results.client.zcard(results._status_key("SUCCESS")) == 1
    assert results.client.zcard(results._task_key("SUCCESS", "record")) == 1
    assert results.count() == 1
    results.close()


def test_prune_removes_records_and_index_entries(results):
    old = [done(i, at=time.time() - 100) for i in range(3)]
    new = [done(i + 10) for i in range(2)]
    results.store(old + new)
    assert results.prune(older_than_secs=50) == 3
    assert results.count() == 2
    assert all(results.get_full(j.id) is None for j in old)
    assert results.client.zcard(results._task_key("SUCCESS", "record")) == 2


@pytest.fixture
def private_server(tmp_path):
    """A server of this test's own: its command count includes no other test's commands."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_wait_returns_within_milliseconds_of_the_store_and_costs_few_commands(private_server):
    server = private_server
    rsettings = RedisSettings(redis_url=server.url, redis_prefix="wait")
    results = RedisResultBackend(load_settings(), redis=rsettings)
    job = done(1)
    writer = RedisResultBackend(load_settings(), redis=rsettings)
    stored_at: list[float] = []

    def store_later() -> None:
        # Store once the waiter is blocked on its wake-up list.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(c.get("cmd") == "blpop" for c in writer.client.client_list()):
                break
            time.sleep(0.005)
        time.sleep(0.3)
        stored_at.append(time.perf_counter())
        writer.store([job])

    before = int(results.client.info("stats")["total_commands_processed"])
    t = threading.Thread(target=store_later)
    t.start()
    record = results.wait(job.id, timeout=10)
    woke = time.perf_counter()
    t.join()
    assert record is not None and record.id == job.id
    assert woke - stored_at[0] < 0.05
    used = int(results.client.info("stats")["total_commands_processed"]) - before
    # A polling waiter would have sent hundreds of commands in 0.3 s.
    assert used < 60
    assert not results.client.sismember(results.prefix + ":waiters", job.id)
    writer.close()
    results.close()


def test_waiting_for_a_job_already_stored_is_one_command(private_server):
    # The producer of a .delay() loop then get() of each finds most jobs done.
    results = RedisResultBackend(load_settings(), redis=RedisSettings(redis_url=private_server.url))
    job = done(1)
    results.store([job])
    results.client.config_resetstat()
    assert results.wait(job.id, timeout=1).id == job.id
    stats = results.client.info("commandstats")
    calls = {k: v["calls"] for k, v in stats.items() if not k.startswith("cmdstat_config")}
    assert calls == {"cmdstat_get": 1}, calls
    results.close()


def test_a_loop_of_get_over_finished_jobs_reads_them_with_a_few_mgets(private_server, monkeypatch, tmp_path):
    monkeypatch.setenv("NUVOM_REDIS_URL", private_server.url)
    app = App(Settings(queue_backend="redis", result_backend="redis", data_dir=tmp_path / "data"))
    echo = app.task(lambda x: x, name="echo")
    jobs = echo.map(range(500)) + [echo.delay(i) for i in range(500, 600)]
    # What a worker stores for them.
    app.results.store(
        [Job(id=j.id, func_name="echo", args=j.args, status=JobStatus.SUCCESS, result=j.args[0]) for j in jobs]
    )
    app.results.client.config_resetstat()
    assert [job.get(timeout=5) for job in jobs] == list(range(600))
    stats = app.results.client.info("commandstats")
    calls = {k: v["calls"] for k, v in stats.items() if not k.startswith("cmdstat_config")}
    # One read a batch (16, 32, ... 256 jobs), not one a job.
    assert calls.get("cmdstat_mget", 0) <= 8 and sum(calls.values()) <= 10, calls
    app.close()


def test_wait_times_out_with_none(results):
    t0 = time.monotonic()
    assert results.wait("never", timeout=0.3) is None
    assert 0.25 < time.monotonic() - t0 < 1.0
    assert not results.client.sismember(results.prefix + ":waiters", "never")


def test_list_jobs_is_fast_with_many_results(results):
    # 50,000 records: reading the newest 100 must not depend on the table's size.
    batch = []
    now = time.time()
    for i in range(50_000):
        batch.append(done(i, JobStatus.FAILED if i % 10 == 0 else JobStatus.SUCCESS, f"t{i % 7}", now + i * 1e-3))
        if len(batch) == 5000:
            results.store(batch)
            batch = []
    t0 = time.perf_counter()
    for status, task in ((None, None), ("FAILED", None), (None, "t3"), ("SUCCESS", "t3")):
        listed = results.list_jobs(status=status, task=task, limit=100)
        assert len(listed) == 100
        assert [j.finished_at for j in listed] == sorted((j.finished_at for j in listed), reverse=True)
    assert time.perf_counter() - t0 < 1.0
    assert results.count() == 50_000
