"""The schema of a nuvom-sqlite file: its migrations, applied in order when a
file is opened, and the tag index they build.

A fresh file is created at the newest version and logged in one line; an older
one is upgraded in one transaction, logged in one line with what it did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
from nuvom import serialization
from nuvom.errors import BackendError, SerializationError

__all__ = ["SCHEMA_VERSION", "SchemaTooNew", "ensure_schema", "schema_version", "tags_column"]

log = logging.getLogger("nuvom.sqlite")

# -- schema -------------------------------------------------------------------
# Migrations are applied in order, each in the transaction that records it in
# nuvom_schema. Never edit a released one: append a new version.
# A callable step may return a note for the migration's log line.
_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], str | None], ...]] = {
    1: (
        # The queue. ``ready_at`` is when the row can next be claimed: its due
        # time while it waits, its lease expiry once claimed. One index on it
        # serves "oldest due first" and "expired leases come back" alike.
        """
        CREATE TABLE nuvom_queue (
            seq          INTEGER PRIMARY KEY,
            id           TEXT    NOT NULL UNIQUE,
            func_name    TEXT    NOT NULL,
            state        INTEGER NOT NULL DEFAULT 0,   -- 0 waiting, 1 claimed
            ready_at     REAL    NOT NULL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            timeout_secs REAL,
            claim_token  INTEGER,
            claimed_by   TEXT,
            created_at   REAL    NOT NULL,
            payload      BLOB    NOT NULL
        )
        """,
        "CREATE INDEX nuvom_queue_ready ON nuvom_queue (ready_at)",
        # Finished jobs. The full Job travels in ``payload`` (msgpack); the
        # columns are what queries filter and sort on, and what a person
        # reading the file with the sqlite3 shell wants to see.
        """
        CREATE TABLE nuvom_results (
            id            TEXT    PRIMARY KEY,
            func_name     TEXT    NOT NULL,
            status        TEXT    NOT NULL,
            attempts      INTEGER NOT NULL,
            worker_id     TEXT,
            created_at    REAL,
            started_at    REAL,
            finished_at   REAL    NOT NULL,
            error_type    TEXT,
            error_message TEXT,
            payload       BLOB    NOT NULL
        )
        """,
        "CREATE INDEX nuvom_results_finished ON nuvom_results (finished_at)",
        "CREATE INDEX nuvom_results_status ON nuvom_results (status, finished_at)",
        "CREATE INDEX nuvom_results_task ON nuvom_results (func_name, finished_at)",
    ),
    # Schedules (nuvom.sqlite._schedules). Tables only: files of version 1 gain
    # them on first open and keep every queued job and result.
    2: (
        """
        CREATE TABLE nuvom_schedules (
            key          TEXT    PRIMARY KEY,
            paused       INTEGER NOT NULL DEFAULT 0,
            next_run_at  REAL,
            last_run_at  REAL,
            last_job_id  TEXT,
            updated_at   REAL    NOT NULL,
            payload      BLOB    NOT NULL
        )
        """,
        "CREATE INDEX nuvom_schedules_due ON nuvom_schedules (paused, next_run_at)",
        # One row per claimed tick: the primary key is the exactly-once guarantee.
        """
        CREATE TABLE nuvom_schedule_ticks (
            schedule_key TEXT    NOT NULL,
            tick_ms      INTEGER NOT NULL,
            job_id       TEXT,
            claimed_at   REAL    NOT NULL,
            PRIMARY KEY (schedule_key, tick_ms)
        ) WITHOUT ROWID
        """,
    ),
    # The tag index (nuvom.sqlite._results). A result's tags become a column
    # (a JSON array, NULL when the job has none) and one row per tag in
    # nuvom_job_tags, written by insert_results() in the transaction that
    # stores the result. No insert trigger: a trigger runs for every row, and
    # measured it made storing a job without tags cost more (docs/sqlite.md);
    # deletes and updates, rarer, are kept in step by triggers, whatever
    # deletes (pruning, delete(), the sqlite3 shell).
    3: (
        lambda conn: _require_json(conn),
        "ALTER TABLE nuvom_results ADD COLUMN tags TEXT",
        # One row per (tag, job). The primary key is the "newest first, keyset
        # page by tag" order itself; status and func_name ride along so that a
        # tag combined with a status or task filter is checked on the index
        # rows, and only matches are looked up in nuvom_results.
        """
        CREATE TABLE nuvom_job_tags (
            tag         TEXT NOT NULL,
            finished_at REAL NOT NULL,
            job_id      TEXT NOT NULL,
            status      TEXT NOT NULL,
            func_name   TEXT NOT NULL,
            PRIMARY KEY (tag, finished_at, job_id)
        ) WITHOUT ROWID
        """,
        # Results stored before this version: their tags, read from the payloads.
        lambda conn: _backfill_tags(conn),
        # Not fired by INSERT OR REPLACE (recursive_triggers is off: with it on,
        # every insert paid for the check); insert_results() handles replaced rows.
        """
        CREATE TRIGGER nuvom_results_tags_delete AFTER DELETE ON nuvom_results
        WHEN old.tags IS NOT NULL
        BEGIN
            DELETE FROM nuvom_job_tags
            WHERE tag IN (SELECT value FROM json_each(old.tags)) AND finished_at = old.finished_at AND job_id = old.id;
        END
        """,
        """
        CREATE TRIGGER nuvom_results_tags_update
        AFTER UPDATE OF tags, finished_at, status, func_name, id ON nuvom_results
        WHEN old.tags IS NOT NULL OR new.tags IS NOT NULL
        BEGIN
            DELETE FROM nuvom_job_tags
            WHERE tag IN (SELECT value FROM json_each(old.tags)) AND finished_at = old.finished_at AND job_id = old.id;
            INSERT OR IGNORE INTO nuvom_job_tags (tag, finished_at, job_id, status, func_name)
            SELECT value, new.finished_at, new.id, new.status, new.func_name FROM json_each(new.tags)
            WHERE type = 'text';
        END
        """,
    ),
    # Start marks (BaseJobQueue.mark_started): when the claim holding a row
    # started running it; NULL while it waits in a worker's buffer. An expired
    # claim counts as a lost run only if it had started.
    4: ("ALTER TABLE nuvom_queue ADD COLUMN started_at REAL",),
    # Worker presence (nuvom.sqlite._workers): one row per worker, replaced at
    # each heartbeat; ``drop_at`` is when a gone worker's row may be deleted.
    5: (
        """
        CREATE TABLE nuvom_workers (
            worker_id    TEXT PRIMARY KEY,
            heartbeat_at REAL NOT NULL,
            drop_at      REAL NOT NULL,
            info         TEXT NOT NULL
        )
        """,
    ),
    # Job control (nuvom.sqlite._control): named queues and priorities, unique
    # keys, workflow jobs waiting for their parents (state 2), cancel requests,
    # rate limits. Columns with defaults: the rows of earlier files are jobs of
    # the default queue at priority 0, holding no key, awaited by nothing.
    6: (
        "ALTER TABLE nuvom_queue ADD COLUMN queue TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE nuvom_queue ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE nuvom_queue ADD COLUMN unique_key TEXT",
        # When a cancel of the claimed job was asked for; NULL: none.
        "ALTER TABLE nuvom_queue ADD COLUMN cancel_at REAL",
        # 1 when a waiting job has an edge to this row in nuvom_deps: a row that
        # leaves the queue without it (nearly all) releases nothing, and costs nothing more.
        "ALTER TABLE nuvom_queue ADD COLUMN awaited INTEGER",
        # The claim's index: per queue, higher priority first, then due order
        # (the rowid, seq, ends every index: FIFO among equals). Jobs waiting
        # for their parents (state 2) are left out, so no claim ever sees them.
        # It replaces nuvom_queue_ready, so that a job costs the index updates it did.
        "DROP INDEX nuvom_queue_ready",
        "CREATE INDEX nuvom_queue_claim ON nuvom_queue (queue, priority DESC, ready_at) WHERE state < 2",
        # At most one queued-or-running job per key: the index is the guarantee.
        "CREATE UNIQUE INDEX nuvom_queue_unique ON nuvom_queue (unique_key) WHERE unique_key IS NOT NULL",
        # Workers ask for cancel requests every half second: this index holds only the asked ones.
        "CREATE INDEX nuvom_queue_cancels ON nuvom_queue (id) WHERE cancel_at IS NOT NULL",
        # One row per (parent still in the queue, job waiting for it).
        """
        CREATE TABLE nuvom_deps (
            parent TEXT NOT NULL,
            child  TEXT NOT NULL,
            PRIMARY KEY (parent, child)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX nuvom_deps_child ON nuvom_deps (child)",
        # Rate limits (GCRA): per key, when the next start would be due at the steady rate.
        """
        CREATE TABLE nuvom_rates (
            key TEXT PRIMARY KEY,
            tat REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
}
SCHEMA_VERSION = max(_MIGRATIONS)


def tags_column(tags: object) -> str | None:
    """The ``nuvom_results.tags`` value of a job's tags: a JSON array of the
    distinct string tags in order, or NULL (``None``) when there are none."""
    if not tags or not isinstance(tags, (list, tuple)):
        return None
    seen = list(dict.fromkeys(t for t in tags if isinstance(t, str)))
    return json.dumps(seen) if seen else None


def _require_json(conn: sqlite3.Connection) -> str | None:
    # The triggers and queries read the tags with json_each: built into SQLite since 3.38,
    # an option before. Refuse here, before the file changes, rather than fail
    # every store later.
    try:
        conn.execute("SELECT count(*) FROM json_each('[\"a\"]')").fetchone()
    except sqlite3.OperationalError:
        raise BackendError(
            f"this Python's SQLite {sqlite3.sqlite_version} lacks the JSON functions (json_each) that "
            "nuvom-sqlite's tag index needs; use a Python built with SQLite 3.38 or newer (python.org "
            "builds bundle one) or pick another backend"
        ) from None
    return None


def _backfill_tags(conn: sqlite3.Connection) -> str | None:
    """Fill the tags column and the tag index for results stored before schema
    version 3, from their payloads. Runs before the update trigger exists: the
    tag rows are written here directly, sorted in the index's order (docs/sqlite.md
    has the cost at 1M results). A payload that cannot be decoded keeps NULL: its row
    is left exactly as it was, it only cannot be found by tag. Returns what it did,
    for the migration's log line (nothing for a file without results)."""
    started = time.perf_counter()
    total = conn.execute("SELECT count(*) FROM nuvom_results").fetchone()[0]
    if total >= 100_000:
        # Said before it starts: at a million results this takes tens of seconds, the write lock held.
        log.warning(
            "indexing the tags of %d stored results (nuvom-sqlite schema version 3); other processes using "
            "this file wait until it is done",
            total,
        )
    updates: list[tuple[str, int]] = []
    index_rows: list[tuple[str, float, str, str, str]] = []
    unreadable = 0
    seen: dict[bytes, str | None] = {}
    parsed: dict[str, list[str]] = {}
    rows = conn.execute("SELECT rowid, id, finished_at, status, func_name, payload FROM nuvom_results")
    for rowid, job_id, finished_at, status, func_name, payload in rows:
        if not isinstance(payload, bytes):
            unreadable += 1
            continue
        value = _tags_of_payload(payload, seen)
        if value is _UNREADABLE:
            unreadable += 1
            continue
        if value is None:
            continue
        updates.append((value, rowid))
        tags = parsed.get(value)
        if tags is None:
            tags = json.loads(value)
            if len(parsed) < 10_000:
                parsed[value] = tags
        index_rows.extend((tag, finished_at, job_id, status, func_name) for tag in tags)
    read_secs = time.perf_counter() - started
    # Collected first: updating rows while a SELECT walks the same table may visit them twice.
    conn.executemany("UPDATE nuvom_results SET tags = ? WHERE rowid = ?", updates)
    index_rows.sort()
    conn.executemany(
        "INSERT OR IGNORE INTO nuvom_job_tags (tag, finished_at, job_id, status, func_name) VALUES (?, ?, ?, ?, ?)",
        index_rows,
    )
    if unreadable:
        log.warning("tag index: %d stored result(s) could not be decoded and cannot be found by tag", unreadable)
    if not total:
        return None
    return (
        f"tag index: {len(updates)} tagged result(s) of {total} indexed in {time.perf_counter() - started:.1f} s "
        f"({read_secs:.1f} s reading payloads)"
    )


