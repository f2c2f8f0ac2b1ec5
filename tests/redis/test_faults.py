"""The fault suite: killed and frozen workers, a killed and a stopped server,
killed producers. Each test audits every job: final, none lost, duplicates
counted and explained."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from nuvom.config import load_settings
from nuvom.errors import BackendError
from nuvom.job import JobStatus
from nuvom.redis import RedisJobQueue, RedisResultBackend, RedisSettings

from .conftest import Project, RedisServer, free_port, jobs_for, wait_until


def backends(url: str, prefix: str, **extra) -> tuple[RedisJobQueue, RedisResultBackend]:
    rs = RedisSettings(redis_url=url, redis_prefix=prefix, **extra)
    return RedisJobQueue(load_settings(), redis=rs), RedisResultBackend(load_settings(), redis=rs)


@pytest.fixture
def own_server(tmp_path: Path):
    """A server of this test's own: these tests stop and restart it."""
    servers: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", *extra).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(signal.SIGKILL)


def test_workers_killed_in_a_loop_under_load_lose_no_job(project, queue, results):
    keys = [f"k{i}" for i in range(1200)]
    lease = {"NUVOM_LEASE_SECS": "1", "NUVOM_BATCH_SIZE": "4"}
    # timeout 0.5 s: leases of max(1, 0.5 * 1.1 + 2) = 2.55 s.
    queue.enqueue_many(jobs_for("slow", keys, 0.03, timeout_secs=0.5))
    workers = project.start_workers(3, **lease)
    killed: set[str] = set()
    rng = random.Random(7)
    for _ in range(6):
        wait_until(lambda: len(project.run_lines()) > 0, 30, "work under way")
        victim = workers.pop(rng.randrange(len(workers)))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed.add(str(victim.pid))
        workers += project.start_workers(1, **lease)
    wait_until(lambda: results.count() == len(keys), 120, "every job recorded")
    project.stop()
    records = {r.args[0]: r for r in results.list_jobs(limit=5000)}
    assert set(records) == set(keys)  # none lost, every one final
    assert {r.status for r in records.values()} == {JobStatus.SUCCESS}
    assert queue.qsize() == 0 and queue.running() == 0
    runs = project.executions()
    by_key_pids: dict[str, set[str]] = {}
    for key, pid, _at in project.run_lines():
        by_key_pids.setdefault(key, set()).add(pid)
    duplicated = {k for k, n in runs.items() if n > 1}
    # Every duplicate is explained: a killed worker had started the job.
    assert all(by_key_pids[k] & killed for k in duplicated)
    assert all(records[k].attempts >= 2 for k in duplicated)
    print(f"{len(killed)} workers killed; {len(duplicated)} of {len(keys)} jobs ran twice (started by a killed worker)")


def test_a_frozen_worker_past_its_lease_cannot_record_the_job(project, queue, results):
    lease = {"NUVOM_LEASE_SECS": "1"}
    (frozen,) = project.start_workers(1, **lease)
    (job,) = jobs_for("slow", ["z"], 0.5, timeout_secs=1)  # lease 3.1 s
    queue.enqueue(job)
    wait_until(lambda: project.run_lines(), 30, "the job to start")
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        project.start_workers(1, **lease)
        record = wait_until(lambda: results.get_full(job.id), 30, "the job run by the other worker")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_until(lambda: "ignored" in project.stderr(), 30, "the zombie's completion to be refused")
    project.stop()
    final = results.get_full(job.id)
    assert final == record  # the zombie did not overwrite it
    assert final.status is JobStatus.SUCCESS and final.attempts == 2
    assert [a.outcome for a in final.history] == ["lost", "success"]
    assert project.executions()["z"] == 2
    assert queue.running() == 0 and queue.qsize() == 0


def test_a_killed_server_restarted_from_its_append_only_file_loses_nothing_acknowledged(tmp_path, own_server, prefix):
    server = own_server()
    queue, results = backends(server.url, prefix, redis_retry_secs=30)
    project = Project(tmp_path / "host", server.url, prefix)
    keys = [f"r{i}" for i in range(1500)]
    try:
        project.start_workers(2)
        queue.enqueue_many(jobs_for("slow", keys, 0.005, timeout_secs=5))
        wait_until(lambda: results.count() >= 300, 60, "300 results")
        acknowledged = {r.id for r in results.list_jobs(limit=5000)}
        server.stop(signal.SIGKILL)
        server.start()  # same port, same folder: the AOF is replayed
        assert {r.id for r in results.list_jobs(limit=5000)} >= acknowledged
        wait_until(lambda: results.count() == len(keys), 120, "every job recorded after the restart")
    finally:
        project.stop()
    records = {r.args[0]: r for r in results.list_jobs(limit=5000)}
    assert set(records) == set(keys)
    assert {r.status for r in records.values()} == {JobStatus.SUCCESS}
    assert queue.qsize() == 0 and queue.running() == 0
    runs = project.executions()
    assert set(runs) == set(keys)
    print(f"restart: {sum(1 for n in runs.values() if n > 1)} duplicate runs")
    for log in project.root.glob("worker-*.err"):
        text = log.read_text()
        assert text.count("lost the connection to Redis") == 1, text[-3000:]
        assert text.count("reconnected to Redis") == 1
    queue.close()
    results.close()


