"""One PostgreSQL database and schema per process: the connection pool, the
reconnection policy, and the translation of errors into :class:`BackendError`.

Every statement goes through :meth:`Database.run`, which decides what a lost
connection means for the caller:

* a producer or reader (``patience`` = ``NUVOM_POSTGRES_RETRY_SECS``) retries
  with backoff for a few seconds, then gets a :class:`BackendError` naming the
  server (password redacted);
* a worker storing outcomes or handing jobs back retries much longer
  (``NUVOM_POSTGRES_WORKER_RETRY_SECS``), while its other threads keep running
  the jobs they hold.

Whether the server answers is shared by every backend object on the same
database and schema in the process (they share one :class:`Database`), so a
worker logs one line when the server goes away and one when it is back, not
one per thread or per failed statement. The pool's own reconnection messages
about these connections are logged at DEBUG for the same reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from nuvom.errors import BackendError
from nuvom.postgres._prepared import Prepared, PreparedConnection
from nuvom.postgres._schema import ensure_schema
from nuvom.postgres._settings import PostgresSettings, redact_url
from nuvom.postgres._sql import Statements
from psycopg_pool import ConnectionPool, PoolTimeout

__all__ = ["Database", "acquire", "is_transient", "release"]

log = logging.getLogger("nuvom.postgres")

T = TypeVar("T")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# One wait for a pooled connection; longer patience is made of several, so a
# server that came back is used within this long.
_GETCONN_SLICE = 1.0
# How long the pool keeps reconnecting in the background before it leaves the
# next attempt to the next caller: callers retry on their own schedule, so a
# server that is back is seen within about this long.
_POOL_RECONNECT_SECS = 1.0

# Messages of connection failures that retrying cannot mend.
_PERMANENT = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "pg_hba.conf",
    "permission denied",
    "invalid dsn",
    "invalid connection option",
    "invalid sslmode",
    "could not translate host name",
)


class PooledConnection(PreparedConnection):
    """The pool's connections: a class of their own, so that the pool's log
    records about them can be told from those about the application's own."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server could not be reached or went away": worth retrying."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc).lower()
        return not any(needle in text for needle in _PERMANENT)
    return isinstance(exc, (psycopg.InterfaceError, OSError))


