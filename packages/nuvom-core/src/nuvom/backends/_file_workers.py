"""Worker presence of the file queue: one file per worker::

    .nuvom/workers/<stem>.worker     its WorkerInfo (JSON), <stem> a hash of its id

Each heartbeat rewrites the file whole (a temporary file moved into place with
``os.replace``), so a reader sees the previous record or the new one, never
half of one. Worker ids hold ``:``, which Windows file names cannot: files are
named by a hash. Records past their drop time are deleted by whoever lists them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING

from nuvom.backends._file_io import quarantine, read_bytes, storage_error, unlink
from nuvom.plugins._presence import WorkerInfo, live_and_gone

if TYPE_CHECKING:
    from nuvom.backends._file_io import TempFiles

__all__ = ["FilePresence"]

log = logging.getLogger("nuvom.backends.file")

_SUFFIX = ".worker"


def _stem(worker_id: str) -> str:
    return hashlib.sha256(worker_id.encode()).hexdigest()[:24]


class FilePresence:
    """Mixed into :class:`~nuvom.backends.file.FileJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue` (needs its ``root``,
    ``corrupt_dir`` and ``_temp``)."""

    root: str
    corrupt_dir: str
    _temp: TempFiles

    def _workers_dir(self) -> str:
        path = os.path.join(self.root, "workers")
        if not self.__dict__.get("_workers_dir_made"):
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise storage_error(exc, "creating the workers folder", path) from None
            self.__dict__["_workers_dir_made"] = True
        return path

    def publish_worker(self, info: WorkerInfo) -> None:
        path = os.path.join(self._workers_dir(), _stem(info.worker_id) + _SUFFIX)
        try:
            self._temp.write_atomic(path, info.to_json())
        except OSError as exc:
            raise storage_error(exc, "writing a worker's presence", path) from None

    def remove_worker(self, worker_id: str) -> None:
        unlink(os.path.join(self._workers_dir(), _stem(worker_id) + _SUFFIX))

    def list_workers(self) -> list[WorkerInfo] | None:
        folder = self._workers_dir()
        now = time.time()
        records: list[WorkerInfo] = []
        try:
            names = [n for n in os.listdir(folder) if n.endswith(_SUFFIX)]
        except OSError as exc:
            raise storage_error(exc, "listing workers", folder) from None
        for name in names:
            path = os.path.join(folder, name)
            try:
                data = read_bytes(path)
            except FileNotFoundError:
                continue  # its worker stopped meanwhile
            except OSError as exc:
                raise storage_error(exc, "reading a worker's presence", path) from None
            info = WorkerInfo.from_json(data)
            if info is None:
                quarantine(path, self.corrupt_dir, name, "not a worker presence record", log)
            elif info.drop_at <= now:
                # Gone long enough to forget. A worker frozen that long and publishing
                # this very moment loses one heartbeat's record; its next one restores it.
                unlink(path)
            else:
                records.append(info)
        return live_and_gone(records, now)

    def describe(self) -> str:
        return f"file {self.root}"
