"""The file result backend: finished jobs in ``<data dir>/jobs/<id>.msgpack``,
the history in ``<data dir>/index/`` (:mod:`nuvom.backends._file_index`).
Re-exported by :mod:`nuvom.backends.file`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

from nuvom._polling import Poller
from nuvom._settings import Settings, load_settings
from nuvom.backends._file_index import ResultIndex
from nuvom.backends._file_io import TempFiles, quarantine, read_bytes, storage_error
from nuvom.errors import SerializationError
from nuvom.job import Job, JobStatus, validate_job_id
from nuvom.plugins.contracts import BaseResultBackend

__all__ = ["FileResultBackend", "make_dirs"]

log = logging.getLogger("nuvom.backends.file")

_SUFFIX = ".msgpack"
# A waiting get() looks for its record after this pause, doubling to the max.
_WAIT_FIRST = 0.0005
_WAIT_MAX = 0.02


def make_dirs(root: str, *names: str) -> list[str]:
    paths = [os.path.join(root, name) for name in names]
    for path in paths:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, "creating the data folder", path) from None
    return paths


class FileResultBackend(BaseResultBackend):
    """Finished jobs in ``<data dir>/jobs/<id>.msgpack``, history in ``<data dir>/index/``."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or load_settings()
        super().__init__(settings)
        self.root = os.path.abspath(settings.data_dir)
        self.jobs_dir, index_dir, tmp_dir, self.corrupt_dir = make_dirs(self.root, "jobs", "index", "tmp", "corrupt")
        self._temp = TempFiles.shared(tmp_dir)
        self._index = ResultIndex(index_dir)

    def _path(self, job_id: str) -> str:
        return f"{self.jobs_dir}{os.sep}{job_id}{_SUFFIX}"

    def store(self, jobs: Sequence[Job]) -> None:
        write = self._temp.write_atomic
        entries = []
        try:
            for job in jobs:
                validate_job_id(job.id)
                write(self._path(job.id), job.to_bytes())
                entries.append((job.finished_at, _status(job.status), job.id, job.func_name))
            # After the files: an index line always points at a record that exists.
            self._index.append(entries)
        except OSError as exc:
            raise storage_error(exc, "storing a result", self.jobs_dir) from None

    def get_full(self, job_id: str) -> Job | None:
        path = self._path(validate_job_id(job_id))
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            return None
        try:
            job = Job.from_bytes(data)
        except SerializationError as exc:
            quarantine(path, self.corrupt_dir, f"jobs-{job_id}{_SUFFIX}", str(exc), log)
            return None
        # On a case-insensitive file system ids that differ only in case share a file.
        return job if job.id == job_id else None

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has a record. Another process cannot wake this
        one, so it looks (one failed ``open`` while there is no record); the
        pause between looks starts at 0.5 ms and doubles to 20 ms, back to
        0.5 ms whenever ``jobs/`` changed (its mtime: something was stored),
        so a ``get()`` behind a busy worker is not left sleeping 100 ms."""
        validate_job_id(job_id)
        poller = Poller(_WAIT_FIRST, _WAIT_MAX)
        seen = [self._jobs_mtime()]

        def look() -> Job | None:
            record = self.get_full(job_id)
            if record is None:
                mtime = self._jobs_mtime()
                if mtime != seen[0]:
                    seen[0] = mtime
                    poller.reset()
            return record

        return poller.until(look, timeout)

    def _jobs_mtime(self) -> int | None:
        try:
            return os.stat(self.jobs_dir).st_mtime_ns
        except OSError:
            return None

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        wanted = None if status is None else JobStatus(str(getattr(status, "value", status)).upper())
        if limit < 1:
            return []
        if not self._index.segments() and self._has_records():
            self.rebuild_index()
        # Index lines are hints: each record is read and checked, and a record
        # stored again since (other status, say) is skipped; then read further.
        want = limit
        while True:
            entries = self._index.newest(want, None if wanted is None else wanted.value, task)
            out = []
            for _, job_id in entries:
                record = self.get_full(job_id)
                if record is None or (wanted is not None and record.status is not wanted):
                    continue
                if task is not None and record.func_name != task:
                    continue
                out.append(record)
                if len(out) == limit:
                    return out
            if len(entries) < want:
                return out
            want *= 4

    def count(self) -> int:
        return sum(1 for name in os.listdir(self.jobs_dir) if name.endswith(_SUFFIX))

    def counts(self) -> dict[str, int]:
        if not self._index.segments() and self._has_records():
            self.rebuild_index()
        out = {status.value: 0 for status in (JobStatus.SUCCESS, JobStatus.FAILED)}
        for status, n in self._index.status_counts().items():
            out[status] = out.get(status, 0) + n
        return out

    def rebuild_index(self) -> int:
        """Index every record in ``jobs/`` again (after the index was deleted, say);
        returns how many records were indexed."""
        records = [job for job in self._records() if job is not None]
        records.sort(key=lambda job: job.finished_at or 0.0)
        self._index.append([(j.finished_at, _status(j.status), j.id, j.func_name) for j in records])
        if records:
            log.info("rebuilt the history index of %s from %d records", self.jobs_dir, len(records))
        return len(records)

    def _has_records(self) -> bool:
        with os.scandir(self.jobs_dir) as entries:
            return any(entry.name.endswith(_SUFFIX) for entry in entries)

    def _records(self) -> Iterable[Job | None]:
        for name in os.listdir(self.jobs_dir):
            if name.endswith(_SUFFIX):
                try:
                    yield self.get_full(name[: -len(_SUFFIX)])
                except ValueError:  # InvalidJobId: a stray file
                    continue

    def close(self) -> None:
        self._index.close()


def _status(status: JobStatus | str) -> str:
    return status.value if isinstance(status, JobStatus) else str(status)
