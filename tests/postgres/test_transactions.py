"""Transactional enqueue: ``task.delay_in(connection, ...)`` writes the job in
the caller's open transaction; rollback leaves no job, commit makes it visible
and wakes a worker. With psycopg 3 always; with psycopg2, SQLAlchemy and Django
when they are installed (the e2e environment)."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nuvom.app import App
from nuvom.config import Settings
from nuvom.errors import BackendError
from nuvom.worker import Worker

from .conftest import PostgresServer


@pytest.fixture
def app(pg_env: dict[str, str], tmp_path: Path) -> Iterator[App]:
    a = App(Settings(queue_backend="postgres", result_backend="postgres", data_dir=tmp_path / "data"))
    yield a
    a.close()


@pytest.fixture
def orders(pg_server: PostgresServer, schema: str) -> str:
    """The application's own table, in the same database."""
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}_app"')
        conn.execute(f'CREATE TABLE "{schema}_app".orders (id int PRIMARY KEY, item text)')
    return f'"{schema}_app".orders'


def waiting(app: App) -> int:
    queue: Any = app.queue
    return int(queue.qsize())


def test_a_job_queued_in_a_transaction_exists_only_once_it_commits(app, pg_server, orders):
    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    with psycopg.connect(pg_server.url()) as conn:
        conn.execute(f"INSERT INTO {orders} VALUES (1, 'book')")
        job = ship.delay_in(conn, 1)
        assert waiting(app) == 0  # not visible to anyone before the commit
        conn.commit()
    assert waiting(app) == 1
    [claimed] = app.queue.claim(5)
    assert claimed.id == job.id and claimed.args == [1]


def test_a_rolled_back_transaction_leaves_no_job(app, pg_server, orders):
    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    with psycopg.connect(pg_server.url()) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute(f"INSERT INTO {orders} VALUES (2, 'pen')")
            ship.delay_in(conn, 2)
            ship.map_in(conn, [3, 4, 5])
            raise RuntimeError("the order failed")
        assert conn.execute(f"SELECT count(*) FROM {orders}").fetchone() == (0,)
    assert waiting(app) == 0 and app.queue.claim(10) == []


def test_the_commit_wakes_an_idle_worker_which_sees_the_transactions_rows(app, pg_server, orders):
    seen: list[Any] = []
    ran = threading.Event()

    @app.task(name="ship")
    def ship(order_id: int) -> str:
        with psycopg.connect(pg_server.url()) as own:
            row = own.execute(f"SELECT item FROM {orders} WHERE id = %s", (order_id,)).fetchone()
        seen.append(row)
        ran.set()
        return str(row[0])

    with Worker(app=app, max_workers=2):
        time.sleep(0.3)  # the worker reaches its wait on the empty queue: what is measured is its wake-up
        with psycopg.connect(pg_server.url()) as conn:
            with conn.transaction():
                conn.execute(f"INSERT INTO {orders} VALUES (7, 'lamp')")
                job = ship.delay_in(conn, 7)
                assert not ran.wait(0.3)  # uncommitted: no worker may see it
            committed = time.monotonic()
        assert ran.wait(10)
        woke = time.monotonic() - committed
        record = app.results.wait(job.id, 10)
    assert seen == [("lamp",)] and record is not None and record.result == "lamp"
    assert woke < 0.5, woke  # woken by the commit's notification, not the 2 s safety poll


def test_map_in_queues_every_job_in_the_callers_transaction(app, pg_server):
    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    with psycopg.connect(pg_server.url()) as conn:
        jobs = ship.map_in(conn, [(i,) for i in range(50)])
        assert waiting(app) == 0
    # The connection's context closed without error: committed.
    assert waiting(app) == 50
    assert sorted(j.args[0] for j in app.queue.claim(100)) == list(range(50))
    assert len({j.id for j in jobs}) == 50


