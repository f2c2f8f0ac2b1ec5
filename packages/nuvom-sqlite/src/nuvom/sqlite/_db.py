"""One SQLite file: connections (one per thread), pragmas, the schema and its
migrations, and the translation of SQLite's errors into :class:`BackendError`
messages that say what is wrong with the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgpack  # type: ignore[import-untyped]
from nuvom import serialization
from nuvom.errors import BackendError, SerializationError

__all__ = ["SCHEMA_VERSION", "Database", "SchemaTooNew"]

log = logging.getLogger("nuvom.sqlite")

T = TypeVar("T")

#: How long a statement waits for another process's write lock before giving
#: up. Write transactions here last well under a millisecond, so reaching this
#: means another program holds the file locked.
BUSY_TIMEOUT_SECS = 60.0
# Database.write_one's retries while another connection writes: from 50 us,
# doubling, to 1 ms (a write transaction here lasts well under a millisecond).
_SPIN_FIRST = 50e-6
_SPIN_MAX = 1e-3
#: WAL pages past which a commit checkpoints (SQLite's default is 1,000).
_WAL_CHECKPOINT_PAGES = 10_000

# -- schema -------------------------------------------------------------------
# Migrations are applied in order, each in the transaction that records it in
# nuvom_schema. Never edit a released one: append a new version.
_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], None], ...]] = {
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
}
SCHEMA_VERSION = max(_MIGRATIONS)


def tags_column(tags: object) -> str | None:
    """The ``nuvom_results.tags`` value of a job's tags: a JSON array of the
    distinct string tags in order, or NULL (``None``) when there are none."""
    if not tags or not isinstance(tags, (list, tuple)):
        return None
    seen = list(dict.fromkeys(t for t in tags if isinstance(t, str)))
    return json.dumps(seen) if seen else None


def _require_json(conn: sqlite3.Connection) -> None:
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


def _backfill_tags(conn: sqlite3.Connection) -> None:
    """Fill the tags column and the tag index for results stored before schema
    version 3, from their payloads. Runs before the update trigger exists: the
    tag rows are written here directly, sorted in the index's order (docs/sqlite.md
    has the cost at 1M results). A payload that cannot be decoded keeps NULL: its row
    is left exactly as it was, it only cannot be found by tag."""
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
    log.info(
        "tag index: %d tagged result(s) indexed in %.1f s (%.1f s reading payloads)",
        len(updates),
        time.perf_counter() - started,
        read_secs,
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


#: Oldest SQLite library this works with (``DELETE ... RETURNING``).
MIN_SQLITE = (3, 35, 0)

# Primary result codes (sqlite3.h).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return int(code) & 0xFF
    text = str(exc).lower()  # Python 3.10: the message is all there is
    for needle, guess in (
        ("locked", _BUSY),
        ("readonly", _READONLY),
        ("disk is full", _FULL),
        ("not a database", _NOTADB),
        ("malformed", _CORRUPT),
        ("unable to open", _CANTOPEN),
        ("disk i/o", _IOERR),
    ):
        if needle in text:
            return guess
    return None


class SchemaTooNew(BackendError):
    """The file was written by a newer nuvom-sqlite."""


class _Write(Generic[T]):
    """One write queued for :meth:`Database.combined`."""

    __slots__ = ("done", "error", "fn", "one_statement", "value", "what")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], what: str, one_statement: bool) -> None:
        self.fn, self.what, self.one_statement = fn, what, one_statement
        self.done = False
        self.value: T | None = None
        self.error: Exception | None = None


class Database:
    """A SQLite file shared by threads of this process and by other processes.

    Every thread gets its own connection (``sqlite3`` connections must not be
    used by two threads at once, and separate connections let reads run in
    parallel with a write under WAL). Writes go through :meth:`write`, which
    holds ``BEGIN IMMEDIATE`` so that a transaction never has to upgrade a read
    lock, the case where SQLite reports "database is locked" at once instead
    of waiting.
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = BUSY_TIMEOUT_SECS) -> None:
        self.path = Path(path).expanduser().absolute()
        self.busy_timeout = busy_timeout
        self.readonly = False
        self._local = threading.local()
        self._lock = threading.Lock()
        # Group commit (combined): the writes waiting to be committed, and the
        # lock held by the thread committing them.
        self._pending: list[_Write[Any]] = []
        self._pending_lock = threading.Lock()
        self._combine_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._generation = 0
        self._ready = False
        # Written beside the file once SQLite reports it corrupt, so that every
        # process (producers too, whose inserts may still succeed) refuses to
        # write to it: a corrupt file must not take jobs that no worker runs.
        self.corrupt_marker = Path(f"{self.path}.corrupt")
        self._corrupt_marker = str(self.corrupt_marker)
        self._next_writable_check = 0.0

    def __repr__(self) -> str:
        return f"<Database {self.path}>"

    # -- connections ----------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema checked) on first use."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.generation == self._generation:
            return conn
        conn = self._open()
        local.conn, local.generation = conn, self._generation
        return conn

    def _open(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise BackendError(
                f"nuvom-sqlite needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer, but this Python uses "
                f"SQLite {sqlite3.sqlite_version}; use a Python built with a newer SQLite (python.org builds "
                "bundle one) or pick another backend"
            )
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the folder {path.parent} for the SQLite database ({exc.strerror}); "
                "create it or point NUVOM_SQLITE_DB_PATH / NUVOM_DATA_DIR somewhere writable"
            ) from None
        if path.is_dir():
            raise BackendError(f"{path} is a folder, not a SQLite database file; point NUVOM_SQLITE_DB_PATH at a file")
        # root passes access() checks on a 0444 file but not on an immutable one.
        readonly = path.exists() and not os.access(path, os.W_OK)
        try:
            if readonly:
                conn = sqlite3.connect(
                    f"{path.as_uri()}?mode=ro",
                    uri=True,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(
                    str(path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as exc:
            raise self.error(exc, "opening") from None
        try:
            self._prepare(conn, readonly)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self.error(exc, "opening") from None
            raise
        self.readonly = readonly
        with self._lock:
            self._connections.append(conn)
        return conn

    def _prepare(self, conn: sqlite3.Connection, readonly: bool) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite reports
        # "database is locked" at once (no busy wait) when several processes
        # open a new file together; so retry for as long as the busy timeout.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if not readonly:
                    # WAL: readers never block the writer nor it them; the mode is
                    # stored in the file, so this is a no-op after the first time.
                    conn.execute("PRAGMA journal_mode=WAL").fetchone()
                    # NORMAL is safe with WAL: a power loss may undo the last
                    # transactions but never corrupts the file (docs/sqlite.md).
                    conn.execute("PRAGMA synchronous=NORMAL")
                    # A commit that finds the WAL over this many pages checkpoints it
                    # there and then: copies it into the file, with two fsyncs, while
                    # the other threads' writes wait (docs/sqlite.md). SQLite's default
                    # (1,000 pages) did that every ~0.3 s of a busy worker; measured,
                    # 10,000 (a 40 MB WAL at most) drained 1.17-1.46x faster (a hot
                    # page is copied once per checkpoint, however often it changed).
                    conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
                conn.execute("PRAGMA temp_store=MEMORY")
                if not self._ready:
                    with self._lock:
                        if not self._ready:
                            self._ensure_schema(conn, readonly)
                            self._ready = True
                return
            except sqlite3.OperationalError as exc:
                if _code(exc) not in (_BUSY, _LOCKED) or time.monotonic() > deadline:
                    raise
                time.sleep(0.002)

    def close(self) -> None:
        """Close every connection of every thread; the next use opens new ones."""
        with self._lock:
            conns, self._connections = self._connections, []
            self._generation += 1
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def release_thread(self) -> None:
        """Close this thread's connections: for a helper thread about to exit,
        whose connections would otherwise stay open until :meth:`close`."""
        local = self._local
        for attr in ("conn", "nowait"):
            conn: sqlite3.Connection | None = getattr(local, attr, None)
            if conn is None:
                continue
            setattr(local, attr, None)
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- transactions ---------------------------------------------------------
    @contextlib.contextmanager
    def write(self, what: str = "writing") -> Iterator[sqlite3.Connection]:
        """A short write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``)."""
        self._refuse_if_corrupt()
        conn = self.connection()
        if self.readonly:
            if not self._writable_again():
                raise self.readonly_error(what)
            conn = self.connection()
        # No lock of our own around this: the writes of a worker's hot path
        # (claims, start marks, completions) go through combined(), which
        # commits one at a time by construction; the rare others wait in
        # SQLite's busy handler.
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self.error(exc, what) from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self.error(exc, what) from None
            raise

    def combined(
        self, fn: Callable[[sqlite3.Connection], T], what: str = "writing", *, one_statement: bool = False
    ) -> T:
        """``fn(conn)`` in a write transaction committed when this returns, shared
        with the other threads of this process writing through here at the
        same moment (group commit).

        A worker's threads each mark a job started, claim and complete, every
        one of which must be committed before the thread goes on. One commit
        costs far more than the statements in it (the WAL frames of every page
        touched, a write lock, syscalls), and threads that each commit their
        own contend for the lock and sleep in SQLite's busy handler. Here a
        thread queues its write and whoever holds the combining lock commits
        everything queued in one transaction; the others find theirs done.

        ``fn`` must only run SQL and return what the caller needs: it runs
        inside a transaction it does not own, and runs again alone (its own
        transaction) if the shared one fails, so that an error reaches only
        the write that caused it. ``one_statement``: ``fn`` runs a single
        statement, which alone needs no ``BEGIN``/``COMMIT`` (autocommit).
        """
        write = _Write(fn, what, one_statement)
        with self._pending_lock:
            self._pending.append(write)
        with self._combine_lock:
            if not write.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit(batch)
        if write.error is not None:
            raise write.error
        return write.value  # type: ignore[return-value]  # set when done without error

    def _commit(self, batch: list[_Write[Any]]) -> None:
        """Commit ``batch`` (every write in it done, with its value or error, when this returns)."""
        try:
            if len(batch) > 1:
                failed: _Write[Any] | None = None
                try:
                    with self.write(batch[0].what) as conn:
                        values = []
                        for w in batch:
                            failed = w
                            values.append(w.fn(conn))
                        failed = None
                except Exception as exc:
                    if failed is None:
                        # BEGIN or COMMIT failed (locked past the busy timeout, disk
                        # full, read-only, corrupt): every write would fail alike.
                        for w in batch:
                            w.error, w.done = exc, True
                        return
                    # One write's SQL failed and the transaction was rolled back:
                    # each alone below, so that only that write's caller gets its error.
                else:
                    for w, value in zip(batch, values, strict=True):
                        w.value, w.done = value, True
                    return
            for w in batch:
                try:
                    w.value = self._alone(w)
                except Exception as exc:
                    w.error = exc
                w.done = True
        finally:
            for w in batch:
                if not w.done:  # interrupted (BaseException): never leave a caller without an answer
                    w.error = BackendError(f"{self.path}: {w.what} was interrupted")
                    w.done = True

    def _alone(self, w: _Write[T]) -> T:
        if w.one_statement and not self.readonly:
            self._refuse_if_corrupt()
            try:
                return w.fn(self.connection())
            except sqlite3.Error as exc:
                raise self.error(exc, w.what) from None
        with self.write(w.what) as conn:  # reopens a file become writable, else says why not
            return w.fn(conn)

    def write_one(self, sql: str, params: Sequence[Any], what: str = "writing") -> None:
        """One statement as its own transaction (autocommit): the cheapest durable
        write, for ``.delay()``; committed when this returns.

        While another connection holds the write lock it retries every 50 us
        to 1 ms, up to the busy timeout. SQLite's own busy handler sleeps 1, 2,
        5, 10 ms...: measured with a worker process busy on the same file, one
        ``.delay()`` in six waited over 1 ms and the mean was 4-10x the median.
        A statement that got SQLITE_BUSY did nothing, so trying it again is safe.
        """
        self._refuse_if_corrupt()
        if self.readonly and not self._writable_again():
            raise self.readonly_error(what)
        conn = self._nowait_connection()
        pause, deadline = _SPIN_FIRST, 0.0
        while True:
            try:
                conn.execute(sql, params)
                return
            except sqlite3.Error as exc:
                if _code(exc) not in (_BUSY, _LOCKED):
                    raise self.error(exc, what) from None
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.busy_timeout
                elif now > deadline:
                    raise self.error(exc, what) from None
            time.sleep(pause)
            pause = min(pause * 2, _SPIN_MAX)

    def _nowait_connection(self) -> sqlite3.Connection:
        """This thread's second connection, whose busy timeout is zero (write_one waits itself)."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "nowait", None)
        if conn is not None and local.nowait_generation == self._generation:
            return conn
        self.connection()  # the schema checked and migrated, through the usual path
        conn = self._open()
        try:
            conn.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error as exc:
            raise self.error(exc, "opening") from None
        local.nowait, local.nowait_generation = conn, self._generation
        return conn

    def _refuse_if_corrupt(self) -> None:
        """Raise the recorded corruption error if the marker names this file
        (a marker left from a file since moved aside is removed)."""
        if not os.access(self._corrupt_marker, os.F_OK):
            # The common case, on every write: one syscall and no exception
            # (a failed read_text measured ~10 us of a ~100 us .delay()).
            return
        try:
            text = self.corrupt_marker.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return  # no marker: the common case costs one failed open
        inode, _, message = text.partition("\n")
        try:
            current = str(os.stat(self.path).st_ino)
        except OSError:
            current = ""
        if inode == current:
            raise BackendError(message)
        with contextlib.suppress(OSError):
            self.corrupt_marker.unlink()

    def _mark_corrupt(self, error: BackendError) -> None:
        if self.corrupt_marker.exists():
            return
        try:
            inode = os.stat(self.path).st_ino
            self.corrupt_marker.write_text(f"{inode}\n{error}", encoding="utf-8")
        except OSError:
            pass
        log.error("%s", error)

    def _writable_again(self) -> bool:
        """Opened read-only: has the file become writable since? Looked at
        at most once a second; if so, every thread opens a writable connection."""
        now = time.monotonic()
        if now < self._next_writable_check:
            return False
        self._next_writable_check = now + 1.0
        path = self.path
        if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            return False
        with self._lock:
            self._generation += 1  # each thread's next use opens a new connection
        self.readonly = False
        log.warning("SQLite database %s is writable again", path)
        return True

    def read(self, fn: Callable[[sqlite3.Connection], T], what: str = "reading") -> T:
        """Run ``fn(conn)`` (one or more reads); SQLite errors become BackendError."""
        conn = self.connection()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise self.error(exc, what) from None

    def data_version(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version):
        a cheap way for a poller to know that looking again is worth it."""
        try:
            return int(self.connection().execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self.error(exc, "polling") from None

    # -- schema ---------------------------------------------------------------
    def _schema_version(self, conn: sqlite3.Connection) -> int:
        try:
            row = conn.execute("SELECT max(version) FROM nuvom_schema").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
        return int(row[0] or 0)

    def _ensure_schema(self, conn: sqlite3.Connection, readonly: bool) -> None:
        version = self._schema_version(conn)
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise self._too_new(version)
        if readonly:
            raise BackendError(
                f"SQLite database {self.path} is read-only and has schema version {version}, older than "
                f"{SCHEMA_VERSION} which this nuvom-sqlite needs; make the file writable once so that it "
                "can be upgraded"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS nuvom_schema "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL, by TEXT NOT NULL)"
            )
            version = self._schema_version(conn)  # another process may have migrated meanwhile
            if version > SCHEMA_VERSION:
                raise self._too_new(version)
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[number]:
                    if isinstance(statement, str):
                        conn.execute(statement)
                    else:
                        statement(conn)
                conn.execute(
                    "INSERT INTO nuvom_schema (version, applied_at, by) VALUES (?, ?, ?)",
                    (number, time.time(), "nuvom-sqlite"),
                )
                log.info("SQLite database %s: schema migrated to version %d", self.path, number)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _too_new(self, version: int) -> SchemaTooNew:
        return SchemaTooNew(
            f"SQLite database {self.path} has schema version {version}, written by a newer "
            f"nuvom-sqlite (this one knows versions up to {SCHEMA_VERSION}); upgrade nuvom-sqlite "
            "in this environment, or point NUVOM_SQLITE_DB_PATH / NUVOM_SQLITE_QUEUE_PATH at another file"
        )

    # -- errors ---------------------------------------------------------------
    def readonly_error(self, what: str) -> BackendError:
        return BackendError(
            f"SQLite database {self.path} is read-only: {what} needs write access; fix the file's "
            "permissions (and those of its folder, where SQLite keeps the -wal and -shm files) or "
            "point NUVOM_SQLITE_DB_PATH / NUVOM_SQLITE_QUEUE_PATH at a writable file"
        )

    def error(self, exc: sqlite3.Error, what: str) -> BackendError:
        """Turn a SQLite error into a BackendError that names the file and the fix."""
        code = _code(exc)
        path = self.path
        detail = f"{type(exc).__name__}: {exc}"
        if code == _READONLY:
            # Made read-only while open: look again later, as for a file opened read-only.
            self.readonly = True
            return self.readonly_error(what)
        if code == _FULL:
            return BackendError(
                f"SQLite database {path}: the disk is full while {what} ({detail}); free space on the "
                "disk holding it, or prune old results (NUVOM_RESULT_TTL_SECS)"
            )
        if code in (_CORRUPT, _NOTADB):
            error = BackendError(
                f"{path} is not a usable SQLite database: the file is corrupt or not a database "
                f"({detail}); writes are refused until it is replaced: stop the workers, move it aside "
                f"(it may be recoverable with the sqlite3 shell's .recover, see docs/sqlite.md) and "
                f"nuvom will create a new one"
            )
            self._mark_corrupt(error)
            return error
        if code in (_BUSY, _LOCKED):
            return BackendError(
                f"SQLite database {path} stayed locked by another connection for more than "
                f"{self.busy_timeout:g} s while {what}; a program holds a long transaction open on it "
                "(a sqlite3 shell, a backup tool?)"
            )
        if code == _CANTOPEN:
            folder = os.path.dirname(os.path.abspath(path))
            # SQLite cannot say why; a folder it may not write to (a read-only mount,
            # permissions) is the usual reason, and needs the read-only message.
            if os.path.isdir(folder) and not os.access(folder, os.W_OK):
                return self.readonly_error(what)
            return BackendError(
                f"cannot open SQLite database {path} ({detail}); check that its folder exists and is "
                "writable by this user"
            )
        if code == _IOERR:
            return BackendError(f"disk I/O error on SQLite database {path} while {what} ({detail})")
        return BackendError(f"SQLite database {path}: {what} failed ({detail})")
