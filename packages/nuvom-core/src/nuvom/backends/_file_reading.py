"""Reading and steering the file queue: ``get``, counts, ``peek``, ``cancel``,
``clear`` (mixed into :class:`~nuvom.backends.file.FileJobQueue`).

A job is found by its id in the names of the files of every queue's folders:
``waiting/<id>.msgpack`` first, then the lanes, the claims and the lanes again,
the order a job moves in (released, claimed, back for a retry), so that a job
moving while it is looked for is still found.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nuvom.backends._file_io import quarantine, read_bytes, unlink
from nuvom.errors import SerializationError
from nuvom.job import Job, JobStatus, validate_job_id

if TYPE_CHECKING:
    import threading

    from nuvom.backends._file_io import TempFiles
    from nuvom.backends._file_lanes import QueueDirs

__all__ = ["CLAIMED_NAME", "WAITING_ID_AT", "WAITING_NAME", "FileReading", "find"]

log = logging.getLogger("nuvom.backends.file")

SUFFIX = ".msgpack"
WAITING_NAME = re.compile(r"\d{20}-\d{8}-[A-Za-z0-9_-]{1,64}\.msgpack")
CLAIMED_NAME = re.compile(r"(\d{20})-(\d{1,9})-([A-Za-z0-9_-]{1,64})\.msgpack")
# A waiting job's name: 20 digits of due time, '-', 8 digits of sequence, '-', the id.
WAITING_ID_AT = 30


class FileReading:
    """Needs the queue's ``corrupt_dir``, ``_temp``, ``_lock`` and the methods declared below."""

    corrupt_dir: str
    _temp: TempFiles
    _lock: threading.Lock

    if TYPE_CHECKING:

        def _all_dirs(self) -> list[QueueDirs]: ...
        def _left(self, job_ids: Sequence[str], keys: Sequence[tuple[str, str]] = ()) -> None: ...
        def _forget_waiting(self, job: Job) -> None: ...
        def _forget_blockers(self, child: str) -> None: ...

    def get(self, job_id: str) -> Job | None:
        validate_job_id(job_id)
        every = self._all_dirs()
        for dirs in every:
            job = self._read_job(dirs.waiting_path(job_id), job_id)
            if job is not None:
                job.status = JobStatus.WAITING
                return job
        lanes = [path for dirs in every for path in dirs.all_lane_dirs()]
        claimed = [dirs.claimed_dir for dirs in every]
        # A job moves lane -> claimed/ -> lane (retry) while we look: look in
        # the order it moves, then once more where it may have gone back to.
        for directory in (*lanes, *claimed, *lanes):
            name = find(directory, job_id)
            if name is None:
                continue
            job = self._read_job(os.path.join(directory, name), job_id)
            if job is None:
                continue
            if directory in claimed:
                job.mark_claimed(int(name.split("-", 2)[1]))
            elif job.status is JobStatus.WAITING:
                job.status = JobStatus.PENDING  # released by its last parent
            return job
        return None

    def _read_job(self, path: str, job_id: str) -> Job | None:
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            return None
        try:
            return Job.from_bytes(data)
        except SerializationError as exc:
            log.warning("job %s: its queue file %s is unreadable: %s", job_id, path, exc)
            return None

    def _lane_names(self, dirs: QueueDirs) -> list[tuple[int, str, str]]:
        """(priority, folder, name) of every waiting job in the queue's lanes."""
        out = []
        for lane in dirs.lanes():
            try:
                names = os.listdir(lane.path)
            except FileNotFoundError:
                continue
            out += [(lane.priority, lane.path, n) for n in names if n.endswith(SUFFIX)]
        return out

    def _counts_of(self, dirs: QueueDirs) -> dict[str, int]:
        # Names carry no attempt count, so retries are not told apart from new
        # jobs without opening every file: "retrying" is left out.
        waiting = sum(1 for n in dirs.waiting.names() if n.endswith(SUFFIX))
        running = sum(1 for n in os.listdir(dirs.claimed_dir) if n.endswith(SUFFIX))
        return {"queued": len(self._lane_names(dirs)) + waiting, "running": running}

    def qsize(self) -> int:
        return sum(self._counts_of(dirs)["queued"] for dirs in self._all_dirs())

    def counts(self) -> dict[str, int]:
        total = {"queued": 0, "running": 0}
        for dirs in self._all_dirs():
            for key, n in self._counts_of(dirs).items():
                total[key] += n
        return total

    def queue_counts(self) -> dict[str, dict[str, int]]:
        return {dirs.name: self._counts_of(dirs) for dirs in sorted(self._all_dirs(), key=lambda d: d.name)}

    def claims_held(self) -> tuple[int, float | None]:
        # A claimed file's name begins with its lease's end, in nanoseconds.
        ends = [
            int(name[:20])
            for dirs in self._all_dirs()
            for name in os.listdir(dirs.claimed_dir)
            if CLAIMED_NAME.fullmatch(name)
        ]
        return len(ends), (max(ends) / 1e9 if ends else None)

    def peek(self, limit: int = 50) -> list[Job]:
        due = f"{time.time_ns():020d}"
        entries = [e for dirs in self._all_dirs() for e in self._lane_names(dirs) if WAITING_NAME.fullmatch(e[2])]
        # Due jobs in claim order (higher priority first, then due time), then the delayed ones by due time.
        ready = sorted((e for e in entries if e[2][:20] <= due), key=lambda e: (-e[0], e[2]))
        delayed = sorted((e for e in entries if e[2][:20] > due), key=lambda e: e[2])
        out: list[Job] = []
        for _, folder, name in ready + delayed:
            if len(out) >= limit:
                break
            job = self._read_job(os.path.join(folder, name), name[WAITING_ID_AT : -len(SUFFIX)])
            if job is not None:  # else claimed meanwhile, or left for a claimer to quarantine
                if job.status is JobStatus.WAITING:
                    job.status = JobStatus.PENDING
                out.append(job)
        return out

    def cancel(self, job_id: str) -> Job | None:
        validate_job_id(job_id)
        every = self._all_dirs()
        for dirs in every:
            job = self._take_out(dirs.waiting_path(job_id), f"waiting-{job_id}{SUFFIX}")
            if job is not None:
                self._forget_waiting(job)
                self._left([job_id], [(job_id, job.unique_key)] if job.unique_key else [])
                return job
        for dirs in every:
            for folder in dirs.all_lane_dirs():
                name = find(folder, job_id)
                if name is None:
                    continue
                job = self._take_out(os.path.join(folder, name), f"queue-{name}")
                if job is not None:
                    self._left([job_id], [(job_id, job.unique_key)] if job.unique_key else [])
                    return job
        return None

    def _take_out(self, path: str, label: str) -> Job | None:
        """Take a waiting job's file out of the queue with the same rename a claim
        uses (of a worker and this call, exactly one gets it); its job, or ``None``."""
        taken = self._temp.new_path()
        try:
            os.replace(path, taken)
        except (FileNotFoundError, PermissionError):
            return None
        try:
            return Job.from_bytes(read_bytes(taken))
        except SerializationError as exc:
            quarantine(taken, self.corrupt_dir, label, str(exc), log)
            return None
        finally:
            unlink(taken)

    def clear(self) -> int:
        removed: list[str] = []
        with self._lock:
            for dirs in self._all_dirs():
                dirs.forget()
                for _, folder, name in self._lane_names(dirs):
                    if unlink(os.path.join(folder, name)):
                        removed.append(name[WAITING_ID_AT : -len(SUFFIX)])
                for name in dirs.waiting.names():
                    if name.endswith(SUFFIX) and unlink(os.path.join(dirs.waiting_dir, name)):
                        removed.append(name[: -len(SUFFIX)])
                        self._forget_blockers(name[: -len(SUFFIX)])
        # Keys of unique jobs removed here are free: their files are gone (_file_unique).
        self._left(removed)
        return len(removed)


def find(directory: str, job_id: str) -> str | None:
    suffix = f"-{job_id}{SUFFIX}"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return None
    for name in names:
        if name.endswith(suffix) and name.split("-", 2)[-1] == job_id + SUFFIX:
            return name
    return None
