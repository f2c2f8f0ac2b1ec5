"""The worker's hot statements as libpq prepared statements (``nuvom.postgres._prepared``):
values of every kind go and come back exactly, each connection prepares its own,
and a connection lost under them is replaced without the caller noticing."""

from __future__ import annotations

import math
import time

import psycopg
import pytest
from nuvom.config import load_settings
from nuvom.job import DEFAULT_QUEUE, Job, JobStatus
from nuvom.postgres import PostgresJobQueue, PostgresResultBackend, PostgresSettings
from nuvom.postgres._prepared import Prepared

# Characters an array literal must escape, or that a fast path could mangle.
ODD = ['a"b', "back\\slash", "com,ma", "{brace}", "sp ace", "NULL", "", "élan ✓"]


def test_parameters_and_columns_of_each_kind_come_back_exactly(queue: PostgresJobQueue) -> None:
    statement = Prepared(
        "SELECT %(s)s::text, %(i)s::bigint, %(f)s::float8, %(b)s::bool, %(y)s::bytea, %(n)s::text, "
        "%(small)s::int4, 7::int2, %(s)s::varchar, %(inf)s::float8, %(nan)s::float8"
    )
    params = {"s": 'é"\\,{}', "i": -(2**40), "f": 0.1, "b": True, "y": b"\x00\xff\\x", "n": None}
    params.update(small=-5, inf=math.inf, nan=math.nan)
    [got] = queue.db.run("a test", lambda conn: statement.rows(conn, params))
    assert got[:10] == ('é"\\,{}', -(2**40), 0.1, True, b"\x00\xff\\x", None, -5, 7, 'é"\\,{}', math.inf)
    assert math.isnan(got[10])


def test_a_bare_percent_sign_is_refused_when_the_statement_is_made() -> None:
    with pytest.raises(ValueError, match="bare '%'"):
        Prepared("SELECT 5 % 2, %(x)s")


def test_server_errors_are_psycopgs_own_classes(queue: PostgresJobQueue) -> None:
    statement = Prepared("SELECT 1 / %(zero)s::int")
    queue.qsize()  # the pool is open
    with queue.db.pool.connection() as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            statement.rows(conn, {"zero": 0})
        # The connection is still usable, its statement still prepared.
        assert statement.rows(conn, {"zero": 2}) == [(0,)]


def test_a_connection_outside_the_pool_keeps_no_prepared_statement(queue: PostgresJobQueue) -> None:
    statement = Prepared("SELECT %(x)s::int + 1")
    with queue.db.connect() as conn:
        assert statement.rows(conn, {"x": 1}) == [(2,)]
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)


def test_a_statement_deallocated_under_a_connection_is_prepared_again(queue: PostgresJobQueue) -> None:
    statement = Prepared("SELECT %(x)s::int * 2")
    queue.qsize()  # the pool is open
    with queue.db.pool.connection() as conn:
        assert statement.rows(conn, {"x": 2}) == [(4,)]
        conn.execute("DEALLOCATE ALL")
        assert statement.rows(conn, {"x": 3}) == [(6,)]


def test_ids_task_names_and_tags_that_need_escaping_go_through_claim_and_settle_intact(
    queue: PostgresJobQueue, results: PostgresResultBackend
) -> None:
    jobs = [Job(id=f"id-{k}-{odd}", func_name=f"task {odd}", args=[odd], tags=ODD) for k, odd in enumerate(ODD)]
    queue.enqueue(jobs[0])  # the single-job statement
    queue.enqueue_many(jobs[1:])
    claimed = queue.claim_batch(len(ODD), 0, lambda: 2)
    assert sorted(job.id for job in claimed) == sorted(job.id for job in jobs)
    now = time.time()
    for job in claimed:
        job.status, job.result, job.started_at, job.finished_at = JobStatus.SUCCESS, job.args[0], now, now
    assert queue.settle(claimed[:3], [], claimed[3:], results) == [True] * (len(ODD) - 3)
    assert queue.settle(claimed[3:], [], [], results) == []
    for job in jobs:
        stored = results.get_full(job.id)
        assert stored is not None and stored.status is JobStatus.SUCCESS
        assert (stored.func_name, stored.result, stored.tags) == (job.func_name, job.args[0], ODD)
    assert {r.id for r in results.query(tag="élan ✓", limit=50)} == {job.id for job in jobs}
    assert queue.qsize() == 0 and queue.running() == 0


def test_each_connection_prepares_the_claim_once_and_a_new_one_after_the_old_is_killed(
    psettings: PostgresSettings,
) -> None:
    queue = PostgresJobQueue(load_settings(), postgres=psettings.model_copy(update={"postgres_pool_size": 1}))
    queue.enqueue_many([Job(func_name="a") for _ in range(3)])

    def claim_twice(conn: psycopg.Connection) -> tuple[int, int, int]:
        claimed = [len(queue._claim(conn, 1, 0, (DEFAULT_QUEUE,))[0]) for _ in range(2)]
        [(pid, n)] = conn.execute(
            "SELECT pg_backend_pid(), count(*) FROM pg_prepared_statements "
            "WHERE statement LIKE '%FOR UPDATE SKIP LOCKED%'"
        ).fetchall()
        return pid, n, sum(claimed)

    try:
        pid, prepared, claimed = queue.db.run("a test", claim_twice)
        assert (prepared, claimed) == (1, 2)  # prepared once, run twice
        with psycopg.connect(queue.db.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The pool's one connection is gone: the claim runs on a new one, which prepares it again.
        assert len(queue.claim(1)) == 1
        assert queue.db.run("a test", lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()) != (pid,)
    finally:
        queue.close()
