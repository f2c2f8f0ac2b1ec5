"""nuvom-postgres's settings: ``NUVOM_POSTGRES_*`` and ``NUVOM_RESULT_TTL_SECS``."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from nuvom.config import EnvSettings, read_settings
from pydantic import Field

__all__ = ["DEFAULT_URL", "PostgresSettings", "load_postgres_settings", "public_url", "redact_url"]

DEFAULT_URL = "postgresql://localhost:5432/postgres"

# A schema name used unquoted in messages and quoted in SQL: letters, digits and
# underscores, at most PostgreSQL's 63 bytes, so that no quoting rule can surprise.
_SCHEMA = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class PostgresSettings(EnvSettings):
    """Read from ``NUVOM_*`` variables, ``.env``, then defaults, like core's settings."""

    postgres_url: str = Field(
        DEFAULT_URL,
        description="Server and database: postgresql://[user[:password]@]host[:port]/dbname[?sslmode=...], or a "
        "libpq key=value string; what it leaves out comes from libpq's PG* variables.",
    )
    postgres_schema: str = Field(
        "nuvom",
        pattern=_SCHEMA,
        description="Schema holding nuvom's tables (created if missing), so that several apps can share one database.",
    )
    postgres_pool_size: int = Field(
        10, ge=2, le=1000, description="Most connections one process opens to the server (its pool's size)."
    )
    postgres_poll_secs: float = Field(
        2.0,
        gt=0,
        description="Longest an idle worker waits between looks at the queue when no notification comes "
        "(LISTEN/NOTIFY wakes it at once; this is the safety net).",
    )
    result_ttl_secs: float | None = Field(
        None, gt=0, description="Delete stored results older than this many seconds (unset: keep them)."
    )
    postgres_connect_timeout_secs: float = Field(5.0, gt=0, description="Timeout of one connection attempt.")
    postgres_retry_secs: float = Field(
        5.0,
        ge=0,
        description="How long a producer or reader retries an unreachable server before raising BackendError.",
    )
    postgres_worker_retry_secs: float = Field(
        300.0,
        ge=0,
        description="How long a worker retries storing outcomes and handing jobs back while the server is "
        "unreachable (it keeps running the jobs it holds meanwhile).",
    )


def load_postgres_settings() -> PostgresSettings:
    """Read the settings; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(PostgresSettings)


_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: safe for logs and error messages."""
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            auth, _, host = netloc.rpartition("@")
            user, colon, _password = auth.partition(":")
            netloc = f"{user}:***@{host}" if colon else netloc
        query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparsable NUVOM_POSTGRES_URL>"


def public_url(url: str) -> str:
    """``url`` with no user or password at all (not even a mask): shown to everyone who can see workers."""
    if "://" not in url:
        kept = [part for part in url.split() if not part.lower().startswith(("password", "user"))]
        return " ".join(kept)
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host, query=""))
    except ValueError:
        return "<unparsable NUVOM_POSTGRES_URL>"