class _QuietPool(logging.Filter):
    """Logs the pool's records about nuvom's pools and connections at DEBUG:
    nuvom reports the connection's state itself, once each way."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and any(_ours(arg) for arg in _args(record.args)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("psycopg.pool").isEnabledFor(logging.DEBUG)
        return True


def _args(args: Any) -> tuple[Any, ...]:
    return args if isinstance(args, tuple) else (args,)


def _ours(arg: Any) -> bool:
    return isinstance(arg, PooledConnection) or (isinstance(arg, str) and arg.startswith("nuvom-postgres"))


_quiet_lock = threading.Lock()


def _quiet_pool_logs() -> None:
    with _quiet_lock:
        logger = logging.getLogger("psycopg.pool")
        if not any(isinstance(f, _QuietPool) for f in logger.filters):
            logger.addFilter(_QuietPool())


class Database:
    """A pool of connections to one database, the schema nuvom uses in it, and
    whether the server answers."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.url = settings.postgres_url
        self.safe_url = redact_url(settings.postgres_url)
        self.schema = settings.postgres_schema
        self.sql = Statements(self.schema)
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, round(settings.postgres_connect_timeout_secs)),
            "fallback_application_name": "nuvom",
            # The hot statements are prepared once per connection (_prepared.py, or psycopg's prepare=True)
            # and planned once: the server's default re-plans each execution while it
            # compares plans, and planning the group write cost more than running it.
            # No JIT: each statement reads a page of rows, and a plan whose estimate
            # crossed jit_above_cost (the claim's walk of a queue's priorities) spent
            # tens of milliseconds compiling what runs in a tenth of one.
            "options": "-c plan_cache_mode=force_generic_plan -c jit=off",
            # The prepared statements (_prepared.py) send and read text as UTF-8.
            "client_encoding": "UTF8",
        }
        try:
            given = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.ProgrammingError as exc:
            raise BackendError(
                f"NUVOM_POSTGRES_URL={self.safe_url!r} is not a PostgreSQL URL ({_first_line(exc)}); expected "
                "postgresql://[user[:password]@]host[:port]/dbname or a libpq key=value string"
            ) from None
        if given.get("options"):
            # The URL's own options (``?options=-c statement_timeout=5000``) are kept,
            # after these: a keyword argument replaces the URL's value, and the
            # server applies the last of two settings of one name.
            self._connect_kwargs["options"] += f" {given['options']}"
        _quiet_pool_logs()
        self.pool: ConnectionPool[PooledConnection] = ConnectionPool(
            self.url,
            connection_class=PooledConnection,
            kwargs=self._connect_kwargs,
            min_size=1,
            max_size=settings.postgres_pool_size,
            name=f"nuvom-postgres-{id(self):x}",
            open=False,
            reconnect_timeout=_POOL_RECONNECT_SECS,
            num_workers=1,
        )
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._ready = False
        self._opened = False
        self._down_since: float | None = None
        self._prepared: dict[str, Prepared] = {}
        self.users = 0

    def __repr__(self) -> str:
        return f"<Database {self.safe_url} schema={self.schema}>"

    @property
    def down(self) -> bool:
        return self._down_since is not None

    # -- connections ------------------------------------------------------------
    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (autocommit), for a
        listener or the schema's set-up; raises psycopg's errors as they come."""
        return psycopg.connect(self.url, **self._connect_kwargs)

    def _prepare(self) -> None:
        """Bring the schema up to date once, on a connection of its own: a
        wrong password or a missing database is reported at once, with the
        server's words, rather than as a pool that never fills."""
        with self._prepare_lock:
            if self._ready:
                return
            with self.connect() as conn:
                ensure_schema(conn, self.schema, self.safe_url)
            if not self._opened:
                self.pool.open(wait=False)
                self._opened = True
            self._ready = True

    def ready(self) -> None:
        """Make sure the schema is up to date (raises psycopg's errors as they come)."""
        if not self._ready:
            self._prepare()

    def forget_schema(self) -> None:
        """Check the schema again at the next statement (it was dropped under us)."""
        self._ready = False

    # -- running statements -----------------------------------------------------
    def prepared(self, sql: str) -> Prepared:
        """The :class:`Prepared` form of one of the hot statements (made once)."""
        found = self._prepared.get(sql)
        if found is None:
            found = self._prepared[sql] = Prepared(sql)
        return found

    def run(self, what: str, fn: Callable[[psycopg.Connection[Any]], T], *, patience: float | None = None) -> T:
        """Call ``fn`` with a pooled connection (autocommit), retrying a lost
        connection for up to ``patience`` seconds (default ``NUVOM_POSTGRES_RETRY_SECS``).

        ``fn`` must be safe to call again after a failure: a statement whose
        reply was lost may have committed."""
        patience = self.settings.postgres_retry_secs if patience is None else patience
        deadline = time.monotonic() + patience
        pause = _BACKOFF_FIRST
        checked = False
        while True:
            try:
                if not self._ready:
                    self._prepare()
                left = deadline - time.monotonic()
                # getconn/putconn, not pool.connection(): that also enters the connection's own
                # context, a commit on the way out, which autocommit connections never need
                # (a visible share of a busy worker's time in this package, in py-spy).
                conn = self.pool.getconn(timeout=max(0.05, min(_GETCONN_SLICE, left)))
                try:
                    result = fn(conn)
                finally:
                    self.pool.putconn(conn)
            except BackendError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise self.error(exc, what) from None
                if isinstance(exc, PoolTimeout):
                    if self._diagnose(what) and time.monotonic() < deadline:
                        continue  # the server answers: the pool is reconnecting, wait for it
                elif not checked and not self.down and self._opened:
                    # Most often a pooled connection that died with a server restart
                    # since it was last used: drop every such one and try again, unlogged.
                    checked = True
                    self.pool.check()
                    continue
                self.mark_down(exc, what)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(
                        f"PostgreSQL at {self.safe_url} is unreachable ({_first_line(exc)}) while {what}, "
                        f"after retrying for {patience:g} s; check NUVOM_POSTGRES_URL and that the server is running"
                    ) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, _BACKOFF_MAX)
                continue
            self.mark_up()
            return result

    def _diagnose(self, what: str) -> bool:
        """The pool gave no connection in time: connect once ourselves, which
        says why (a wrong password is not worth waiting for); ``True`` if the
        server answers."""
        try:
            self.connect().close()
        except Exception as exc:
            if not is_transient(exc):
                raise self.error(exc, what) from None
            return False
        return True

    def error(self, exc: BaseException, what: str) -> BackendError:
        """The :class:`BackendError` for ``exc``, saying what was wrong and what to do."""
        text = _first_line(exc)
        low = text.lower()
        if "password" in low or "authentication" in low or "pg_hba.conf" in low:
            return BackendError(
                f"PostgreSQL at {self.safe_url} refused the credentials while {what} ({text}); "
                "check the user and password in NUVOM_POSTGRES_URL"
            )
        if "does not exist" in low and isinstance(exc, psycopg.OperationalError):
            return BackendError(
                f"PostgreSQL at {self.safe_url}: {text} (while {what}); create it or fix NUVOM_POSTGRES_URL"
            )
        if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
            return BackendError(
                f"PostgreSQL at {self.safe_url} is read-only (a standby, or default_transaction_read_only) "
                f"while {what}; point NUVOM_POSTGRES_URL at the primary"
            )
        if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
            self.forget_schema()
        return BackendError(f"PostgreSQL at {self.safe_url} failed while {what}: {type(exc).__name__}: {text}")

    def mark_down(self, exc: BaseException, what: str) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning(
            "lost the connection to PostgreSQL at %s while %s (%s); retrying with backoff",
            self.safe_url,
            what,
            _first_line(exc),
        )

    def mark_up(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("reconnected to PostgreSQL at %s after %.1f s", self.safe_url, time.monotonic() - since)

    def close(self) -> None:
        if self._opened:
            self.pool.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# Backend objects on the same database and schema share one Database (one pool, one state).
_shared_lock = threading.Lock()
_shared: dict[tuple[Any, ...], Database] = {}


def _key(settings: PostgresSettings) -> tuple[Any, ...]:
    return tuple(settings.model_dump(exclude={"result_ttl_secs"}).items())


def acquire(settings: PostgresSettings) -> Database:
    """The process's :class:`Database` for these settings, created on first use."""
    key = _key(settings)
    with _shared_lock:
        db = _shared.get(key)
        if db is None:
            db = _shared[key] = Database(settings)
        db.users += 1
        return db


def release(db: Database) -> None:
    """Give back a database from :func:`acquire`; the last user closes it."""
    with _shared_lock:
        db.users -= 1
        if db.users > 0:
            return
        for key, value in list(_shared.items()):
            if value is db:
                del _shared[key]
    db.close()
