"""Settings: ``NUVOM_*`` environment variables, then ``.env`` in the working
directory, then defaults (pydantic-settings). Public through :mod:`nuvom.config`.

Plugins that need settings of their own declare them on a
``pydantic_settings.BaseSettings`` subclass with the same ``NUVOM_`` prefix
and expose it as ``settings_class`` on their plugin; ``nuvom config`` shows
those too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from nuvom.errors import ConfigError
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "Settings", "load_settings", "read_settings", "setting_sources"]

ENV_PREFIX = "NUVOM_"

# Durations are finite and bounded: an `inf` or 1e300 passes a plain `> 0`
# check and then overflows the clock arithmetic of leases and deadlines.
_DAY = 86_400.0
_WEEK = 7 * _DAY


class Settings(BaseSettings):
    """Every core setting. Each field ``x`` is read from ``NUVOM_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Literal["dev", "prod", "test"] = Field("dev", description="Deployment flavour.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Level of the nuvom.* loggers."
    )
    queue_backend: str | None = Field(
        None, description="Queue backend name; unset picks sqlite if installed, else file."
    )
    result_backend: str | None = Field(
        None, description="Result backend name; unset picks sqlite if installed, else file."
    )
    serialization_backend: Literal["msgpack"] = Field("msgpack", description="Payload encoding.")
    max_workers: int = Field(4, ge=1, le=1024, description="Worker threads per worker process.")
    batch_size: int = Field(32, ge=1, le=10_000, description="Jobs claimed per queue round trip.")
    job_timeout_secs: float = Field(
        30.0, gt=0, le=_WEEK, allow_inf_nan=False, description="Timeout of tasks that set no timeout_secs."
    )
    retry_delay_secs: float = Field(
        0.0, ge=0, le=30 * _DAY, allow_inf_nan=False, description="Delay before a retry, for tasks that set none."
    )
    timeout_policy: Literal["fail", "retry", "ignore"] = Field(
        "fail", description="What a timeout does when the task sets no timeout_policy."
    )
    manifest_path: Path = Field(Path(".nuvom/manifest.json"), description="Task manifest file.")
    data_dir: Path = Field(Path(".nuvom"), description="Where embedded backends store data.")
    lease_secs: float = Field(
        30.0,
        gt=0,
        le=_WEEK,
        allow_inf_nan=False,
        description="How long a claim holds a job before another worker may take it.",
    )
    shutdown_grace_secs: float = Field(
        10.0, ge=0, le=_DAY, allow_inf_nan=False, description="How long a stopping worker lets running jobs finish."
    )
    max_payload_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest encoded arguments or result accepted."
    )
    schedule_grace_secs: float = Field(
        60.0, ge=0, description="How late a scheduled tick may fire and still count as on time (misfire policies)."
    )
    executor: Literal["thread", "process"] = Field(
        "thread",
        description="Where jobs of tasks that name no executor run: worker threads, or child processes "
        "(then async def tasks too); async def tasks otherwise run on the worker's event loop.",
    )
    async_concurrency: int = Field(
        256, ge=1, le=100_000, description="Async jobs a worker runs at once on its event loop."
    )
    processes: int | None = Field(
        None, ge=1, le=1024, description="Child processes of the process pool; unset: one per CPU core."
    )
    max_jobs_per_child: int = Field(
        1000, ge=1, le=10_000_000, description="Jobs a pool child runs before it is replaced (memory leaks)."
    )
    task_modules: str = Field(
        "",
        description="Comma-separated modules a worker imports at start; with no manifest, the only "
        "modules a job's task path may name.",
    )

    def task_module_list(self) -> list[str]:
        return [m.strip() for m in self.task_modules.split(",") if m.strip()]


def load_settings(**overrides: Any) -> Settings:
    """Read settings afresh; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(Settings, **overrides)


S = TypeVar("S", bound=BaseSettings)


def read_settings(cls: type[S], **overrides: Any) -> S:
    """Instantiate any settings class (core's or a plugin's); a bad value raises
    :class:`ConfigError` naming the environment variable and the value."""
    try:
        return cls(**overrides)
    except UnicodeDecodeError as exc:
        # pydantic-settings reads .env as UTF-8 and lets the codec error through.
        raise ConfigError(_not_utf8(Path(str(cls.model_config.get("env_file") or ".env")), exc)) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "?"
        prefix = str(cls.model_config.get("env_prefix", ENV_PREFIX))
        var = (prefix + field).upper()
        raise ConfigError(
            f"{var}={err.get('input')!r} is not valid: {err['msg']}; fix it in the environment or .env"
        ) from None


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where in ``path`` the byte that is not UTF-8 sits, and what to do."""
    where = ""
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if data and exc.start < len(data):
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        where = f" at line {line}, column {column}"
    byte = exc.object[exc.start : exc.start + 1].hex() if isinstance(exc.object, bytes) else "?"
    return f"{path.resolve()}: byte 0x{byte}{where} is not UTF-8 text; save the file as UTF-8"


def setting_sources(settings: BaseSettings) -> dict[str, tuple[Any, str]]:
    """Map each ``NUVOM_*`` variable to ``(value, source)``, source being
    ``"environment"``, ``".env"`` or ``"default"``."""
    env_file = settings.model_config.get("env_file")
    dotenv: dict[str, Any] = {}
    if env_file and Path(str(env_file)).is_file():
        from dotenv import dotenv_values  # a dependency of pydantic-settings

        dotenv = {k.upper(): v for k, v in dotenv_values(str(env_file)).items()}
    environ = {k.upper() for k in os.environ}
    out: dict[str, tuple[Any, str]] = {}
    prefix = str(settings.model_config.get("env_prefix", ENV_PREFIX))
    for field in type(settings).model_fields:
        var = (prefix + field).upper()
        source = "environment" if var in environ else ".env" if var in dotenv else "default"
        out[var] = (getattr(settings, field), source)
    return out
