"""Settings of the Prometheus exporter: ``NUVOM_PROMETHEUS_*`` variables (or
``.env``), read when a worker starts the plugin."""

from __future__ import annotations

from typing import Any

from nuvom.config import EnvSettings, read_settings
from pydantic import Field, field_validator

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "PrometheusSettings",
    "load_prometheus_settings",
    "parse_ports",
]

#: Seconds. Jobs range from milliseconds to minutes; the default job timeout is 30 s.
DEFAULT_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
#: Seconds from when a job was due (enqueued, or its retry delay ended) to its start.
DEFAULT_QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def parse_ports(value: int | str) -> tuple[int, int]:
    """``9150`` -> ``(9150, 9150)``; ``"9150-9157"`` -> ``(9150, 9157)``; ``0`` means any free port."""
    if isinstance(value, int):
        first = last = value
    else:
        text = value.strip()
        low, sep, high = text.partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise ValueError(f"{value!r} is neither a port (9150) nor a port range (9150-9157)") from None
    if not (0 <= first <= 65535 and 0 <= last <= 65535):
        raise ValueError(f"{value!r}: ports are 0-65535")
    if last < first:
        raise ValueError(f"{value!r}: the range ends before it starts")
    if first == 0 and last != 0:
        raise ValueError(f"{value!r}: 0 (any free port) cannot start a range")
    return first, last


class PrometheusSettings(EnvSettings):
    """Each field ``x`` is read from ``NUVOM_X``."""

    prometheus_enabled: bool = Field(
        False,
        description="Serve metrics from every worker. Listing the plugin in .nuvom_plugins.toml also enables it.",
    )
    prometheus_host: str = Field(
        "127.0.0.1", description="Address the metrics server binds to (0.0.0.0 or :: exposes it to the network)."
    )
    prometheus_port: int | str = Field(
        9150,
        description=(
            "Port of the metrics server, or a range such as 9150-9157: each worker process takes the first "
            "free port of the range. 0 picks any free port."
        ),
    )
    prometheus_max_tasks: int = Field(
        500, ge=1, description='Distinct task labels kept; further tasks are counted under task="_other".'
    )
    prometheus_duration_buckets: list[float] = Field(
        list(DEFAULT_DURATION_BUCKETS), description="Histogram buckets (seconds) of nuvom_job_duration_seconds."
    )
    prometheus_queue_wait_buckets: list[float] = Field(
        list(DEFAULT_QUEUE_WAIT_BUCKETS), description="Histogram buckets (seconds) of nuvom_job_queue_wait_seconds."
    )

    @field_validator("prometheus_port")
    @classmethod
    def _check_port(cls, value: int | str) -> int | str:
        first, last = parse_ports(value)
        return first if first == last else f"{first}-{last}"

    @field_validator("prometheus_duration_buckets", "prometheus_queue_wait_buckets")
    @classmethod
    def _check_buckets(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one bucket bound")
        if any(b <= 0 for b in value) or sorted(value) != value or len(set(value)) != len(value):
            raise ValueError("bucket bounds must be positive and strictly increasing")
        return value

    @property
    def ports(self) -> tuple[int, int]:
        """``(first, last)`` port to try, inclusive."""
        return parse_ports(self.prometheus_port)


def load_prometheus_settings(**overrides: Any) -> PrometheusSettings:
    """Read the settings afresh; a bad value raises :class:`~nuvom.errors.ConfigError`
    naming the variable."""
    return read_settings(PrometheusSettings, **overrides)