def test_a_queue_elsewhere_refuses_delay_in_clearly(tmp_path, pg_server):
    memory = App(Settings(queue_backend="memory", result_backend="memory", data_dir=tmp_path / "m"))

    @memory.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    with psycopg.connect(pg_server.url()) as conn, pytest.raises(BackendError, match="cannot queue jobs in your"):
        ship.delay_in(conn, 1)
    memory.close()


def test_an_async_connection_or_something_else_is_refused_clearly(app, pg_server):
    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    with pytest.raises(BackendError, match="needs a database connection"):
        ship.delay_in("postgresql://not-a-connection", 1)

    async def with_async() -> None:
        async with await psycopg.AsyncConnection.connect(pg_server.url()) as conn:
            with pytest.raises(BackendError, match="asynchronous connection"):
                ship.delay_in(conn, 1)

    import asyncio

    asyncio.run(with_async())
    assert waiting(app) == 0


def test_a_connection_to_another_database_is_named(app, pg_server):
    pg_server.psql("CREATE DATABASE other_app", database="postgres") if not _exists(pg_server, "other_app") else None

    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    with psycopg.connect(pg_server.url(database="other_app")) as conn:
        with pytest.raises(BackendError, match="must be to the database of NUVOM_POSTGRES_URL"):
            ship.delay_in(conn, 1)
        conn.rollback()


def _exists(server: PostgresServer, database: str) -> bool:
    with psycopg.connect(server.url()) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


HAVE = {name: importlib.util.find_spec(name) is not None for name in ("psycopg2", "sqlalchemy", "django")}


@pytest.mark.skipif(not HAVE["psycopg2"], reason="psycopg2 is not installed (the e2e environment has it)")
def test_psycopg2_connections_work_the_same(app, pg_server, orders):
    import psycopg2  # type: ignore[import-untyped]

    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    conn = psycopg2.connect(pg_server.url())
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {orders} VALUES (11, 'cup')")
        ship.delay_in(conn, 11)
        conn.rollback()
        assert waiting(app) == 0
        job = ship.delay_in(conn, 11)
        conn.commit()
    finally:
        conn.close()
    assert [j.id for j in app.queue.claim(5)] == [job.id]


@pytest.mark.skipif(not HAVE["sqlalchemy"], reason="SQLAlchemy is not installed (the e2e environment has it)")
def test_sqlalchemy_connections_and_sessions_work_the_same(app, pg_server, orders):
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    engine = sa.create_engine(pg_server.url().replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:  # commits at the end of the block
            conn.execute(sa.text(f"INSERT INTO {orders} VALUES (21, 'desk')"))
            first = ship.delay_in(conn, 21)
        with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
            session.execute(sa.text(f"INSERT INTO {orders} VALUES (22, 'lamp')"))
            ship.delay_in(session, 22)
            raise RuntimeError("rolled back")
        with Session(engine) as session, session.begin():
            second = ship.delay_in(session, 23)
    finally:
        engine.dispose()
    assert sorted(j.id for j in app.queue.claim(5)) == sorted([first.id, second.id])


@pytest.mark.skipif(not HAVE["django"], reason="Django is not installed (the e2e environment has it)")
def test_django_connections_work_inside_atomic_blocks(app, pg_server, orders):
    import django
    from django.conf import settings as django_settings

    if not django_settings.configured:
        django_settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": "nuvom_test",
                    "USER": "nuvom",
                    "PASSWORD": pg_server.url().split(":")[2].split("@")[0],
                    "HOST": "127.0.0.1",
                    "PORT": str(pg_server.port),
                }
            },
            USE_TZ=True,
        )
        django.setup()
    from django.db import connection, transaction

    @app.task(name="ship")
    def ship(order_id: int) -> int:
        return order_id

    if connection.settings_dict["PORT"] != str(pg_server.port):
        pytest.skip("Django was configured for another session's server in this process")
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(f"INSERT INTO {orders} VALUES (31, 'chair')")
        kept = ship.delay_in(connection, 31)
    with pytest.raises(RuntimeError), transaction.atomic():
        ship.delay_in(connection, 32)
        raise RuntimeError("rolled back")
    connection.close()
    assert [j.id for j in app.queue.claim(5)] == [kept.id]
