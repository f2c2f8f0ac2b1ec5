"""The tables of nuvom-postgres, in a schema the user names
(``NUVOM_POSTGRES_SCHEMA``, default ``nuvom``), and their migrations.

Every process checks the schema's version when it first talks to the server
(one read). A schema that is missing or older is brought up to date in one
transaction that holds an advisory lock on the schema's name, so that workers
starting together migrate it once: the others wait on the lock, then find it
done. A fresh schema is logged in one line, an upgrade in one line.

Times are epoch seconds in ``double precision`` (``to_timestamp(finished_at)``
shows them as dates); ids and task names use the "C" collation: compared as
bytes, as an id's order is its time order.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from nuvom.errors import BackendError

__all__ = ["SCHEMA_VERSION", "SchemaTooNew", "ensure_schema", "schema_version"]

log = logging.getLogger("nuvom.postgres")

# The advisory lock's first key ("nuvo"); the second is hashtext(schema name).
_LOCK_CLASS = 0x6E75766F

# Migrations are applied in order, each recorded in nuvom_schema by the
# transaction that applies it. Never edit a released one: append a new version.
# ``{s}`` is the quoted schema name.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # The queue. ``ready_at`` is when the row can next be claimed: its due
        # time while it waits, its lease's end once claimed, so one index serves
        # "oldest due first" and "expired leases come back" alike. Claims and
        # start marks rewrite rows: free room in each page lets a start mark that
        # keeps the lease (it touches no indexed column) stay on its page.
        """
        CREATE TABLE {s}.nuvom_queue (
            id           text COLLATE "C" PRIMARY KEY,
            func_name    text COLLATE "C" NOT NULL,
            state        smallint NOT NULL DEFAULT 0,   -- 0 waiting, 1 claimed
            ready_at     double precision NOT NULL,
            attempts     integer NOT NULL DEFAULT 0,
            timeout_secs double precision,
            claim_token  bigint,
            claimed_by   text,
            started_at   double precision,              -- the claim's start mark
            created_at   double precision NOT NULL,
            payload      bytea NOT NULL
        ) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)
        """,
        "CREATE INDEX nuvom_queue_ready ON {s}.nuvom_queue (ready_at, id)",
        # Finished jobs: the whole Job in ``payload`` (msgpack), and the columns
        # that queries filter and sort on. Each listing's order is an index, so
        # a page costs the same at row 10 and at row 1,000,000.
        """
        CREATE TABLE {s}.nuvom_results (
            id            text COLLATE "C" PRIMARY KEY,
            func_name     text COLLATE "C" NOT NULL,
            status        text COLLATE "C" NOT NULL,
            attempts      integer NOT NULL,
            worker_id     text,
            created_at    double precision,
            started_at    double precision,
            finished_at   double precision NOT NULL,
            error_type    text,
            error_message text,
            tags          text[],
            payload       bytea NOT NULL
        )
        """,
        "CREATE INDEX nuvom_results_finished ON {s}.nuvom_results (finished_at, id)",
        "CREATE INDEX nuvom_results_status ON {s}.nuvom_results (status, finished_at, id)",
        "CREATE INDEX nuvom_results_task ON {s}.nuvom_results (func_name, finished_at, id)",
        # One row per (tag, job): the primary key is the "newest first, keyset
        # page by tag" order itself; status and task ride along so that a tag
        # combined with them is checked on these rows. Deleting a result (a
        # prune, delete(), or anyone's DELETE) deletes its rows.
        """
        CREATE TABLE {s}.nuvom_job_tags (
            tag         text COLLATE "C" NOT NULL,
            finished_at double precision NOT NULL,
            job_id      text COLLATE "C" NOT NULL REFERENCES {s}.nuvom_results (id) ON DELETE CASCADE,
            status      text COLLATE "C" NOT NULL,
            func_name   text COLLATE "C" NOT NULL,
            PRIMARY KEY (tag, finished_at, job_id)
        )
        """,
        "CREATE INDEX nuvom_job_tags_job ON {s}.nuvom_job_tags (job_id)",
        # Jobs someone waits for (job.get()): storing one of them notifies its
        # waiter. Unlogged: a crash empties it, and the waiters look again.
        """
        CREATE UNLOGGED TABLE {s}.nuvom_result_waiters (
            job_id text COLLATE "C" NOT NULL,
            waiter bigint NOT NULL,
            since  double precision NOT NULL,
            PRIMARY KEY (job_id, waiter)
        )
        """,
        # Schedules: the schedule in ``payload``, its progress in columns.
        """
        CREATE TABLE {s}.nuvom_schedules (
            key          text PRIMARY KEY,
            paused       boolean NOT NULL DEFAULT false,
            next_run_at  double precision,
            next_run_ms  bigint,                         -- next_run_at as a tick (nuvom.schedule.tick_ms)
            last_run_at  double precision,
            last_job_id  text,
            updated_at   double precision NOT NULL,
            payload      bytea NOT NULL
        )
        """,
        # One row per claimed tick: the primary key is the exactly-once guarantee.
        """
        CREATE TABLE {s}.nuvom_schedule_ticks (
            schedule_key text NOT NULL,
            tick_ms      bigint NOT NULL,
            job_id       text,
            claimed_at   double precision NOT NULL,
            PRIMARY KEY (schedule_key, tick_ms)
        )
        """,
        # Worker presence: one row per worker, replaced at each heartbeat.
        """
        CREATE TABLE {s}.nuvom_workers (
            worker_id    text PRIMARY KEY,
            heartbeat_at double precision NOT NULL,
            drop_at      double precision NOT NULL,
            info         jsonb NOT NULL
        )
        """,
    ),
    2: (
        # Job control (named queues, priorities, unique keys, cancel requests,
        # workflows). ``state`` 2: waiting for parents (``ready_at`` infinite, so
        # no claim ever reaches it, and ``due_at`` its due time once released);
        # ``blockers``: how many of its parents are
        # still in the queue; ``children``: on a parent, the jobs waiting for it,
        # read back by the statement that deletes it (it sees the latest version
        # of the row, so a child queued meanwhile is not missed). Defaults keep
        # rows of version 1 valid: in ``default``, priority 0, unique-free.
        "ALTER TABLE {s}.nuvom_queue ADD COLUMN queue text COLLATE \"C\" NOT NULL DEFAULT 'default', "
        'ADD COLUMN priority integer NOT NULL DEFAULT 0, ADD COLUMN unique_key text COLLATE "C", '
        "ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false, "
        "ADD COLUMN blockers integer NOT NULL DEFAULT 0, ADD COLUMN children text[], "
        "ADD COLUMN due_at double precision",
        # A claim is one walk of this index per queue: higher priority first, then due order.
        "CREATE INDEX nuvom_queue_claim ON {s}.nuvom_queue (queue, priority DESC, ready_at, id)",
        # When a queue's next row is due (a claim that found none sleeps until
        # then), and a queue's waiting jobs in due order (peek): per queue now.
        "DROP INDEX {s}.nuvom_queue_ready",
        "CREATE INDEX nuvom_queue_due ON {s}.nuvom_queue (queue, ready_at)",
        # At most one job per unique key while it is in the queue: the key is free
        # once its row is deleted (outcome stored, acknowledged, cancelled).
        "CREATE UNIQUE INDEX nuvom_queue_unique ON {s}.nuvom_queue (unique_key) WHERE unique_key IS NOT NULL",
        # Rate limits (GCRA): the theoretical arrival time of the next start, per key.
        "CREATE TABLE {s}.nuvom_rates (key text PRIMARY KEY, tat double precision NOT NULL)",
        # One start of ``lim`` per ``per`` seconds for ``k``: 0 when taken, else the
        # seconds until one frees. The clock is read after the row lock is held, so
        # that the times of the starts of one key are in the order they were taken.
        """
        CREATE FUNCTION {s}.nuvom_acquire_rate(k text, lim integer, per double precision)
        RETURNS double precision LANGUAGE plpgsql VOLATILE AS $$
        DECLARE stored double precision; t_now double precision; next_tat double precision;
        BEGIN
            INSERT INTO {s}.nuvom_rates (key, tat) VALUES (k, 0) ON CONFLICT (key) DO NOTHING;
            SELECT r.tat INTO stored FROM {s}.nuvom_rates AS r WHERE r.key = k FOR UPDATE;
            t_now := date_part('epoch', clock_timestamp());
            next_tat := greatest(stored, t_now) + per / lim;
            IF next_tat - t_now > per THEN
                RETURN next_tat - t_now - per;
            END IF;
            UPDATE {s}.nuvom_rates AS r SET tat = next_tat WHERE r.key = k;
            RETURN 0;
        END $$
        """,
        # Release the waiting jobs of parents that left the queue: ``kids`` holds
        # each child once per departed parent. Volatile, so its statement reads a
        # snapshot of its own: a child committed after the calling statement began
        # (its enqueue held the parent's row lock, which the caller waited for) is seen.
        """
        CREATE FUNCTION {s}.nuvom_release(kids text[], chan text) RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
        DECLARE n integer;
        BEGIN
            WITH k AS (SELECT c AS id, count(*) AS k FROM unnest(kids) AS c GROUP BY c),
            r AS (UPDATE {s}.nuvom_queue AS j SET blockers = j.blockers - k.k,
                    state = CASE WHEN j.blockers - k.k <= 0 THEN 0 ELSE 2 END,
                    ready_at = CASE WHEN j.blockers - k.k <= 0
                               THEN greatest(date_part('epoch', clock_timestamp()), coalesce(j.due_at, 0))
                               ELSE j.ready_at END
                  FROM k WHERE j.id = k.id AND j.state = 2 AND j.id = ANY(kids) RETURNING j.state)
            SELECT count(*) INTO n FROM r WHERE r.state = 0;
            IF n > 0 THEN
                PERFORM pg_notify(chan, '');
            END IF;
            RETURN n;
        END $$
        """,
    ),
}
SCHEMA_VERSION = max(_MIGRATIONS)


class SchemaTooNew(BackendError):
    """The schema was written by a newer nuvom-postgres."""


def _quoted(schema: str) -> str:
    # Settings allow only letters, digits and underscores: quoting keeps the case.
    return f'"{schema}"'


def schema_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The schema's version; 0 when nuvom-postgres never set it up."""
    row = conn.execute("SELECT to_regclass(%s)", (f"{_quoted(schema)}.nuvom_schema",)).fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute(f"SELECT max(version) FROM {_quoted(schema)}.nuvom_schema").fetchone()
    return int(found[0] or 0) if found else 0