# msgpack of the map key "tags" (a fixstr) and of that key followed by an empty array.
_TAGS_KEY = b"\xa4tags"
_NO_TAGS = b"\xa4tags\x90"
_UNREADABLE = "\0unreadable"


def _tags_of_payload(payload: bytes, seen: dict[bytes, str | None]) -> str | None:
    """The tags column of a stored job's payload, reading as little as it can:
    every job payload has the top-level key "tags", so when those bytes occur
    once they are the key, and the value is the one object after them (a fifth
    of the cost of decoding the job; ``seen`` keeps the answer for the packed
    tags already met, as most jobs share a few tag lists). Anything else is
    decoded in full."""
    if payload.count(_TAGS_KEY) == 1:
        if _NO_TAGS in payload:
            return None
        start = payload.index(_TAGS_KEY) + len(_TAGS_KEY)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(payload[start : start + 4096])
        try:
            tags = unpacker.unpack()
        except Exception:  # msgpack raises several unrelated types on bad input, or the tags are longer
            tags = None
        if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            packed = payload[start : start + unpacker.tell()]
            value = seen.get(packed, _UNREADABLE)
            if value is _UNREADABLE:
                value = tags_column(tags)
                if len(seen) < 10_000:
                    seen[packed] = value
            return value
    try:
        record = serialization.loads(payload)
    except SerializationError:
        return _UNREADABLE
    return tags_column(record.get("tags")) if isinstance(record, dict) else None


