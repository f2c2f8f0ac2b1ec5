"""Settings: ``NUVOM_*`` environment variables, then ``.env`` in the working
directory, then defaults. Public through :mod:`nuvom.config`.

:class:`EnvSettings` reads them: a pydantic model whose constructor fills each
field ``x`` not passed in from ``NUVOM_X`` (any case), then from the ``.env``
file (read with python-dotenv), then its default, and validates the lot. It
keeps the rules of pydantic-settings, which nuvom used before: the same
precedence, names, ``.env`` parser and JSON for list and dict fields; it
replaced it because importing pydantic-settings cost every process ~110 ms
(asyncio, argparse and its cloud providers; bench/NOTES.md, CLI start-up).

Plugins that need settings of their own subclass :class:`EnvSettings` with the
same ``NUVOM_`` prefix and expose the class as ``settings_class`` on their
plugin; ``nuvom config`` shows those too. A ``pydantic_settings.BaseSettings``
subclass (a plugin written for earlier releases) is read by its own rules.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from nuvom.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ENV_PREFIX",
    "EnvSettings",
    "Settings",
    "env_file_of",
    "env_prefix_of",
    "load_settings",
    "read_settings",
    "setting_sources",
]

ENV_PREFIX = "NUVOM_"

# Durations are finite and bounded: an `inf` or 1e300 passes a plain `> 0`
# check and then overflows the clock arithmetic of leases and deadlines.
_DAY = 86_400.0
_WEEK = 7 * _DAY


class EnvSettings(BaseModel):
    """Settings read from the environment: each field ``x`` not given to the
    constructor comes from ``{env_prefix}X`` (any case), else from ``env_file``,
    else its default. List, set, tuple and dict fields are read as JSON."""

    model_config = ConfigDict(extra="ignore")

    #: Prefix of the variables.
    env_prefix: ClassVar[str] = ENV_PREFIX
    #: The dotenv file read after the environment (relative to the working directory); ``None``: none.
    env_file: ClassVar[str | None] = ".env"

    def __init__(self, **values: Any) -> None:
        super().__init__(**_from_environment(type(self), values))


def _from_environment(cls: type[EnvSettings], given: dict[str, Any]) -> dict[str, Any]:
    prefix = cls.env_prefix.upper()
    environ = {k.upper(): v for k, v in os.environ.items()}
    dotenv = _dotenv(cls.env_file)
    values = dict(given)
    for name, field in cls.model_fields.items():
        if name in values:
            continue
        var = (prefix + name).upper()
        raw = environ.get(var)
        if raw is None:
            raw = dotenv.get(var)
        if raw is None:
            continue
        values[name] = _decode(var, field.annotation, raw)
    return values


def _dotenv(env_file: str | None) -> dict[str, str | None]:
    if not env_file or not os.path.isfile(env_file):
        return {}
    from dotenv import dotenv_values  # pydantic-settings' parser, so a .env reads as it did

    return {k.upper(): v for k, v in dotenv_values(env_file, encoding="utf-8").items()}


_COMPLEX = (list, set, frozenset, tuple, dict)


def _is_complex(annotation: Any) -> tuple[bool, bool]:
    """``(complex, also_plain)``: whether a value of this type is read as JSON,
    and whether the type also takes the plain string (a union such as ``list | str``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [_is_complex(arg)[0] for arg in typing.get_args(annotation) if arg is not type(None)]
        return any(kinds), not all(kinds)
    kind = origin if origin is not None else annotation
    complex_ = isinstance(kind, type) and (issubclass(kind, _COMPLEX) or issubclass(kind, BaseModel))
    return complex_, False


def _decode(var: str, annotation: Any, raw: str) -> Any:
    complex_, also_plain = _is_complex(annotation)
    if not complex_:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        if also_plain:
            return raw
        raise ConfigError(
            f"{var}={raw!r} is not valid: expected JSON, e.g. [1, 2]; fix it in the environment or .env"
        ) from None


class Settings(EnvSettings):
    """Every core setting. Each field ``x`` is read from ``NUVOM_X``."""

    environment: Literal["dev", "prod", "test"] = Field("dev", description="Deployment flavour.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Level of the nuvom.* loggers."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Worker log lines: text for people, json (one object a line) for log shippers."
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
    async_blocked_warn_secs: float = Field(
        1.0,
        gt=0,
        le=_DAY,
        allow_inf_nan=False,
        description="An async job holding the event loop this long (blocking code) is logged at WARNING.",
    )
    processes: int | None = Field(
        None, ge=1, le=1024, description="Child processes of the process pool; unset: one per CPU core."
    )
    max_jobs_per_child: int = Field(
        1000, ge=1, le=10_000_000, description="Jobs a pool child runs before it is replaced (memory leaks)."
    )
    heartbeat_secs: float = Field(
        5.0,
        ge=0.1,
        le=3600,
        allow_inf_nan=False,
        description="How often a worker publishes its presence (dashboards' Workers page); it counts as gone "
        "after three heartbeats missed.",
    )
    queues: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}(,[A-Za-z0-9_.:-]{1,64})*$",
        description="Comma-separated named queues a worker serves, the first first (strict order).",
    )
    task_modules: str = Field(
        "",
        description="Comma-separated modules a worker imports at start; with no manifest, the only "
        "modules a job's task path may name.",
    )

    def queue_list(self) -> list[str]:
        return list(dict.fromkeys(q.strip() for q in self.queues.split(",") if q.strip()))

    def task_module_list(self) -> list[str]:
        return [m.strip() for m in self.task_modules.split(",") if m.strip()]


def load_settings(**overrides: Any) -> Settings:
    """Read settings afresh; a bad value raises :class:`ConfigError` naming the variable."""
    return read_settings(Settings, **overrides)


S = TypeVar("S", bound=BaseModel)


def env_prefix_of(cls: type[BaseModel]) -> str:
    """The variable prefix of a settings class (:class:`EnvSettings` or pydantic-settings')."""
    if isinstance(cls, type) and issubclass(cls, EnvSettings):
        return cls.env_prefix
    return str(cls.model_config.get("env_prefix", ENV_PREFIX))


def env_file_of(cls: type[BaseModel]) -> str | None:
    """The dotenv file of a settings class, or ``None``."""
    if isinstance(cls, type) and issubclass(cls, EnvSettings):
        return cls.env_file
    found = cls.model_config.get("env_file")
    return str(found) if isinstance(found, (str, Path)) else None


def read_settings(cls: type[S], **overrides: Any) -> S:
    """Instantiate any settings class (core's or a plugin's); a bad value raises
    :class:`ConfigError` naming the environment variable and the value."""
    try:
        return cls(**overrides)
    except UnicodeDecodeError as exc:
        # The .env file is read as UTF-8; the codec error says neither file nor line.
        raise ConfigError(_not_utf8(Path(env_file_of(cls) or ".env"), exc)) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "?"
        var = (env_prefix_of(cls) + field).upper()
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


def setting_sources(settings: BaseModel) -> dict[str, tuple[Any, str]]:
    """Map each ``NUVOM_*`` variable to ``(value, source)``, source being
    ``"environment"``, ``".env"`` or ``"default"``."""
    cls = type(settings)
    dotenv = _dotenv(env_file_of(cls))
    environ = {k.upper() for k in os.environ}
    out: dict[str, tuple[Any, str]] = {}
    prefix = env_prefix_of(cls)
    for field in cls.model_fields:
        var = (prefix + field).upper()
        source = "environment" if var in environ else ".env" if dotenv.get(var) is not None else "default"
        out[var] = (getattr(settings, field), source)
    return out