def ensure_schema(conn: psycopg.Connection[Any], schema: str, where: str) -> None:
    """Bring ``schema`` to :data:`SCHEMA_VERSION` (``conn`` is in autocommit)."""
    version = schema_version(conn, schema)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise _too_new(where, schema, version)
    s = _quoted(schema)
    with conn.transaction():
        # Workers starting together wait here for the one that migrates.
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists is None:
            conn.execute(f"CREATE SCHEMA {s}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.nuvom_schema "
            "(version integer PRIMARY KEY, applied_at double precision NOT NULL, by text NOT NULL)"
        )
        version = schema_version(conn, schema)  # another process may have migrated meanwhile
        if version > SCHEMA_VERSION:
            raise _too_new(where, schema, version)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[number]:
                conn.execute(statement.replace("{s}", s))
            conn.execute(
                f"INSERT INTO {s}.nuvom_schema (version, applied_at, by) VALUES (%s, %s, %s)",
                (number, time.time(), "nuvom-postgres"),
            )
    if version == 0:
        log.info("PostgreSQL at %s: created schema %s at version %d", where, schema, SCHEMA_VERSION)
    elif version < SCHEMA_VERSION:
        log.info("PostgreSQL at %s: schema %s migrated from version %d to %d", where, schema, version, SCHEMA_VERSION)


def _too_new(where: str, schema: str, version: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"PostgreSQL at {where}: schema {schema} has version {version}, newer than this nuvom-postgres knows "
        f"(up to {SCHEMA_VERSION}); upgrade nuvom-postgres in this environment, or set NUVOM_POSTGRES_SCHEMA "
        "to another schema"
    )