def test_a_server_stopped_for_five_seconds(tmp_path, own_server, prefix):
    server = own_server("--requirepass", "s3cret-pw")
    assert "s3cret-pw" in server.url
    queue, results = backends(server.url, prefix, redis_retry_secs=30)
    project = Project(tmp_path / "host", server.url, prefix)
    keys = [f"c{i}" for i in range(24)]
    try:
        project.start_workers(1, threads=4)
        queue.enqueue_many(jobs_for("slow", keys, 1.0, timeout_secs=5))
        wait_until(lambda: len(project.run_lines()) >= 4, 30, "jobs running")
        server.stop(signal.SIGTERM)
        down_at = time.time()
        # A producer gets a clear error after a bounded wait, password redacted.
        producer, _ = backends(server.url, prefix, redis_retry_secs=1)
        t0 = time.monotonic()
        with pytest.raises(BackendError) as err:
            producer.enqueue(jobs_for("record", ["late"])[0])
        assert time.monotonic() - t0 < 5
        message = str(err.value)
        assert "s3cret-pw" not in message and "***" in message and str(server.port) in message
        # The worker keeps running the jobs it holds while the server is away.
        wait_until(lambda: time.time() - down_at >= 5, 10, "five seconds down")
        up_at = time.time()
        server.start()
        wait_until(lambda: results.count() == len(keys), 60, "every job recorded")
        producer.close()
    finally:
        project.stop()
    started = [float(at) for _key, _pid, at in project.run_lines()]
    assert any(down_at < at < up_at for at in started) or len(started) >= len(keys)
    runs = project.executions()
    assert set(runs) == set(keys) and max(runs.values()) == 1  # nothing handed back or run twice
    log = project.stderr()
    assert log.count("lost the connection to Redis") == 1, log[-3000:]
    assert log.count("reconnected to Redis") == 1
    assert "s3cret-pw" not in log
    queue.close()
    results.close()


def test_a_producer_killed_mid_map_queues_all_or_nothing(project, queue):
    n = 60_000
    code = f"import tasks\ntasks.record.map([(f'p{{i}}',) for i in range({n})])\n"
    outcomes = []
    for delay in (0.2, 0.6, 1.0, 1.6):
        before = queue.qsize()
        producer = project.run_python(code)
        try:
            producer.wait(delay)
        except Exception:
            producer.kill()
        producer.wait()
        added = queue.qsize() - before
        assert added in (0, n), added
        outcomes.append(added)
    print("queued per killed producer:", outcomes)


def test_a_server_made_a_read_only_replica_and_back_loses_nothing_and_runs_each_job_once(tmp_path, own_server, prefix):
    # Redis's "read-only store": a replica refuses writes (READONLY). Nothing in
    # the client stays read-only: the worker's next write after REPLICAOF NO ONE works.
    server = own_server()
    queue, results = backends(server.url, prefix)
    project = Project(tmp_path / "host", server.url, prefix)
    keys = [f"ro{i}" for i in range(60)]
    admin = queue.client
    try:
        project.start_workers(1, threads=4)
        queue.enqueue_many(jobs_for("slow", keys, 0.05, timeout_secs=5))
        wait_until(lambda: len(project.run_lines()) >= 4, 30, "jobs running")
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
        wait_until(lambda: "storing finished jobs failed" in project.stderr(), 30, "the worker refused writes")
        admin.execute_command("REPLICAOF", "NO", "ONE")
        wait_until(lambda: results.count() == len(keys), 60, "every job recorded")
    finally:
        project.stop()
    records = results.list_jobs(limit=1000)
    assert {r.args[0] for r in records} == set(keys) and {r.status for r in records} == {JobStatus.SUCCESS}
    runs = project.executions()
    assert set(runs) == set(keys) and max(runs.values()) == 1
    log = project.stderr()
    assert log.count("storing finished jobs failed") == 1 and log.count("storing finished jobs works again") == 1, log
    queue.close()
    results.close()
