"""Cancel requests and rate limits in the file store::

    cancels/<job id>     a request to cancel a claimed job (empty file)
    rates/<h>            a rate limit's state: one number, the GCRA "theoretical arrival time"
    rates/<h>.lock       its lock (_file_lock); h: a hash of the limit's key

A cancel request is recorded before the job is looked for among the claims,
and taken back if it is not there: a job found claimed leaves the queue after
that look, and its leaving (which lists ``cancels/``) drops the request. A job
renamed (its lease renewed) during both of the two looks at a claimed folder
is not seen: the request then says ``False`` and can be made again.

A rate limit is GCRA on one stored number per key, read and written under the
key's lock file: every process of the host shares it, and the clock is the
host's (``time.time()``), which the file store's leases use too.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nuvom.backends._file_io import read_bytes, touch, unlink
from nuvom.backends._file_lanes import DirNames
from nuvom.backends._file_lock import LockFile
from nuvom.job import validate_job_id

if TYPE_CHECKING:
    from nuvom.backends._file_io import TempFiles
    from nuvom.backends._file_lanes import QueueDirs

__all__ = ["FileControl"]

_SUFFIX = ".msgpack"


class FileControl:
    """Mixed into :class:`~nuvom.backends.file.FileJobQueue` (needs its ``root``,
    ``_temp`` and ``_all_dirs``)."""

    root: str
    _temp: TempFiles

    if TYPE_CHECKING:

        def _all_dirs(self) -> list[QueueDirs]: ...

    def _init_control(self) -> None:
        self._cancels_dir = os.path.join(self.root, "cancels")
        self._cancel_marks = DirNames(self._cancels_dir)
        self._rates_dir = os.path.join(self.root, "rates")

    # -- cancel requests --------------------------------------------------------
    def request_cancel(self, job_id: str) -> bool:
        validate_job_id(job_id)
        os.makedirs(self._cancels_dir, exist_ok=True)
        marker = os.path.join(self._cancels_dir, job_id)
        touch(marker)
        if self._is_claimed(job_id):
            return True
        unlink(marker)
        return False

    def _is_claimed(self, job_id: str) -> bool:
        tail = f"-{job_id}{_SUFFIX}"
        folders = [dirs.claimed_dir for dirs in self._all_dirs()]
        # Twice: a renewal renaming the file while a folder is listed may hide it from that listing.
        for _ in range(2):
            for folder in folders:
                try:
                    names = os.listdir(folder)
                except FileNotFoundError:
                    continue
                if any(n.endswith(tail) and n.split("-", 2)[-1] == tail[1:] for n in names):
                    return True
        return False

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        marks = self._cancel_marks.names()
        return set(marks.intersection(job_ids)) if marks else set()

    def _drop_cancel_requests(self, job_ids: Sequence[str]) -> None:
        marks = self._cancel_marks.names()
        if marks:
            for job_id in marks.intersection(job_ids):
                unlink(os.path.join(self._cancels_dir, job_id))

    # -- rate limits ------------------------------------------------------------
    def acquire_rate(self, key: str, limit: int, per_secs: float) -> float:
        stem = hashlib.sha256(key.encode()).hexdigest()[:40]
        path = os.path.join(self._rates_dir, stem)
        interval = per_secs / limit
        with LockFile(path + ".lock"):
            now = time.time()
            try:
                stored = float(read_bytes(path))
            except (FileNotFoundError, ValueError):
                stored = now
            if stored - now > per_secs + interval:
                stored = now  # the clock went back: a stored time this far ahead was never allowed
            tat = max(stored, now) + interval
            wait = tat - now - per_secs
            if wait > 0:
                return wait
            self._temp.write_atomic(path, repr(tat).encode())
            return 0.0
