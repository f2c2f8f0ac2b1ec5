"""Worker presence: what a running worker says about itself, kept by the store
it claims from (:meth:`nuvom.plugins.contracts.BaseJobQueue.publish_worker`) and
read by dashboards and ``nuvom.sdk.list_workers``.

A record is *live* while its heartbeat is younger than its own ``ttl_secs``;
after that the worker is *gone* (killed, frozen, cut off: it stopped without
saying so). Stores keep a gone record :data:`GONE_KEEP_SECS` longer, so that a
dashboard can show it greyed, then drop it. A worker that stops cleanly removes
its record at once (:meth:`~nuvom.plugins.contracts.BaseJobQueue.remove_worker`).
Liveness compares the worker's clock (``heartbeat_at``) with the reader's:
hosts sharing a store are expected to keep their clocks in sync (NTP).
"""

from __future__ import annotations

import functools
import importlib.metadata
import time
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["CURRENT_MAX", "GONE_KEEP_SECS", "WorkerInfo", "core_version", "live_and_gone"]

#: How long a store keeps the record of a gone worker, after its ``ttl_secs``.
GONE_KEEP_SECS = 300.0
#: A record lists at most this many of the jobs its worker is running.
CURRENT_MAX = 50


class WorkerInfo(BaseModel):
    """One worker process, as its last heartbeat described it.

    Times are epoch seconds of the worker's clock. ``jobs_done`` counts the
    jobs whose final outcome this worker stored (succeeded or failed for good)
    since it started, ``jobs_failed`` those of them that failed. ``current``
    holds the ids of jobs being run now, at most :data:`CURRENT_MAX` (``busy``
    counts them all). ``store`` says where the worker claims from, for people
    (``"sqlite /srv/app/.nuvom/nuvom.db"``, ``"redis redis://cache:6379/0"``),
    never with a password.
    """

    model_config = ConfigDict(extra="ignore")

    worker_id: str = Field(min_length=1, max_length=256)
    host: str
    pid: int
    queues: list[str] = Field(default_factory=lambda: ["default"])
    executor: Literal["thread", "process"] = "thread"
    slots: int = Field(ge=0)
    busy: int = Field(ge=0)
    started_at: float
    heartbeat_at: float
    jobs_done: int = Field(0, ge=0)
    jobs_failed: int = Field(0, ge=0)
    current: list[str] = Field(default_factory=list, max_length=CURRENT_MAX)
    store: str = ""
    version: str = ""
    ttl_secs: float = Field(gt=0)

    def is_live(self, now: float | None = None) -> bool:
        """Whether the last heartbeat is younger than ``ttl_secs``."""
        return (time.time() if now is None else now) - self.heartbeat_at <= self.ttl_secs

    @property
    def drop_at(self) -> float:
        """When a store may forget this record: ``GONE_KEEP_SECS`` after it went stale."""
        return self.heartbeat_at + self.ttl_secs + GONE_KEEP_SECS

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> WorkerInfo | None:
        """The record, or ``None`` if ``data`` is not one. A store drops such a
        record (logging it once) rather than failing the whole list: its worker,
        if alive, writes a good one at its next heartbeat."""
        try:
            return cls.model_validate_json(data)
        except (ValidationError, ValueError):
            return None


def live_and_gone(records: Iterable[WorkerInfo], now: float | None = None) -> list[WorkerInfo]:
    """The records a store returns from ``list_workers``: those not past
    :attr:`WorkerInfo.drop_at`, live ones first, then by host and start."""
    now = time.time() if now is None else now
    kept = [r for r in records if r.drop_at > now]
    kept.sort(key=lambda r: (not r.is_live(now), r.host, r.started_at, r.worker_id))
    return kept


@functools.cache
def core_version() -> str:
    """nuvom-core's installed version (a worker's record says which it runs)."""
    try:
        return importlib.metadata.version("nuvom-core")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
