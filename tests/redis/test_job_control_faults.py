"""Unique jobs, fan-in and chains through SIGKILLed worker processes, and the
cancel of a running job from another process, on a real redis-server. Each
test audits every job: final, none lost, duplicates only from killed workers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from nuvom.job import Job, JobStatus
from nuvom.redis import RedisJobQueue, RedisResultBackend

from .conftest import Project, jobs_for, wait_until

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL and O_APPEND logs are POSIX")

# Leases of max(1, 2 * 1.1 + 2) = 4.2 s for the tasks of 2 s timeouts: a killed
# worker's jobs come back within seconds.
LEASE = {"NUVOM_LEASE_SECS": "1", "NUVOM_BATCH_SIZE": "4"}


def kill(project: Project, workers: list[subprocess.Popen[bytes]], killed: set[str], rng: random.Random) -> None:
    """SIGKILL one of ``workers`` and start another in its place."""
    victim = workers.pop(rng.randrange(len(workers)))
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed.add(str(victim.pid))
    workers += project.start_workers(1, threads=2, **LEASE)


def produce(project: Project, code: str, out: Path) -> subprocess.Popen[bytes]:
    """A producer process running ``code`` (``OUT``: the file it writes to)."""
    return project.run_python(f"OUT = {str(out)!r}\n{code}")


def healthy_duplicates(project: Project, killed: set[str]) -> dict[str, int]:
    """Runs beyond the first by workers that were not killed, per key: a job run
    twice must have been started by a killed worker."""
    healthy: Counter[str] = Counter()
    for key, pid, _at in project.run_lines():
        if pid not in killed:
            healthy[key] += 1
    runs = project.executions()
    return {k: n for k, n in runs.items() if n > 1 and healthy[k] > 1}


def queued_jobs(queue: RedisJobQueue) -> list[Job]:
    """Every job in the queue now (waiting, delayed, claimed), read in one command."""
    return [Job.from_bytes(payload) for payload in queue.client.hgetall(queue.key("payload")).values()]


UNIQUE_PRODUCER = """
import os, time
import tasks
with open(OUT, "a") as out:
    while not os.path.exists("stop"):
        for i in range(25):
            job = tasks.only_one.delay(f"u{i}", 0.05)
            out.write(f"u{i} {job.id}\\n")
        time.sleep(0.05)
"""


def test_racing_producers_keep_one_job_per_unique_key_while_workers_are_killed(
    project: Project, queue: RedisJobQueue, results: RedisResultBackend
) -> None:
    rng = random.Random(29)
    workers = project.start_workers(3, threads=2, **LEASE)
    outs = [project.root / f"ids-{n}.txt" for n in range(2)]
    producers = [produce(project, UNIQUE_PRODUCER, out) for out in outs]
    killed: set[str] = set()
    snapshots = 0
    next_kill = time.monotonic() + 0.5
    while len(killed) < 4:
        # Racing producers, claims, completions and recoveries: at no instant two
        # jobs of one key in the queue.
        holders = Counter(job.unique_key for job in queued_jobs(queue))
        assert max(holders.values(), default=0) <= 1, holders.most_common(3)
        snapshots += 1
        if time.monotonic() >= next_kill and project.run_lines():
            kill(project, workers, killed, rng)
            next_kill = time.monotonic() + 0.5
        time.sleep(0.005)
    (project.root / "stop").touch()
    assert all(p.wait(60) == 0 for p in producers)
    wait_until(lambda: queue.qsize() == 0 and queue.running() == 0, 120, "every unique job run")
    given: dict[str, set[str]] = defaultdict(set)
    for out in outs:
        for line in out.read_text().splitlines():
            key, job_id = line.split()
            given[key].add(job_id)
    assert len(given) == 25
    for key, ids in given.items():
        for job_id in ids:
            record = results.get_full(job_id)
            assert record is not None and record.status is JobStatus.SUCCESS and record.result == key, (key, record)
    assert queue.client.hlen(queue.key("unique")) == 0  # every key let go
    assert healthy_duplicates(project, killed) == {}
    print(f"{snapshots} snapshots; {sum(map(len, given.values()))} jobs for 25 keys from 2 producers")


FAN_IN_PRODUCER = """
import tasks
from nuvom.workflow import group
with open(OUT, "w") as out:
    for g in range(3):
        members = tasks.slow.map([(f"g{g}-m{i}", 0.1 + 0.06 * i) for i in range(10)])
        callback = group(members).then(tasks.gather, f"g{g}-cb")
        out.write(" ".join([callback.id, *[m.id for m in members]]) + "\\n")
