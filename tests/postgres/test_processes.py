"""Real worker processes on a real PostgreSQL, sharing nothing but the URL and schema."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

from nuvom.job import JobStatus

from .conftest import Project, jobs_for, wait_until


def test_three_workers_run_1500_jobs_each_exactly_once(project, queue, results):
    keys = [f"j{i}" for i in range(1500)]
    # Workers first: the check that work is shared must not race their start-up.
    project.start_workers(3)
    queue.enqueue_many(jobs_for("record", keys))
    wait_until(lambda: results.count() == 1500, 120, "1500 results")
    project.stop()
    runs = project.executions()
    assert set(runs) == set(keys)
    assert max(runs.values()) == 1, [k for k, n in runs.items() if n > 1][:10]
    assert {j.status for j in results.list_jobs(limit=5000)} == {JobStatus.SUCCESS}
    assert queue.qsize() == 0 and queue.running() == 0
    assert len({line[1] for line in project.run_lines()}) == 3  # work was shared


def test_workers_on_several_hosts_share_one_queue_through_the_url_alone(tmp_path, pg_server, schema, results):
    runs = tmp_path / "runs.log"
    hosts = [Project(tmp_path / f"host{i}", pg_server.url(), schema, runs=runs) for i in range(2)]
    try:
        for host in hosts:
            host.start_workers(1)
        producer = hosts[0].run_python("import tasks\ntasks.record.map([(f'h{i}',) for i in range(600)])\n")
        assert producer.wait(60) == 0
        wait_until(lambda: results.count() == 600, 60, "600 results")
    finally:
        for host in hosts:
            host.stop()
    by_pid: dict[str, int] = defaultdict(int)
    for _key, pid, _at in hosts[0].run_lines():
        by_pid[pid] += 1
    assert sum(by_pid.values()) == 600 and len(by_pid) == 2


def test_a_producer_enqueuing_while_workers_drain_loses_nothing(project, queue, results):
    project.start_workers(2)
    producer = project.run_python(
        "import tasks\n"
        "for i in range(300):\n"
        "    tasks.record.delay(f'p{i}')\n"
        "tasks.record.map([(f'm{i}',) for i in range(300)])\n"
    )
    queue.enqueue_many(jobs_for("record", [f"t{i}" for i in range(300)]))
    assert producer.wait(60) == 0
    wait_until(lambda: results.count() == 900, 120, "900 results")
    project.stop()
    runs = project.executions()
    assert len(runs) == 900 and set(runs.values()) == {1}


def test_a_killed_worker_jobs_are_run_by_another_after_the_lease(project, queue, results):
    keys = [f"s{i}" for i in range(40)]
    queue.enqueue_many(jobs_for("slow", keys, 0.5, timeout_secs=1))
    lease = {"NUVOM_LEASE_SECS": "1", "NUVOM_BATCH_SIZE": "8"}
    (victim,) = project.start_workers(1, **lease)
    wait_until(lambda: len(project.run_lines()) >= 4, 30, "the first worker to start its jobs")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    held = {line[0] for line in project.run_lines() if line[1] == str(victim.pid)}
    still_claimed = queue.running()
    assert still_claimed > 0
    project.start_workers(2, **lease)
    wait_until(lambda: results.count() == 40, 60, "40 results")
    project.stop()
    records = {r.args[0]: r for r in results.list_jobs(limit=100)}
    assert set(records) == set(keys)
    assert {r.status for r in records.values()} == {JobStatus.SUCCESS}
    runs = project.executions()
    duplicated = {k for k, n in runs.items() if n > 1}
    assert duplicated <= held
    # Only the claims the victim had started count: each is one run lost with it
    # (and run again); the jobs it held in its buffer were handed back uncounted.
    reclaimed = {k for k, r in records.items() if r.attempts > 1}
    assert reclaimed == duplicated and 0 < len(reclaimed) <= still_claimed
    assert all([a.outcome for a in records[k].history] == ["lost", "success"] for k in reclaimed)


def test_retries_with_delays_run_across_processes_and_wait_their_delay(project, queue, results):
    keys = [f"f{i}" for i in range(20)]
    retry = {"max_retries": 3, "retry_delay_secs": 0.3}
    queue.enqueue_many(jobs_for("flaky", keys, 2, **retry))
    queue.enqueue_many(jobs_for("flaky", ["hopeless"], 10, **retry))
    project.start_workers(2)
    wait_until(lambda: results.count() == 21, 60, "21 results")
    project.stop()
    by_key = {r.args[0]: r for r in results.list_jobs(limit=100)}
    for key in keys:
        record = by_key[key]
        assert record.status is JobStatus.SUCCESS and record.result == 3 and record.attempts == 3
        assert [a.outcome for a in record.history] == ["error", "error", "success"]
    hopeless = by_key["hopeless"]
    assert hopeless.status is JobStatus.FAILED and hopeless.attempts == 4
    starts: dict[str, list[float]] = defaultdict(list)
    for key, _pid, at in project.run_lines():
        starts[key].append(float(at))
    for key in keys:
        gaps = [b - a for a, b in zip(starts[key], starts[key][1:])]
        assert len(gaps) == 2 and min(gaps) >= 0.3 - 0.01, (key, gaps)


def test_a_worker_stopped_gracefully_hands_back_what_it_had_not_started(project, queue, results):
    keys = [f"g{i}" for i in range(30)]
    queue.enqueue_many(jobs_for("slow", keys, 0.3, timeout_secs=2))
    (worker,) = project.start_workers(1, threads=2, NUVOM_BATCH_SIZE="16")
    wait_until(lambda: len(project.run_lines()) >= 2, 30, "jobs started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert queue.running() == 0  # nothing left claimed: no lease to wait for
    project.start_workers(1)
    wait_until(lambda: results.count() == 30, 60, "30 results")
    runs = project.executions()
    assert set(runs) == set(keys) and max(runs.values()) == 1
    assert all(r.attempts == 1 for r in results.list_jobs(limit=100))


def test_an_idle_worker_is_woken_by_a_new_job_not_by_its_poll(project, queue, results):
    project.start_workers(1)
    latencies = []
    for i in range(30):
        (job,) = jobs_for("record", [f"l{i}"])
        t0 = time.time()
        queue.enqueue(job)
        record = results.wait(job.id, timeout=10)
        assert record is not None
        latencies.append(record.started_at - t0)
    latencies.sort()
    # Woken by the queue's notification, not its 2 s safety poll (which would put the
    # median near 1 s). The speed itself (p50 under 5 ms) is bench/bench_postgres.py's.
    assert latencies[len(latencies) // 2] < 0.25, latencies
