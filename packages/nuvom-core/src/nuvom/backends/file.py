"""Durable queue and result backends on plain files, with nothing to install.

``NUVOM_QUEUE_BACKEND=file`` and ``NUVOM_RESULT_BACKEND=file`` (also the
default when nuvom-sqlite is not installed). Any number of producer and worker
processes may share one data dir (``NUVOM_DATA_DIR``, default ``.nuvom``)::

    .nuvom/
      queue/    <due-ns>-<seq>-<job id>.msgpack                 waiting jobs
      claimed/  <lease-expiry-ns>-<claims>-<job id>.msgpack     claimed jobs
      jobs/     <job id>.msgpack                                finished jobs
      index/    <opened-ns>-<pid>-<token>.idx                   history index
      workers/  <hash of worker id>.worker                      worker presence (_file_workers)
      tmp/      files being written
      corrupt/  quarantined unreadable files

How it holds together:

* Every file is written whole under a temporary name and moved into place
  with ``os.replace``: a reader never sees half a job.
* A claim is a rename out of ``queue/`` (or of an expired claim) into
  ``claimed/``. Of several processes renaming the same file exactly one
  succeeds, so no two workers run the same job.
* Names of waiting jobs sort by due time: FIFO order and "not yet due" are
  decided without opening a file. A worker lists ``queue/`` once and works
  through the sorted names until they run out.
* A claimed file's name carries its lease expiry and the number of runs
  that started but are not yet written into the job's ``attempts``. Finding
  expired claims and renewing a lease (one more rename) never open a file,
  and a claim costs a rename and a read, not a rewrite.
* The start mark (:meth:`FileJobQueue.mark_started`) is one rename of the
  claimed file: the lease runs from the start, and the name counts the run.
  A claim that expired before it started is taken over with nothing counted.
* Finished jobs are found by id in ``jobs/``; the history (``list_jobs``)
  comes from an append-only index (:mod:`nuvom.backends._file_index`).

Writes are atomic with respect to crashes of the process, not fsynced: a
power cut may lose the jobs written in the last moments before it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nuvom._polling import Poller
from nuvom._settings import Settings, load_settings
from nuvom.backends._file_index import ResultIndex
from nuvom.backends._file_io import (
    NotAFile,
    TempFiles,
    quarantine,
    read_bytes,
    replace,
    storage_error,
    sweep_temp,
    unlink,
)
from nuvom.backends._file_schedules import FileSchedules
from nuvom.backends._file_workers import FilePresence
from nuvom.errors import SerializationError
from nuvom.job import Job, JobStatus, lease_secs_for, validate_job_id
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

__all__ = ["FileJobQueue", "FileResultBackend"]

log = logging.getLogger("nuvom.backends.file")

_WINDOWS = os.name == "nt"
_SUFFIX = ".msgpack"
_WAITING_NAME = re.compile(r"\d{20}-\d{8}-[A-Za-z0-9_-]{1,64}\.msgpack")
_CLAIMED_NAME = re.compile(r"(\d{20})-(\d{1,9})-([A-Za-z0-9_-]{1,64})\.msgpack")
# A waiting job's name: 20 digits of due time, '-', 8 digits of sequence, '-', the id.
_WAITING_ID_AT = 30

# The owner of a claim renews it before a two-step move when less than this remains.
_SAFE_LEASE_NS = 2_000_000_000
# Nothing due in the listing and queue/ unchanged: list again after this anyway.
_RELIST_SECS = 1.0
# Directory mtimes tick with a coarse clock; "unchanged" is trusted only for a
# listing taken this long after the directory's last change.
_MTIME_TRUST_NS = 50_000_000
# A listing keeps the first this many names of queue/ in due order, so that a
# worker's memory does not grow with the queue; a listing costs one pass over
# the directory per this many claims.
_LISTING_MAX = 16_384
# Names of things in queue/ that are not files, remembered to warn once.
_SKIPPED_MAX = 1024
# A waiting get() looks for its record after this pause, doubling to the max.
_WAIT_FIRST = 0.0005
_WAIT_MAX = 0.02


@dataclass
class _Claim:
    path: str
    expiry_ns: int
    claims: int
    lease_ns: int
    # The lease ran out and another worker took the job: this worker's outcome is not stored.
    lost: bool = False
    started: bool = False


def _make_dirs(root: str, *names: str) -> list[str]:
    paths = [os.path.join(root, name) for name in names]
    for path in paths:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, "creating the data folder", path) from None
    return paths


class FileJobQueue(FilePresence, BaseJobQueue, FileSchedules):
    """Jobs waiting in ``<data dir>/queue/``, claimed into ``<data dir>/claimed/``;
    schedules in ``<data dir>/schedules/`` (:mod:`nuvom.backends._file_schedules`)."""

    shared_between_processes = True

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or load_settings()
        super().__init__(settings)
        self._settings = settings
        self.root = os.path.abspath(settings.data_dir)
        self.queue_dir, self.claimed_dir, tmp_dir, self.corrupt_dir = _make_dirs(
            self.root, "queue", "claimed", "tmp", "corrupt"
        )
        self._temp = TempFiles.shared(tmp_dir)
        sweep_temp(tmp_dir)
        self._lock = threading.Lock()
        self._claims: dict[str, _Claim] = {}
        self._seq = itertools.count()
        # Sorted names from the last listing of queue/, consumed from the left.
        self._listing: deque[str] = deque()
        self._listed_at = float("-inf")
        self._listed_mtime: int | None = None
        self._reclaim_every = min(0.5, max(0.05, settings.lease_secs / 4))
        self._next_reclaim = 0.0
        self._default_lease_ns = self._lease_ns(None)
        self._skipped: set[str] = set()

    # -- producing ----------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        self.enqueue_many((job,))

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        write = self._temp.write_atomic
        try:
            for job in jobs:
                write(self._waiting_path(job), job.to_bytes())
        except OSError as exc:
            raise storage_error(exc, "queueing a job", self.queue_dir) from None

    def _waiting_path(self, job: Job) -> str:
        validate_job_id(job.id)
        due_ns = max(0, int(job.due_at * 1e9))
        # The sequence keeps FIFO among jobs of one batch created in the same tick.
        seq = next(self._seq) % 100_000_000
        return f"{self.queue_dir}{os.sep}{due_ns:020d}-{seq:08d}-{job.id}{_SUFFIX}"

    # -- claiming -----------------------------------------------------------
    def claim(self, batch_size: int) -> list[Job]:
        out: list[Job] = []
        with self._lock:
            now_ns = time.time_ns()
            if time.monotonic() >= self._next_reclaim:
                self._reclaim_expired(out, batch_size, now_ns)
            due = f"{now_ns:020d}"
            try:
                while len(out) < batch_size:
                    name = self._next_due(due)
                    if name is None:
                        break
                    job = self._take(self.queue_dir, name, name[_WAITING_ID_AT : -len(_SUFFIX)], 0, now_ns)
                    if job is not None:
                        out.append(job)
            except OSError:
                if not out:
                    raise
                # The jobs claimed so far are this worker's now: hand them over.
                log.exception("claiming more jobs failed; running the %d claimed", len(out))
        return out

    def _next_due(self, due: str) -> str | None:
        """The next due name of the listing, listing ``queue/`` again when it has
        none left and may have changed."""
        listing = self._listing
        if not (listing and listing[0][:20] <= due) and self._listing_outdated():
            self._relist()
            listing = self._listing
        if listing and listing[0][:20] <= due:
            return listing.popleft()
        return None

    def _job_files(self, entries: Iterable[os.DirEntry[str]]) -> Iterable[str]:
        for entry in entries:
            name = entry.name
            if not name.endswith(_SUFFIX):
                continue  # not ours (editor backups, .DS_Store...)
            try:
                regular = entry.is_file()
            except OSError:
                continue
            if not regular:
                if name not in self._skipped:
                    # A FIFO would block the read, a directory cannot be read: skipped, never moved.
                    if len(self._skipped) < _SKIPPED_MAX:
                        self._skipped.add(name)
                    log.warning("skipping %s in %s: not a regular file (remove it)", name, self.queue_dir)
            elif _WAITING_NAME.fullmatch(name):
                yield name
            else:
                path = os.path.join(self.queue_dir, name)
                quarantine(path, self.corrupt_dir, f"queue-{name}", "not a <due>-<seq>-<job id> name", log)

    def _listing_outdated(self) -> bool:
        if time.monotonic() - self._listed_at >= _RELIST_SECS or self._listed_mtime is None:
            return True
        # An unchanged queue/ has nothing new: an idle worker with many delayed
        # jobs waiting stats a directory instead of listing it.
        return os.stat(self.queue_dir).st_mtime_ns != self._listed_mtime

    def _relist(self) -> None:
        mtime = os.stat(self.queue_dir).st_mtime_ns
        listed_at_ns = time.time_ns()
        with os.scandir(self.queue_dir) as entries:
            # The earliest names only: memory stays flat however long the queue.
            names = heapq.nsmallest(_LISTING_MAX, self._job_files(entries))
        self._listing = deque(names)
        self._listed_at = time.monotonic()
        self._listed_mtime = mtime if listed_at_ns - mtime > _MTIME_TRUST_NS else None

    def _reclaim_expired(self, out: list[Job], batch_size: int, now_ns: int) -> None:
        """Claim jobs whose lease ran out (their worker died), oldest first."""
        self._next_reclaim = time.monotonic() + self._reclaim_every
        now = f"{now_ns:020d}"
        expired = sorted(n for n in os.listdir(self.claimed_dir) if n[:20] < now and n.endswith(_SUFFIX))
        for name in expired:
            if len(out) >= batch_size:
                self._next_reclaim = 0.0  # more to reclaim: look again on the next claim
                return
            match = _CLAIMED_NAME.fullmatch(name)
            if match is None:
                path = os.path.join(self.claimed_dir, name)
                quarantine(path, self.corrupt_dir, f"claimed-{name}", "not a <expiry>-<claims>-<job id> name", log)
                continue
            job_id, claims = match.group(3), int(match.group(2))
            mine = self._claims.get(job_id)
            if mine is not None and not mine.lost:
                # This process stalled past its own lease: renew, do not run the job twice.
                self._renew(job_id, mine, now_ns)
                continue
            job = self._take(self.claimed_dir, name, job_id, claims, now_ns)
            if job is not None:
                log.warning(
                    "job %s (%s): its claim expired (worker gone?); claimed again, attempt %d",
                    job.id,
                    job.func_name,
                    job.attempts,
                )
                out.append(job)

    def _take(self, directory: str, name: str, job_id: str, claims: int, now_ns: int) -> Job | None:
        """Claim one file by renaming it into claimed/; ``None`` if another process
        was first or the file is unreadable (then it is quarantined).

        ``claims``: the runs the name counts (started, not yet in the file's
        ``attempts``); this claim is counted in the name once it starts."""
        expiry = now_ns + self._default_lease_ns
        path = f"{self.claimed_dir}{os.sep}{expiry:020d}-{claims}-{job_id}{_SUFFIX}"
        try:
            os.replace(os.path.join(directory, name), path)
        except FileNotFoundError:
            return None  # another process claimed it first
        except PermissionError:
            if _WINDOWS:
                return None  # open in a reader this instant; claimed on a later pass
            raise
        try:
            job = Job.from_bytes(read_bytes(path))
        except SerializationError as exc:
            quarantine(path, self.corrupt_dir, f"queue-{name}", str(exc), log)
            return None
        except (IsADirectoryError, NotAFile) as exc:
            quarantine(path, self.corrupt_dir, f"queue-{name}", f"not a regular file ({exc})", log)
            return None
        except OSError:
            # Unreadable for a reason of this process (no descriptor left, say):
            # hand the file back as it was, or the job would wait out a lease and
            # then run a second time.
            try:
                os.replace(path, os.path.join(directory, name))
            except OSError:
                pass  # then its lease returns it
            raise
        if job.id != job_id:
            quarantine(path, self.corrupt_dir, f"queue-{name}", f"it holds job {job.id!r}", log)
            return None
        job.mark_claimed(claims + 1)
        claim = _Claim(path, expiry, claims, self._lease_ns(job))
        self._claims[job_id] = claim
        if claim.lease_ns != self._default_lease_ns:
            # The lease is the job's own (nuvom.job.lease_secs_for), longer or
            # shorter: a dead worker's job is taken over when the docs say.
            self._renew(job_id, claim, now_ns)
        return job

    def _lease_ns(self, job: Job | None) -> int:
        settings = self._settings
        lease = lease_secs_for(
            job.timeout_secs if job is not None else None,
            lease_secs=settings.lease_secs,
            default_timeout_secs=settings.job_timeout_secs,
        )
        return int(lease * 1e9)

    def _renew(self, job_id: str, claim: _Claim, now_ns: int) -> bool:
        """Move the claim's expiry to now + its lease; ``False`` if it was lost."""
        expiry = now_ns + claim.lease_ns
        path = f"{self.claimed_dir}{os.sep}{expiry:020d}-{claim.claims}-{job_id}{_SUFFIX}"
        try:
            replace(claim.path, path)
        except FileNotFoundError:
            if claim.lost:
                return False
            claim.lost = True
            log.warning(
                "job %s: lease lost (it expired and another worker claimed the job); this worker's outcome "
                "may be recorded as well",
                job_id,
            )
            return False
        claim.path, claim.expiry_ns = path, expiry
        return True

    def mark_started(self, job: Job) -> bool:
        """One rename of the claimed file: its name counts the run, and its
        lease runs from now. A rename is durable against a crash of this
        process; it fails if another worker took the claim over."""
        with self._lock:
            claim = self._claims.get(job.id)
            if claim is None or claim.started:
                return True  # not claimed through this object: nothing to fence
            if claim.lost:
                del self._claims[job.id]
                return False
            expiry = time.time_ns() + claim.lease_ns
            path = f"{self.claimed_dir}{os.sep}{expiry:020d}-{claim.claims + 1}-{job.id}{_SUFFIX}"
            try:
                replace(claim.path, path)
            except FileNotFoundError:
                del self._claims[job.id]  # its lease ran out and another worker has it
                return False
            claim.path, claim.expiry_ns, claim.claims, claim.started = path, expiry, claim.claims + 1, True
            return True

    # -- settling claims ----------------------------------------------------
    def ack(self, job_ids: Sequence[str]) -> None:
        # The file goes before the claim is forgotten, under the lock: a reclaim
        # scan in between would take this worker's own expired claim for a dead
        # worker's and run the job again.
        with self._lock:
            for job_id in job_ids:
                claim = self._claims.get(job_id)
                if claim is not None:
                    if not claim.lost:
                        # The file becomes the next result's (a spare, see TempFiles).
                        # Already gone: the lease ran out and another worker has the job.
                        self._temp.recycle(claim.path)
                    del self._claims[job_id]

    def complete(self, jobs: Sequence[Job], results: BaseResultBackend) -> None:
        """Store outcomes, then acknowledge, fenced by the claim: each claim is
        renewed first (a rename of its file, which fails if another worker took
        the job over after the lease ran out), and the outcome of a job whose
        claim was lost is dropped; the worker holding the claim now records it.
        The renewal leaves a full lease for the write, so only a process stalled
        for longer than the lease between the two can still overwrite."""
        kept: list[Job] = []
        dropped: list[str] = []
        now_ns = time.time_ns()
        with self._lock:
            for job in jobs:
                claim = self._claims.get(job.id)
                if claim is not None and (claim.lost or not self._renew(job.id, claim, now_ns)):
                    dropped.append(job.id)
                else:
                    kept.append(job)
            for job_id in dropped:
                self._claims.pop(job_id, None)
        if dropped:
            log.warning(
                "%d outcome(s) not stored: their claim was taken over by another worker (%s)",
                len(dropped),
                ", ".join(dropped[:5]),
            )
        if kept:
            results.store(kept)
            self.ack([job.id for job in kept])

    def requeue(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            with self._lock:
                claim = self._claims.get(job.id)
                if (
                    claim is None
                    or claim.lost
                    or (
                        claim.expiry_ns - time.time_ns() < _SAFE_LEASE_NS
                        and not self._renew(job.id, claim, time.time_ns())
                    )
                ):
                    log.warning("job %s is not claimed by this worker (lease lost); not requeued", job.id)
                    self._claims.pop(job.id, None)
                    continue
                del self._claims[job.id]
            # Two steps, safe because the lease keeps every other process off this
            # file: the new content replaces the claimed file, which then moves back
            # to queue/. A crash between them counts the claims once more, which is
            # better than the alternative order's risk of a second copy of the job.
            self._temp.write_atomic(claim.path, job.to_bytes())
            replace(claim.path, self._waiting_path(job))

    def extend_leases(self, job_ids: Sequence[str]) -> None:
        now_ns = time.time_ns()
        with self._lock:
            for job_id in job_ids:
                claim = self._claims.get(job_id)
                if claim is not None and not claim.lost:
                    self._renew(job_id, claim, now_ns)

    # -- reading ------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        validate_job_id(job_id)
        # A job moves queue/ -> claimed/ -> queue/ (retry) while we look: look
        # in the order it moves, then once more where it may have gone back to.
        for directory in (self.queue_dir, self.claimed_dir, self.queue_dir):
            name = _find(directory, job_id)
            if name is None:
                continue
            try:
                data = read_bytes(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            try:
                job = Job.from_bytes(data)
            except SerializationError as exc:
                log.warning("job %s: its queue file %s is unreadable: %s", job_id, name, exc)
                return None
            if directory == self.claimed_dir:
                job.mark_claimed(int(name.split("-", 2)[1]))
            return job
        return None

    def qsize(self) -> int:
        return sum(1 for name in os.listdir(self.queue_dir) if name.endswith(_SUFFIX))

    def counts(self) -> dict[str, int]:
        # Names carry no attempt count, so retries are not told apart from new
        # jobs without opening every file: "retrying" is left out.
        queued = sum(1 for name in os.listdir(self.queue_dir) if name.endswith(_SUFFIX))
        running = sum(1 for name in os.listdir(self.claimed_dir) if name.endswith(_SUFFIX))
        return {"queued": queued, "running": running}

    def claims_held(self) -> tuple[int, float | None]:
        # A claimed file's name begins with its lease's end, in nanoseconds.
        ends = [int(name[:20]) for name in os.listdir(self.claimed_dir) if _CLAIMED_NAME.fullmatch(name)]
        return len(ends), (max(ends) / 1e9 if ends else None)

    def peek(self, limit: int = 50) -> list[Job]:
        names = sorted(n for n in os.listdir(self.queue_dir) if _WAITING_NAME.fullmatch(n))
        out: list[Job] = []
        for name in names:
            if len(out) >= limit:
                break
            try:
                out.append(Job.from_bytes(read_bytes(os.path.join(self.queue_dir, name))))
            except (FileNotFoundError, SerializationError):
                continue  # claimed meanwhile, or left for a claimer to quarantine
        return out

    def cancel(self, job_id: str) -> Job | None:
        validate_job_id(job_id)
        name = _find(self.queue_dir, job_id)
        if name is None:
            return None
        # Taken out of queue/ with the same rename a claim uses: of a worker and
        # this call, exactly one gets the file.
        taken = self._temp.new_path()
        try:
            os.replace(os.path.join(self.queue_dir, name), taken)
        except (FileNotFoundError, PermissionError):
            return None
        try:
            return Job.from_bytes(read_bytes(taken))
        except SerializationError as exc:
            quarantine(taken, self.corrupt_dir, f"queue-{name}", str(exc), log)
            return None
        finally:
            unlink(taken)

    def clear(self) -> int:
        with self._lock:
            self._listing.clear()
            names = [n for n in os.listdir(self.queue_dir) if n.endswith(_SUFFIX)]
            return sum(unlink(os.path.join(self.queue_dir, name)) for name in names)

    def close(self) -> None:
        with self._lock:
            self._listing.clear()
            self._listed_at = float("-inf")
        self._temp.drop_spares()


def _find(directory: str, job_id: str) -> str | None:
    suffix = f"-{job_id}{_SUFFIX}"
    for name in os.listdir(directory):
        if name.endswith(suffix) and name.split("-", 2)[-1] == job_id + _SUFFIX:
            return name
    return None


class FileResultBackend(BaseResultBackend):
    """Finished jobs in ``<data dir>/jobs/<id>.msgpack``, history in ``<data dir>/index/``."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or load_settings()
        super().__init__(settings)
        self.root = os.path.abspath(settings.data_dir)
        self.jobs_dir, index_dir, tmp_dir, self.corrupt_dir = _make_dirs(self.root, "jobs", "index", "tmp", "corrupt")
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