"""


def test_a_fan_in_callback_runs_once_with_every_result_while_member_workers_are_killed(
    project: Project, queue: RedisJobQueue, results: RedisResultBackend
) -> None:
    rng = random.Random(7)
    workers = project.start_workers(3, threads=2, **LEASE)
    out = project.root / "groups.txt"
    assert produce(project, FAN_IN_PRODUCER, out).wait(60) == 0
    groups = [line.split() for line in out.read_text().splitlines()]
    killed: set[str] = set()

    def unfinished_members() -> int:
        # A callback is released only once all its members left the queue: while
        # every group has members left, no worker can be running a callback.
        return min(sum(1 for m in members if results.get_full(m) is None) for _cb, *members in groups)

    while len(killed) < 3 and unfinished_members() >= 3:
        wait_until(lambda: len(project.run_lines()) > 2 * len(killed), 30, "members running")
        if unfinished_members() >= 3:
            kill(project, workers, killed, rng)
    assert killed
    wait_until(lambda: queue.qsize() == 0 and queue.running() == 0, 120, "every group and callback done")
    runs = project.executions()
    for g, (callback, *members) in enumerate(groups):
        record = results.get_full(callback)
        assert record is not None and record.status is JobStatus.SUCCESS and record.attempts == 1
        assert record.result == [f"g{g}-m{i}" for i in range(10)]  # every result, in the group's order
        assert runs[f"g{g}-cb"] == 1
        assert all(results.get_full(m).status is JobStatus.SUCCESS for m in members)  # type: ignore[union-attr]
    assert healthy_duplicates(project, killed) == {}


CHAIN_PRODUCER = """
import tasks
with open(OUT, "w") as out:
    for c in range(15):
        first = tasks.slow.delay(f"c{c}-0", 0.15)
        second = first.then(tasks.link, f"c{c}-1", 0.15)
        third = second.then(tasks.link, f"c{c}-2", 0.15)
        out.write(f"{first.id} {second.id} {third.id}\\n")
"""


def test_chains_of_three_run_each_link_after_its_parent_through_killed_workers(
    project: Project, queue: RedisJobQueue, results: RedisResultBackend
) -> None:
    rng = random.Random(3)
    workers = project.start_workers(3, threads=2, **LEASE)
    out = project.root / "chains.txt"
    assert produce(project, CHAIN_PRODUCER, out).wait(60) == 0
    chains = [line.split() for line in out.read_text().splitlines()]
    killed: set[str] = set()
    for _ in range(4):
        wait_until(lambda: len(project.run_lines()) > 4 * (len(killed) + 1), 60, "links running")
        kill(project, workers, killed, rng)
    wait_until(lambda: queue.qsize() == 0 and queue.running() == 0, 120, "every chain done")
    starts: dict[str, float] = {}
    for key, _pid, at in project.run_lines():
        starts[key] = min(starts.get(key, float("inf")), float(at))
    for c, ids in enumerate(chains):
        records = [results.get_full(job_id) for job_id in ids]
        assert all(r is not None and r.status is JobStatus.SUCCESS for r in records), records
        assert records[2].result == f"c{c}-0>c{c}-1>c{c}-2"  # type: ignore[union-attr]
        for link in (1, 2):
            parent = records[link - 1]
            assert parent is not None and parent.finished_at is not None
            assert starts[f"c{c}-{link}"] >= parent.finished_at  # ran once its parent had succeeded
    assert healthy_duplicates(project, killed) == {}
    assert queue.client.exists(queue.key("blockers")) == 0  # nothing left waiting


def test_a_running_job_is_cancelled_from_another_process(
    project: Project, queue: RedisJobQueue, results: RedisResultBackend
) -> None:
    project.start_workers(1, threads=2)
    jobs = jobs_for("patient", ["thread"]) + jobs_for("dozing", ["async"])
    queue.enqueue_many(jobs)
    wait_until(lambda: {line[0] for line in project.run_lines()} >= {"thread", "async"}, 30, "both jobs running")
    for job in jobs:
        code = f"import sys\nfrom nuvom.sdk import cancel_job\nsys.exit(0 if cancel_job({job.id!r}) else 3)\n"
        assert project.run_python(code).wait(60) == 0
    for job in jobs:
        record = wait_until(lambda job=job: results.get_full(job.id), 30, f"the record of {job.id}")
        assert record.status is JobStatus.FAILED and record.error.type == "Cancelled" and record.attempts == 1
    assert "thread-saw-cancel" in project.executions()  # the thread task saw current_job().cancelled
    assert queue.qsize() == 0 and queue.running() == 0
    assert queue.client.scard(queue.key("cancel")) == 0  # the requests left with their jobs
