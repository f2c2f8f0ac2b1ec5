"""nuvom-redis's settings: ``NUVOM_REDIS_*`` and ``NUVOM_RESULT_TTL_SECS``."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from nuvom.config import EnvSettings, read_settings
from pydantic import Field

__all__ = ["DEFAULT_URL", "RedisSettings", "load_redis_settings", "redact_url"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisSettings(EnvSettings):
    """Read from ``NUVOM_*`` variables, ``.env``, then defaults, like core's settings."""

    redis_url: str = Field(
        DEFAULT_URL,
        description="Server to use: redis://[user:password@]host:port/db, rediss:// for TLS, unix:///path.sock.",
    )
    redis_prefix: str = Field(
        "nuvom", min_length=1, description="Prefix of every key, so that several apps can share one Redis."
    )
    result_ttl_secs: float | None = Field(
        None, gt=0, description="Delete stored results older than this many seconds (unset: keep them)."
    )
    redis_connect_timeout_secs: float = Field(2.0, gt=0, description="Timeout of one connection attempt.")
    redis_socket_timeout_secs: float = Field(10.0, gt=0, description="Timeout of one command's reply.")
    redis_retry_secs: float = Field(
        5.0,
        ge=0,
        description="How long a producer or reader retries an unreachable server before raising BackendError.",
    )
    redis_worker_retry_secs: float = Field(
        300.0,
        ge=0,
        description="How long a worker retries storing outcomes and handing jobs back while the server is "
        "unreachable (it keeps running the jobs it holds meanwhile).",
    )


def load_redis_settings() -> RedisSettings:
    """Read the settings; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(RedisSettings)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: safe for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable NUVOM_REDIS_URL>"