class SchemaTooNew(BackendError):
    """The file was written by a newer nuvom-sqlite."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version; 0 for a file nuvom-sqlite never set up."""
    try:
        row = conn.execute("SELECT max(version) FROM nuvom_schema").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    return int(row[0] or 0)


def ensure_schema(conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
    """Bring the file at ``path`` to :data:`SCHEMA_VERSION`, in one transaction."""
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise _too_new(path, version)
    if readonly:
        raise BackendError(
            f"SQLite database {path} is read-only and has schema version {version}, older than "
            f"{SCHEMA_VERSION} which this nuvom-sqlite needs; make the file writable once so that it "
            "can be upgraded"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS nuvom_schema "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL, by TEXT NOT NULL)"
        )
        version = schema_version(conn)  # another process may have migrated meanwhile
        if version > SCHEMA_VERSION:
            raise _too_new(path, version)
        notes: list[str] = []
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[number]:
                if isinstance(statement, str):
                    conn.execute(statement)
                else:
                    note = statement(conn)
                    if note:
                        notes.append(note)
            conn.execute(
                "INSERT INTO nuvom_schema (version, applied_at, by) VALUES (?, ?, ?)",
                (number, time.time(), "nuvom-sqlite"),
            )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    if version == 0:
        log.info("SQLite database %s: created schema version %d", path, SCHEMA_VERSION)
    elif version < SCHEMA_VERSION:
        log.info(
            "SQLite database %s: schema migrated from version %d to %d%s",
            path,
            version,
            SCHEMA_VERSION,
            f" ({'; '.join(notes)})" if notes else "",
        )


def _too_new(path: Path, version: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"SQLite database {path} has schema version {version}, written by a newer "
        f"nuvom-sqlite (this one knows versions up to {SCHEMA_VERSION}); upgrade nuvom-sqlite "
        "in this environment, or point NUVOM_SQLITE_DB_PATH / NUVOM_SQLITE_QUEUE_PATH at another file"
    )
