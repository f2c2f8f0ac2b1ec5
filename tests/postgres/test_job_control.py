"""Job control and workflows (issue 29) on a real PostgreSQL server: the shared
checks of tests/scenarios/job_control.py, each on an app of its own schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nuvom.app import App
from nuvom.config import Settings, load_settings
from nuvom.job import DEFAULT_QUEUE, Flow, Job, JobStatus
from nuvom.postgres import PostgresJobQueue
from nuvom.postgres._schema import _MIGRATIONS, SCHEMA_VERSION

from .conftest import wait_until

sys.path.insert(0, str(Path(__file__).parents[1]))
from scenarios import job_control


@pytest.fixture
def app(pg_env: dict[str, str], tmp_path: Path) -> Iterator[App]:
    app = App(Settings(queue_backend="postgres", result_backend="postgres", data_dir=tmp_path / "store"))
    assert type(app.queue).__name__ == "PostgresJobQueue"
    yield app
    app.close()


@pytest.mark.parametrize("check", job_control.CHECKS, ids=job_control.check_id)
def test_job_control_on_the_postgres_store(app: App, check) -> None:
    check(app)


# -- the store's own steps --------------------------------------------------------
def make(n: int, **fields: Any) -> list[Job]:
    return [Job(func_name="record", args=[f"k{i}"], **fields) for i in range(n)]


def sql(queue: PostgresJobQueue, statement: str, params: Any = ()) -> list[Any]:
    return queue.db.run("a test", lambda c: c.execute(statement.replace("{q}", queue.sql.queue), params).fetchall())


def finish(jobs: list[Job]) -> list[Job]:
    now = time.time()
    for job in jobs:
        job.status, job.result, job.started_at, job.finished_at = JobStatus.SUCCESS, job.args[0], now, now
    return jobs


def claim(queue: PostgresJobQueue, limit: int, queues: tuple[str, ...] = (DEFAULT_QUEUE,)) -> list[Job]:
    return queue.claim_batch(limit, 0, lambda: 0, queues)


def test_claims_take_the_first_queue_first_then_higher_priority_then_due_order(queue):
    low = make(2, queue="emails")
    high = make(2, queue="emails", priority=5)
    other = make(3, queue="reports")
    queue.enqueue_many(low)
    queue.enqueue_many(other)
    queue.enqueue_many(high)
    queue.enqueue_many(make(2))  # default: not served below
    got = claim(queue, 5, ("emails", "reports"))
    assert [j.id for j in got] == [j.id for j in (*high, *low, other[0])]
    assert queue.queue_counts() == {
        "default": {"queued": 2, "retrying": 0, "running": 0},
        "emails": {"queued": 0, "retrying": 0, "running": 4},
        "reports": {"queued": 2, "retrying": 0, "running": 1},
    }
    assert queue.counts() == {"queued": 4, "retrying": 0, "running": 5}
    assert [j.queue for j in queue.claim(10)] == ["default", "default"]  # claim() serves default


def claim_plan(queue: PostgresJobQueue, queue_name: str) -> str:
    """The plan of the claim statement as a worker's connection runs it: a
    generic plan (the pool forces them), executed in a transaction rolled back."""
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    statement = re.sub(r"%\((\w+)\)s", positional, queue._claim_sql)
    values = {"n": 10, "start": 0, "token": 1, "by": "'t'", "queue": f"'{queue_name}'", "due_slack": "0"}

    def run(conn: psycopg.Connection[Any]) -> list[Any]:
        conn.execute("BEGIN")
        try:
            conn.execute("PREPARE claim_plan AS " + statement)  # type: ignore[arg-type]
            args = ", ".join(str(values[name]) for name in names)
            return conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE claim_plan({args})").fetchall()  # type: ignore[arg-type]
        finally:
            conn.execute("ROLLBACK")

    return "\n".join(row[0] for row in queue.db.run("a test", run))


def test_a_claim_reads_each_priority_as_a_range_of_its_queues_index(queue):
    """Within a queue and a priority the due rows are a range of the claim
    index, left at the first row not due: delayed and running rows behind them
    are not read, whatever the planner knew of the table when it planned."""
    queue.enqueue_many(make(300, queue="emails", not_before=time.time() + 3600))
    due = make(5, queue="emails") + make(3, queue="emails", priority=3)
    queue.enqueue_many(due)
    queue.db.run("a test", lambda c: c.execute(f"ANALYZE {queue.sql.queue}"))
    plan = claim_plan(queue, "emails")
    assert "Seq Scan" not in plan and "JIT" not in plan, plan
    scans = re.findall(r"Index Scan using nuvom_queue_claim.*\n\s+Index Cond: \((.*)\)", plan)
    assert any("priority = " in cond and "ready_at <= " in cond for cond in scans), plan
    assert [j.id for j in claim(queue, 10, ("emails",))] == [j.id for j in (*due[5:], *due[:5])]


def test_an_expired_claim_comes_back_in_its_own_queue(queue):
    [job] = make(1, queue="emails")
    queue.enqueue(job)
    assert [j.id for j in claim(queue, 1, ("emails",))] == [job.id]
    sql(queue, "UPDATE {q} SET ready_at = 0 WHERE state = 1 RETURNING id")
    assert claim(queue, 1) == []
    assert [j.id for j in claim(queue, 1, ("emails",))] == [job.id]


def test_a_version_1_schema_is_migrated_and_its_queued_jobs_still_run(pg_server, psettings, schema):
    s = f'"{schema}"'
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {s}")
        conn.execute(
            f"CREATE TABLE {s}.nuvom_schema (version integer PRIMARY KEY, applied_at double precision NOT NULL, "
            "by text NOT NULL)"
        )
        for statement in _MIGRATIONS[1]:
            conn.execute(statement.replace("{s}", s))  # type: ignore[arg-type]
        conn.execute(f"INSERT INTO {s}.nuvom_schema VALUES (1, 0, 'nuvom-postgres 1')")  # type: ignore[arg-type]
        [old] = make(1)
        conn.execute(
            f"INSERT INTO {s}.nuvom_queue (id, func_name, ready_at, created_at, payload) "  # type: ignore[arg-type]
            "VALUES (%s, %s, 0, 0, %s)",
            (old.id, old.func_name, old.to_bytes()),
        )
    queue = PostgresJobQueue(load_settings(), postgres=psettings)
    try:
        assert queue.queue_counts()["default"]["queued"] == 1
        assert [j.id for j in queue.claim(5)] == [old.id]
        queue.enqueue_many(make(1, queue="emails", priority=3))
        assert len(claim(queue, 5, ("emails",))) == 1
        versions = sql(queue, f"SELECT version FROM {s}.nuvom_schema ORDER BY 1")
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    finally:
        queue.close()


def test_a_unique_key_is_held_until_its_job_leaves_and_a_retry_keeps_it(queue, results):
    first, second, third = make(3, unique_key="report-7")
    assert queue.enqueue_unique(first) == first.id
    assert queue.enqueue_unique(second) == first.id
    [claimed] = queue.claim(1)
    claimed.not_before = time.time() - 1
    queue.requeue([claimed])  # a retry
    assert queue.enqueue_unique(second) == first.id
    [claimed] = queue.claim(1)
    queue.settle(finish([claimed]), (), (), results)
    assert queue.enqueue_unique(third) == third.id
    assert queue.cancel(third.id) is not None
    assert queue.enqueue_unique(second) == second.id


UNIQUE_RACE = """
import sys, json
from nuvom.config import load_settings
from nuvom.job import Job
from nuvom.postgres import PostgresJobQueue, PostgresSettings
q = PostgresJobQueue(load_settings(), postgres=PostgresSettings(postgres_url=sys.argv[1], postgres_schema=sys.argv[2]))
out = {}
for i in range(60):
    job = Job(func_name="record", args=[i], unique_key=f"key-{i % 20}")
    out[job.id] = (job.unique_key, q.enqueue_unique(job))
