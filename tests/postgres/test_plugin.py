"""Installation and configuration: entry points, settings, URLs, the schema and
its migration, clear errors, and the shared contract checks (``nuvom plugin test``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import entry_points

import psycopg
import pytest
from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.config import load_settings
from nuvom.errors import BackendError, ConfigError
from nuvom.job import Job
from nuvom.postgres import (
    SCHEMA_VERSION,
    PostgresJobQueue,
    PostgresResultBackend,
    PostgresSettings,
    SchemaTooNew,
    load_postgres_settings,
    redact_url,
)

from .conftest import PostgresServer, free_port


def test_entry_points_name_the_backends_in_both_groups():
    queues = {ep.name: ep.value for ep in entry_points(group="nuvom.queue_backends")}
    results = {ep.name: ep.value for ep in entry_points(group="nuvom.result_backends")}
    assert queues["postgres"] == "nuvom.postgres:PostgresJobQueue"
    assert results["postgres"] == "nuvom.postgres:PostgresResultBackend"
    assert "postgres" not in {ep.name for ep in entry_points(group="nuvom")}  # choosing it starts no plugin
    assert next(iter(entry_points(group="nuvom.queue_backends", name="postgres"))).load() is PostgresJobQueue
    assert PostgresJobQueue.settings_class is PostgresResultBackend.settings_class is PostgresSettings


def test_the_environment_alone_selects_and_configures_postgres(pg_env, schema):
    queue, results = get_queue_backend(), get_result_backend()
    assert isinstance(queue, PostgresJobQueue) and isinstance(results, PostgresResultBackend)
    assert queue.db is results.db and queue.db.schema == schema  # one pool for both
    queue.enqueue(Job(func_name="x"))
    assert queue.qsize() == 1
    assert queue.describe() == f"postgres postgresql://127.0.0.1:{queue.db.url.split(':')[3]} (schema {schema})"


def test_settings_defaults_and_a_bad_value_named(monkeypatch):
    s = load_postgres_settings()
    assert s.postgres_url == "postgresql://localhost:5432/postgres" and s.postgres_schema == "nuvom"
    assert s.result_ttl_secs is None and s.postgres_poll_secs > 0
    monkeypatch.setenv("NUVOM_RESULT_TTL_SECS", "-3")
    with pytest.raises(ConfigError, match="NUVOM_RESULT_TTL_SECS"):
        load_postgres_settings()


def test_a_schema_name_that_is_not_a_plain_identifier_is_refused(monkeypatch):
    monkeypatch.setenv("NUVOM_POSTGRES_SCHEMA", 'x"; DROP TABLE users; --')
    with pytest.raises(ConfigError, match="NUVOM_POSTGRES_SCHEMA"):
        load_postgres_settings()


def test_passwords_are_redacted():
    assert redact_url("postgresql://app:pw@h:5432/db") == "postgresql://app:***@h:5432/db"
    assert redact_url("postgresql://app@h/db?password=pw&sslmode=require") == (
        "postgresql://app@h/db?password=***&sslmode=require"
    )
    assert redact_url("host=h user=app password=pw dbname=db") == "host=h user=app password=*** dbname=db"
    assert redact_url("postgresql://h/db") == "postgresql://h/db"


def test_a_url_that_is_not_postgres_is_refused_clearly():
    with pytest.raises(BackendError, match="not a PostgreSQL URL"):
        PostgresJobQueue(load_settings(), postgres=PostgresSettings(postgres_url="http://:pw@localhost/ nope=="))


def test_an_unreachable_server_is_a_bounded_clear_error(schema):
    url = f"postgresql://app:topsecret@127.0.0.1:{free_port()}/db"
    queue = PostgresJobQueue(
        load_settings(),
        postgres=PostgresSettings(postgres_url=url, postgres_schema=schema, postgres_retry_secs=0.5),
    )
    t0 = time.monotonic()
    with pytest.raises(BackendError) as err:
        queue.enqueue(Job(func_name="x"))
    assert time.monotonic() - t0 < 3
    assert "topsecret" not in str(err.value) and "app:***@127.0.0.1" in str(err.value)
    assert "NUVOM_POSTGRES_URL" in str(err.value)
    queue.close()


def test_a_wrong_password_is_named_at_once(pg_server, schema):
    wrong = PostgresSettings(postgres_url=pg_server.url(password="wrong-pw"), postgres_schema=schema)
    queue = PostgresJobQueue(load_settings(), postgres=wrong)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="refused the credentials") as err:
        queue.qsize()
    assert time.monotonic() - t0 < 2  # not retried: it cannot help
    assert "wrong-pw" not in str(err.value)
    queue.close()


def test_a_missing_database_is_named(pg_server, schema):
    missing = PostgresSettings(postgres_url=pg_server.url(database="nope"), postgres_schema=schema)
    queue = PostgresJobQueue(load_settings(), postgres=missing)
    with pytest.raises(BackendError, match='database "nope" does not exist'):
        queue.qsize()
    queue.close()


def tables(url: str, schema: str) -> list[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))
        return [name for (name,) in found.fetchall()]


def test_the_schema_is_created_in_the_named_schema_and_logged_once(queue, pg_server, schema, caplog):
    caplog.set_level("INFO", logger="nuvom.postgres")
    queue.qsize()
    assert tables(pg_server.url(), schema) == [
        "nuvom_job_tags", "nuvom_queue", "nuvom_rates", "nuvom_result_waiters", "nuvom_results",
        "nuvom_schedule_ticks", "nuvom_schedules", "nuvom_schema", "nuvom_workers",
    ]  # fmt: skip
    other = PostgresJobQueue(
        load_settings(), postgres=queue.postgres_settings.model_copy(update={"postgres_pool_size": 3})
    )
    other.qsize()  # another process (another pool): finds it done
    created = [r for r in caplog.records if "created schema" in r.getMessage()]
    assert len(created) == 1 and f"schema {schema} at version {SCHEMA_VERSION}" in created[0].getMessage()
    other.close()


def test_workers_starting_together_create_the_schema_once(pg_server, schema, tmp_path):
    code = (
        "import sys, time; from nuvom.config import load_settings; "
        "from nuvom.postgres import PostgresJobQueue, PostgresSettings; "
        f"s = PostgresSettings(postgres_url={pg_server.url()!r}, postgres_schema={schema!r}); "
        "go = float(sys.argv[1]); time.sleep(max(0.0, go - time.time())); "
        "q = PostgresJobQueue(load_settings(), postgres=s); print(q.qsize())"
    )
    go = time.time() + 1.5  # the processes start together after their imports
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, repr(go)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(5)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [err.decode()[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [b"0"] * 5
    with psycopg.connect(pg_server.url()) as conn:
        versions = conn.execute(f'SELECT version FROM "{schema}".nuvom_schema ORDER BY 1').fetchall()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each migration applied once


def test_a_schema_from_a_newer_release_is_refused_and_left_alone(queue, pg_server, schema):
    queue.qsize()
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"INSERT INTO \"{schema}\".nuvom_schema VALUES ({SCHEMA_VERSION + 1}, 0, 'future')")
    newer = PostgresJobQueue(
        load_settings(), postgres=queue.postgres_settings.model_copy(update={"postgres_pool_size": 4})
    )
    with pytest.raises(SchemaTooNew, match="upgrade nuvom-postgres"):
        newer.qsize()
    newer.close()


def test_a_read_only_server_is_named(queue, pg_server, schema):
    queue.qsize()
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute("ALTER DATABASE nuvom_test SET default_transaction_read_only = on")
    try:
        ro = PostgresJobQueue(
            load_settings(), postgres=queue.postgres_settings.model_copy(update={"postgres_pool_size": 5})
        )
        with pytest.raises(BackendError, match="read-only"):
            ro.enqueue(Job(func_name="x"))
        ro.close()
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute("ALTER DATABASE nuvom_test RESET default_transaction_read_only")


@pytest.mark.parametrize("cls", ["PostgresJobQueue", "PostgresResultBackend"])
def test_the_shared_contract_checks_pass(pg_env, cls):
    """``nuvom plugin test nuvom.postgres:<class>``: the checks every backend passes."""
    checks = pytest.importorskip("nuvom.cli._plugin_test")  # nuvom-cli: run by the e2e environment
    [result] = checks.run_plugin_checks(f"nuvom.postgres:{cls}")
    assert result.ok, [(c.name, c.detail) for c in result.checks]
    assert any("schedules: store, pause, one claim per tick" in c.detail for c in result.checks) or cls != (
        "PostgresJobQueue"
    )


def test_a_second_server_on_another_port_is_another_store(tmp_path, schema):
    server = PostgresServer().start()
    try:
        a = PostgresJobQueue(
            load_settings(), postgres=PostgresSettings(postgres_url=server.url(), postgres_schema=schema)
        )
        a.enqueue(Job(func_name="x"))
        assert a.qsize() == 1
        a.close()
    finally:
        server.remove()
