"""Results of a process's jobs read in batches, for ``job.get()``.

A loop of ``get()`` over many jobs (``[job.get() for job in jobs]`` after a
``.delay()`` loop or a ``.map()``) read the result store once a job: a round
trip each on Redis and PostgreSQL. When the result backend reads many records
in one call (it overrides ``BaseResultBackend.get_many``), a ``get()`` that
finds nothing here reads its own record together with those of other jobs
queued through the same App whose handles are still alive (oldest first): what
it finds waits here for their ``get()``.

* Only live handles are read for: a job queued and forgotten (fire and forget)
  costs nothing here once its handle is gone.
* A record is handed out once, to a ``get()`` of its job; the next ``get()``
  reads the store again. At most ``_KEEP`` records wait here.
* The batch adapts: it doubles (up to ``_MOST``) while most of what it reads
  is there. When little is (the jobs still run: each ``get()`` waits anyway),
  ``get()`` reads nothing here and waits as it would without this, trying a
  batch again every ``_PROBE_EVERY`` calls.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from nuvom.plugins.contracts import BaseResultBackend

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from nuvom.job import Job

__all__ = ["Gather", "reads_in_batches"]

_FIRST = 16
_MOST = 256
_KEEP = 4 * _MOST
_PROBE_EVERY = 16
# Handles are held weakly: past this many, the dead ones are swept out (a
# producer that never calls get() keeps a bounded table).
_SWEEP_AT = 4096


def reads_in_batches(cls: type[Any]) -> bool:
    """Whether result backends of class ``cls`` read many records in one call
    (they override ``BaseResultBackend.get_many``)."""
    return getattr(cls, "get_many", BaseResultBackend.get_many) is not BaseResultBackend.get_many


class Gather:
    """The handles of jobs queued through one App and not read yet, and the
    records read for them ahead of their ``get()``."""

    def __init__(self, results: Callable[[], BaseResultBackend]) -> None:
        self._results = results  # the App's result backend, made when first read
        self._lock = threading.Lock()
        # Insertion order is queueing order: the oldest handles are read first.
        # Plain references without callbacks: a WeakValueDictionary cost 2 us a
        # job queued, these 0.6.
        self._unread: dict[str, weakref.ref[Job]] = {}
        self._sweep_at = _SWEEP_AT
        self._found: dict[str, Job] = {}
        self._size = _FIRST  # 0: not reading ahead, until the next probe
        self._skipped = 0

    def queued(self, jobs: Iterable[Job]) -> None:
        ref = weakref.ref
        with self._lock:
            unread = self._unread
            for job in jobs:
                unread[job.id] = ref(job)
            if len(unread) > self._sweep_at:
                self._unread = unread = {k: r for k, r in unread.items() if r() is not None}
                self._sweep_at = max(_SWEEP_AT, 2 * len(unread))

    def take(self, job_id: str) -> Job | None:
        """``job_id``'s record if it is stored (read with others' in one call),
        else ``None``: the caller waits for it as usual."""
        with self._lock:
            record = self._found.pop(job_id, None)
            if record is not None:
                return record
            unread = self._unread
            unread.pop(job_id, None)
            size = self._size
            if not size:
                self._skipped += 1
                if self._skipped < _PROBE_EVERY:
                    return None
                self._skipped, size = 0, _FIRST
            # The job itself first, then the oldest other handles still alive.
            batch = [job_id]
            dead: list[str] = []
            for other, ref in unread.items():
                if len(batch) >= size:
                    break
                if ref() is None:
                    dead.append(other)
                else:
                    batch.append(other)
            for other in dead:
                del unread[other]
        if len(batch) == 1:
            return None  # nothing else to read: the caller's own wait reads it
        found = self._results().get_many(batch)
        record = found.pop(job_id, None)
        with self._lock:
            unread, kept = self._unread, self._found
            for other, rec in found.items():
                if unread.pop(other, None) is not None:  # a handle waits for it
                    kept[other] = rec
            while len(kept) > _KEEP:
                del kept[next(iter(kept))]
            # Most of the batch was there: read more next time; little: stop reading ahead.
            self._size = min(_MOST, size * 2) if len(found) + (record is not None) >= len(batch) // 2 else 0
        return record
