"""One Redis client per server and process, with the reconnection policy.

Every call to Redis goes through :meth:`Connection.run`, which decides what a
lost connection means for the caller:

* a producer or reader (``patience`` = ``NUVOM_REDIS_RETRY_SECS``) retries with
  backoff for a few seconds, then gets a :class:`BackendError` naming the URL
  (password redacted);
* a worker storing outcomes or handing jobs back retries much longer
  (``NUVOM_REDIS_WORKER_RETRY_SECS``), while its other threads keep running
  the jobs they hold.

The connection's state (up / down) is shared by every backend object on the
same server in the process, so a worker logs one line when the server goes
away and one when it is back, not one per thread or per failed command.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nuvom.errors import BackendError
from nuvom.redis._settings import RedisSettings, redact_url

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

__all__ = ["TRANSIENT", "Connection", "acquire", "evalsha", "pack", "pipelined", "release"]

log = logging.getLogger("nuvom.redis")

T = TypeVar("T")

#: Errors that mean "the server could not be reached or answered too late":
#: worth retrying. A wrong password is a ConnectionError to redis-py, but
#: retrying it cannot help.
TRANSIENT: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) and not isinstance(exc, redis.AuthenticationError)


class Connection:
    """A client (with its connection pool) and whether the server answers."""

    def __init__(self, settings: RedisSettings) -> None:
        self.url = settings.redis_url
        self.safe_url = redact_url(settings.redis_url)
        self.settings = settings
        try:
            # redis-py's own retries are off: this class owns the policy, so a
            # producer's bounded wait is the documented one, not 3x that.
            self.client: redis.Redis = redis.Redis.from_url(
                settings.redis_url,
                socket_connect_timeout=settings.redis_connect_timeout_secs,
                socket_timeout=settings.redis_socket_timeout_secs,
                socket_keepalive=True,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise BackendError(
                f"NUVOM_REDIS_URL={self.safe_url!r} is not a Redis URL ({exc}); "
                "expected redis://[user:password@]host:port/db, rediss://... or unix:///path"
            ) from None
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._local = threading.local()
        self.users = 0

    def __repr__(self) -> str:
        return f"<Connection {self.safe_url}>"

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def own(self) -> redis.Redis:
        """This thread's own client, holding one connection of the pool.

        The hot path (enqueue, claim, complete) uses it: a pooled command checks
        a connection out and back in, and checks it with a ``poll()`` system
        call, every time; that was 15 % of a worker's CPU on trivial jobs. A
        thread that ends drops its client, which gives the connection back."""
        client: redis.Redis | None = getattr(self._local, "client", None)
        if client is None:
            client = redis.Redis(connection_pool=self.client.connection_pool, single_connection_client=True)
            self._local.client = client
        return client

    def stale(self, retried: bool) -> bool:
        """Whether a failed command should be tried again at once, unlogged: the
        first failure while the server was answering is most often a thread's own
        connection that died with a server restart since its last command (redis-py
        has dropped it; the retry opens a new one). A real outage fails again."""
        return not retried and self._down_since is None

    def mark_down(self, exc: BaseException, what: str) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning(
            "lost the connection to Redis at %s while %s (%s: %s); retrying with backoff",
            self.safe_url,
            what,
            type(exc).__name__,
            exc,
        )

    def mark_up(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("reconnected to Redis at %s after %.1f s", self.safe_url, time.monotonic() - since)

    def run(self, what: str, fn: Callable[[], T], *, patience: float | None = None) -> T:
        """Call ``fn`` (which talks to Redis), retrying a lost connection for up
        to ``patience`` seconds (default ``NUVOM_REDIS_RETRY_SECS``)."""
        patience = self.settings.redis_retry_secs if patience is None else patience
        deadline = time.monotonic() + patience
        pause = _BACKOFF_FIRST
        stale_retried = False
        while True:
            try:
                result = fn()
            except redis.AuthenticationError as exc:
                raise BackendError(
                    f"Redis at {self.safe_url} refused the credentials while {what} ({exc}); "
                    "check the user and password in NUVOM_REDIS_URL"
                ) from None
            except TRANSIENT as exc:
                if self.stale(stale_retried):
                    stale_retried = True
                    continue
                self.mark_down(exc, what)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendError(
                        f"Redis at {self.safe_url} is unreachable ({type(exc).__name__}: {exc}) while {what}, "
                        f"after retrying for {patience:g} s; check NUVOM_REDIS_URL and that the server is running"
                    ) from None
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, _BACKOFF_MAX)
                continue
            except redis.RedisError as exc:
                raise BackendError(
                    f"Redis at {self.safe_url} failed while {what}: {type(exc).__name__}: {exc}"
                ) from None
            self.mark_up()
            return result

    def close(self) -> None:
        self.client.close()


# Backend objects on the same server share one client (one pool, one state).
_shared_lock = threading.Lock()
_shared: dict[tuple[Any, ...], Connection] = {}


def _key(settings: RedisSettings) -> tuple[Any, ...]:
    return (
        settings.redis_url,
        settings.redis_connect_timeout_secs,
        settings.redis_socket_timeout_secs,
        settings.redis_retry_secs,
        settings.redis_worker_retry_secs,
    )


def acquire(settings: RedisSettings) -> Connection:
    """The process's connection to this server, created on first use."""
    key = _key(settings)
    with _shared_lock:
        conn = _shared.get(key)
        if conn is None:
            conn = _shared[key] = Connection(settings)
        conn.users += 1
        return conn


def release(conn: Connection) -> None:
    """Give back a connection from :func:`acquire`; the last user closes it."""
    with _shared_lock:
        conn.users -= 1
        if conn.users > 0:
            return
        for key, value in list(_shared.items()):
            if value is conn:
                del _shared[key]
    conn.close()


def _hiredis_packer() -> Any:
    try:
        return importlib.import_module("hiredis").pack_command
    except (ImportError, AttributeError):  # the optional extra is not installed: redis-py packs
        return None


_pack_command = _hiredis_packer()


def evalsha(client: Any, script: Any, args: list[Any]) -> Any:
    """One registered script's EVALSHA on ``client``'s own connection. On every
    job's path: redis-py's command machinery (and its Script's) costs about as
    much CPU as the trip. A server without the script (restarted, flushed) ran
    nothing: the script is sent again, loading it."""
    [reply] = pipelined(client, [("EVALSHA", script.sha, 0, *args)])
    if isinstance(reply, NoScriptError):
        return script(args=args, client=client)
    if isinstance(reply, Exception):
        raise reply
    return reply


def pack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """The commands in Redis's protocol: hiredis's packer when installed (redis-py's
    own converts each argument in Python first), else redis-py's."""
    if _pack_command is None:
        return conn.pack_commands(commands)
    return [b"".join([_pack_command(command) for command in commands])]


def pipelined(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` at once on ``client``'s own connection and read every
    reply; an error reply (e.g. a script the server lacks) is returned, not raised."""
    conn: Any = client.connection  # redis-py's Connection is untyped
    replies: list[Any] = []
    try:
        conn.send_packed_command(pack(conn, commands))
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        conn.disconnect()  # a reply may still be on its way: this connection is out of step
        raise
    return replies
