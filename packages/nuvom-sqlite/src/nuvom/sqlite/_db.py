"""One SQLite file: connections (one per thread), pragmas, writes (group
commit), and the translation of SQLite's errors into :class:`BackendError`
messages that say what is wrong with the file and what to do. The schema and
its migrations are in :mod:`nuvom.sqlite._schema`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from nuvom.errors import BackendError
from nuvom.sqlite._files import Connections, Handle, shared_file
from nuvom.sqlite._schema import ensure_schema

__all__ = ["Database"]

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
        self._lock = threading.Lock()
        # Group commit (combined): the writes waiting to be committed, and the
        # lock held by the thread committing them.
        self._pending: list[_Write[Any]] = []
        self._pending_lock = threading.Lock()
        self._combine_lock = threading.Lock()
        self._connections = Connections(self._open_kind)
        # Shared with the other Databases of this process on the same file (_files).
        self._file = shared_file(self.path)
        self._file.connections.add(self._connections)
        self._ready = False
        # Written beside the file once SQLite reports it corrupt, so that every
        # process (producers too, whose inserts may still succeed) refuses to
        # write to it: a corrupt file must not take jobs that no worker runs.
        self.corrupt_marker = Path(f"{self.path}.corrupt")
        self._corrupt_marker = str(self.corrupt_marker)

    def __repr__(self) -> str:
        return f"<Database {self.path}>"

    @property
    def readonly(self) -> bool:
        """Writes are refused until the file is seen writable again (looked at once a second)."""
        return self._file.readonly

    # -- connections ----------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema checked) on first use,
        with its long busy timeout."""
        return self._waiting(self._connections.get("conn"))

    def _open_kind(self, kind: str) -> sqlite3.Connection:
        if kind == "conn":
            return self._open()
        # write_one's connection: busy timeout zero, it waits itself.
        self.connection()  # the schema checked and migrated, through the usual path
        conn = self._open()
        try:
            conn.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc, "opening") from None
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
        if readonly:
            self._file.mark_readonly()
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
                            ensure_schema(conn, self.path, readonly)
                            self._ready = True
                return
            except sqlite3.OperationalError as exc:
                if _code(exc) not in (_BUSY, _LOCKED) or time.monotonic() > deadline:
                    raise
                time.sleep(0.002)

    def close(self) -> None:
        """Close every connection of every thread (one in use when that use
        ends); the next use opens new ones."""
        self._connections.retire_all()

    def release_thread(self) -> None:
        """Close this thread's connections: for a helper thread about to exit,
        whose connections would otherwise stay open until :meth:`close`."""
        self._connections.release_thread()

    # -- transactions ---------------------------------------------------------
    @contextlib.contextmanager
    def write(self, what: str = "writing") -> Iterator[sqlite3.Connection]:
        """A short write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``)."""
        self._refuse_if_corrupt()
        if self._file.readonly and not self._file.writable_again(self.path):
            raise self._refused(what)
        handle = self._connections.use()
        conn = handle.conn
        try:
            self._begin(handle, what)
            try:
                yield conn
                # Waits here if it must (a file not in WAL mode waits for its
                # readers): the busy timeout may be zero (_begin). A COMMIT that
                # met SQLITE_BUSY left the transaction open, to be tried again.
                self._spin(conn, "COMMIT", (), what)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self.error(exc, what) from None
                raise
        finally:
            self._connections.release(handle)
        if self._file.refusing:
            self._file.wrote(self.path)

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
        if w.one_statement and not self._file.readonly:
            self._refuse_if_corrupt()
            handle = self._connections.use()
            try:
                value = w.fn(self._waiting(handle))
            except sqlite3.Error as exc:
                raise self.error(exc, w.what) from None
            finally:
                self._connections.release(handle)
            if self._file.refusing:
                self._file.wrote(self.path)
            return value
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
        if self._file.readonly and not self._file.writable_again(self.path):
            raise self._refused(what)
        # This thread's second connection, whose busy timeout is zero: it waits here.
        handle = self._connections.use("nowait")
        try:
            self._spin(handle.conn, sql, params, what)
        finally:
            self._connections.release(handle)
        if self._file.refusing:
            self._file.wrote(self.path)

    def _begin(self, handle: Handle, what: str) -> None:
        """``BEGIN IMMEDIATE``, the write lock waited for here as in
        :meth:`write_one`: SQLite's busy handler sleeps 1, 2, 5, 10 ms... while
        another process's transaction holds the lock for a fraction of a
        millisecond, and two workers on one file took turns at a commit or two
        a millisecond. Inside the transaction nothing waits for a lock (WAL:
        the write lock is held, readers block no one).

        The busy timeout stays zero after the transaction, until a read needs
        it back (:meth:`_waiting`): a worker's writer thread only writes, and two
        ``PRAGMA busy_timeout`` a transaction were two more statements, each a
        release of the GIL that the worker's other threads took (8 % of a
        SQLite drain's throughput, measured)."""
        if handle.waits:
            handle.conn.execute("PRAGMA busy_timeout=0")
            handle.waits = False
        self._spin(handle.conn, "BEGIN IMMEDIATE", (), what)

    def _waiting(self, handle: Handle) -> sqlite3.Connection:
        """The handle's connection with its long busy timeout (statements that
        may meet another connection's lock wait in SQLite's busy handler)."""
        if not handle.waits:
            handle.conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            handle.waits = True
        return handle.conn

    def _spin(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any], what: str) -> None:
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

    def _refused(self, what: str) -> BackendError:
        self._file.refuse(self.path)  # logged once per read-only spell
        return self.readonly_error(what)

    def read(self, fn: Callable[[sqlite3.Connection], T], what: str = "reading") -> T:
        """Run ``fn(conn)`` (one or more reads); SQLite errors become BackendError."""
        handle = self._connections.use()
        try:
            return fn(self._waiting(handle))
        except sqlite3.Error as exc:
            raise self.error(exc, what) from None
        finally:
            self._connections.release(handle)

    def data_version(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version):
        a cheap way for a poller to know that looking again is worth it. Also
        changes when this thread's connection was replaced (a file writable
        again, :meth:`close`): a new connection counts from its own start, and
        could repeat the value a poller last saw on the old one."""
        handle = self._connections.use()
        try:
            return (handle.serial << 32) + int(handle.conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self.error(exc, "polling") from None
        finally:
            self._connections.release(handle)

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
            # Made read-only while open (or a connection of this process was opened
            # while it was, see _files): look again later, as for a file opened read-only.
            self._file.mark_readonly()
            return self._refused(what)
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
                self._file.mark_readonly()
                return self._refused(what)
            return BackendError(
                f"cannot open SQLite database {path} ({detail}); check that its folder exists and is "
                "writable by this user"
            )
        if code == _IOERR:
            return BackendError(f"disk I/O error on SQLite database {path} while {what} ({detail})")
        return BackendError(f"SQLite database {path}: {what} failed ({detail})")