print(json.dumps(out))
"""


def test_producers_racing_for_unique_keys_queue_one_job_per_key(queue, pg_server, schema):
    queue.qsize()  # the schema exists before the race
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    procs = [
        subprocess.Popen([sys.executable, "-c", UNIQUE_RACE, pg_server.url(), schema], env=env, stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    answers: dict[str, tuple[str, str]] = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        answers.update(json.loads(out))
    rows = sql(queue, "SELECT unique_key, id FROM {q}")
    held = dict(rows)
    assert len(rows) == len(held) == 20
    for key, holder in answers.values():
        assert holder == held[key]  # every producer was told the one holder


def test_a_waiting_job_is_released_by_the_settle_that_takes_out_its_last_parent(queue, results):
    first, second = make(2)
    queue.enqueue_many([first, second])
    [child] = make(1, flow=Flow(parents=[first.id, second.id]))
    queue.enqueue(child)
    assert queue.get(child.id).status is JobStatus.WAITING
    assert queue.dependents(first.id) == [child.id]
    assert queue.counts()["queued"] == 3
    claimed = {j.id: j for j in queue.claim(10)}
    assert set(claimed) == {first.id, second.id}
    queue.settle(finish([claimed[first.id]]), (), (), results)
    assert queue.claim(10) == [] and queue.get(child.id).status is JobStatus.WAITING
    retry = claimed[second.id]
    retry.not_before = time.time() - 1
    queue.requeue([retry])  # a retrying parent is still in the queue
    [again] = queue.claim(10)
    assert again.id == second.id and queue.get(child.id).status is JobStatus.WAITING
    queue.settle(finish([again]), (), (), results)
    assert [j.id for j in queue.claim(10)] == [child.id]
    [late] = make(1, flow=Flow(parents=[first.id]))
    queue.enqueue(late)  # its parent is gone: due at once
    assert [j.id for j in queue.claim(10)] == [late.id]


def test_a_released_child_waits_for_its_own_due_time(queue, results):
    [parent] = make(1)
    queue.enqueue(parent)
    [child] = make(1, flow=Flow(parents=[parent.id]), not_before=time.time() + 1.0)
    queue.enqueue(child)
    [claimed] = queue.claim(1)
    queue.settle(finish([claimed]), (), (), results)
    assert queue.get(child.id).status is JobStatus.PENDING and queue.claim(1) == []
    got = wait_until(lambda: queue.claim(1), 10, "the child due")
    assert [j.id for j in got] == [child.id] and time.time() >= child.not_before


def test_children_queued_while_their_parents_leave_are_never_stranded(queue, results, psettings):
    """A child's enqueue races its parent's settle (another connection): either
    the parent is gone and does not count, or the settle reads the child back."""
    producer = PostgresJobQueue(load_settings(), postgres=psettings)
    try:
        parents = make(40)
        queue.enqueue_many(parents)
        claimed = queue.claim(40)
        children = [make(1, flow=Flow(parents=[p.id]))[0] for p in parents]
        go = threading.Barrier(2)

        def settle() -> None:
            go.wait()
            for job in claimed:
                queue.settle(finish([job]), (), (), results)

        def produce() -> None:
            go.wait()
            for child in children:
                producer.enqueue(child)

        threads = [threading.Thread(target=settle), threading.Thread(target=produce)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sql(queue, "SELECT count(*) FROM {q} WHERE state = 2") == [(0,)]
        assert {j.id for j in queue.claim(100)} == {c.id for c in children}
    finally:
        producer.close()


def test_cancel_requests_are_kept_for_claimed_jobs_until_they_leave(queue, results):
    waiting, running = make(2)
    queue.enqueue_many([waiting, running])
    [claimed] = queue.claim(1)
    assert claimed.id == waiting.id
    assert queue.request_cancel(running.id) is False  # not claimed: cancel() removes it instead
    assert queue.request_cancel(waiting.id) is True
    assert queue.cancel_requested([waiting.id, running.id]) == {waiting.id}
    queue.settle(finish([claimed]), (), (), results)
    assert queue.cancel_requested([waiting.id]) == set()


def test_rate_limits_are_shared_by_every_process_on_the_store(queue, psettings):
    other = PostgresJobQueue(load_settings(), postgres=psettings)
    try:
        taken = [q.acquire_rate("send", 5, 60.0) for q in (queue, other) * 5]
        assert taken[:5] == [0.0] * 5
        # A steady 5 a minute: the next start frees 12 s after the burst's last.
        assert all(11 < wait <= 12 for wait in taken[5:]), taken
        assert queue.acquire_rate("other-key", 5, 60.0) == 0.0
    finally:
        other.close()
