"""Durable queue and result backends on plain files, with nothing to install.

``NUVOM_QUEUE_BACKEND=file`` and ``NUVOM_RESULT_BACKEND=file`` (also the
default when nuvom-sqlite is not installed). Any number of producer and worker
processes on one machine may share one data dir (``NUVOM_DATA_DIR``, default
``.nuvom``)::

    .nuvom/
      queue/      <due-ns>-<seq>-<job id>.msgpack             waiting jobs (queue default, priority 0)
      priorities/<p>/ <due-ns>-<seq>-<job id>.msgpack         waiting jobs of priority p
      claimed/    <lease-expiry-ns>-<claims>-<job id>.msgpack claimed jobs
      waiting/    <job id>.msgpack                           workflow jobs waiting for parents
      queues/<name>/  queue/ priorities/ claimed/ waiting/   the same for each other named queue
      flow/<parent id>/<child id>, blockers/<child id>/<parent id>   workflow edges (_file_flows)
      unique/     <key hash>.key                             unique keys (_file_unique)
      cancels/    <job id>                                   cancel requests for running jobs
      rates/      <key hash>                                 rate limits (_file_control)
      jobs/       <job id>.msgpack                           finished jobs (_file_results)
      index/      <opened-ns>-<pid>-<token>.idx              history index
      workers/    <hash of worker id>.worker                 worker presence (_file_workers)
      tmp/        files being written
      corrupt/    quarantined unreadable files

How it holds together (the store has no transactions: every step that must
be atomic is a rename, an ``O_EXCL`` create, a link, or runs under a lock file):

* Every file is written whole under a temporary name and moved into place
  with ``os.replace``: a reader never sees half a job.
* A claim is a rename out of a lane (``queue/``, ``priorities/<p>/``) or of
  an expired claim into ``claimed/``. Of several processes renaming the same
  file exactly one succeeds, so no two workers run the same job.
* Names of waiting jobs sort by due time: FIFO order and "not yet due" are
  decided without opening a file. A worker lists a lane once and works
  through the sorted names until they run out. A claim serves the queues it
  is given in order, each queue's lanes from the highest priority down
  (:mod:`nuvom.backends._file_lanes`).
* A claimed file's name carries its lease expiry and the number of runs
  that started but are not yet written into the job's ``attempts``. Finding
  expired claims and renewing a lease (one more rename) never open a file,
  and a claim costs a rename and a read, not a rewrite.
* The start mark (:meth:`FileJobQueue.mark_started`) is one rename of the
  claimed file: the lease runs from the start, and the name counts the run.
  A claim that expired before it started is taken over with nothing counted.
* A job leaves the queue when its file is gone (outcome stored, then claim
  removed; or cancelled). Then the jobs waiting for it are released, its
  cancel request dropped and its unique key freed: steps that a process killed
  half-way leaves for the next claimer (:mod:`~nuvom.backends._file_flows`,
  :mod:`~nuvom.backends._file_unique`). A job using none of these costs one
  ``stat`` of ``flow/`` and one of ``cancels/`` per group acknowledged together.

Writes are atomic with respect to crashes of the process, not fsynced: a
power cut may lose the jobs written in the last moments before it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from nuvom._settings import Settings, load_settings
from nuvom.backends._file_control import FileControl
from nuvom.backends._file_flows import FileFlows
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
from nuvom.backends._file_lanes import DirNames, QueueDirs, base_of, decode_queue
from nuvom.backends._file_reading import CLAIMED_NAME, WAITING_ID_AT, WAITING_NAME, FileReading
from nuvom.backends._file_results import FileResultBackend, make_dirs
from nuvom.backends._file_schedules import FileSchedules
from nuvom.backends._file_unique import FileUnique
from nuvom.backends._file_workers import FilePresence
from nuvom.errors import BackendError, SerializationError
from nuvom.job import DEFAULT_QUEUE, Job, lease_secs_for, validate_job_id
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

__all__ = ["FileJobQueue", "FileResultBackend"]

log = logging.getLogger("nuvom.backends.file")

_WINDOWS = os.name == "nt"
_SUFFIX = ".msgpack"

# The owner of a claim renews it before a two-step move when less than this remains.
_SAFE_LEASE_NS = 2_000_000_000
# Names of things in a lane that are not files, remembered to warn once.
_SKIPPED_MAX = 1024


@dataclass
class _Claim:
    path: str
    dir: str
    expiry_ns: int
    claims: int
    lease_ns: int
    # Its job's unique key: the claim's file is deleted rather than reused, and the key freed.
    unique_key: str | None = None
    # The lease ran out and another worker took the job: this worker's outcome is not stored.
    lost: bool = False
    started: bool = False


class FileJobQueue(FilePresence, FileReading, FileFlows, FileUnique, FileControl, BaseJobQueue, FileSchedules):
    """Jobs waiting in lanes (``<data dir>/queue/`` and the others above),
    claimed into ``claimed/``; schedules in ``<data dir>/schedules/``
    (:mod:`nuvom.backends._file_schedules`)."""

    shared_between_processes = True
    supports_queues = True
    supports_unique = True
    supports_workflows = True

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or load_settings()
        super().__init__(settings)
        self._settings = settings
        self.root = os.path.abspath(settings.data_dir)
        tmp_dir, self.corrupt_dir = make_dirs(self.root, "tmp", "corrupt")
        self._default = QueueDirs(DEFAULT_QUEUE, self.root)
        self.queue_dir, self.claimed_dir = self._default.queue_dir, self._default.claimed_dir
        self._queues: dict[str, QueueDirs] = {DEFAULT_QUEUE: self._default}
        self._queue_folders = DirNames(os.path.join(self.root, "queues"))
        self._temp = TempFiles.shared(tmp_dir)
        sweep_temp(tmp_dir)
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()
        self._claims: dict[str, _Claim] = {}
        self._seq = itertools.count()
        self._reclaim_every = min(0.5, max(0.05, settings.lease_secs / 4))
        self._next_reclaim = 0.0
        self._default_lease_ns = self._lease_ns(None)
        self._skipped: set[str] = set()
        self._init_flows()
        self._init_control()

    # -- folders ------------------------------------------------------------
    def _dirs(self, name: str) -> QueueDirs:
        dirs = self._queues.get(name)
        if dirs is None:
            dirs = self._queues.setdefault(name, QueueDirs(name, base_of(self.root, name)))
        return dirs

    def _all_dirs(self) -> list[QueueDirs]:
        """The default queue's folders, then every other named queue's."""
        out = [self._default]
        for folder in sorted(self._queue_folders.names()):
            name = decode_queue(folder)
            if name is not None and name != DEFAULT_QUEUE:
                out.append(self._dirs(name))
        return out

    def _lane_dir_of(self, job: Job) -> str:
        if job.queue == DEFAULT_QUEUE and job.priority == 0:
            return self.queue_dir
        return self._dirs(job.queue).lane_dir(job.priority)

    # -- producing ----------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        self.enqueue_many((job,))

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        write = self._temp.write_atomic
        try:
            for job in jobs:
                if job.flow is None:
                    write(self._lane_path(job), job.to_bytes())
                else:
                    self._enqueue_flow(job)
        except OSError as exc:
            raise storage_error(exc, "queueing a job", self.queue_dir) from None

    def _lane_path(self, job: Job) -> str:
        validate_job_id(job.id)
        due_ns = max(0, int(job.due_at * 1e9))
        # The sequence keeps FIFO among jobs of one batch created in the same tick.
        seq = next(self._seq) % 100_000_000
        return f"{self._lane_dir_of(job)}{os.sep}{due_ns:020d}-{seq:08d}-{job.id}{_SUFFIX}"

    # -- claiming -----------------------------------------------------------
    def claim(self, batch_size: int) -> list[Job]:
        return self._claim(batch_size, (DEFAULT_QUEUE,))

    def claim_batch(
        self,
        limit: int,
        timeout: float | None,
        idle: Callable[[], int],
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> list[Job]:
        jobs = self._poller().until(lambda: self._claim(limit, queues) or None, timeout) or []
        start = idle() if jobs else 0
        return self._started_first([], jobs, start) if start > 0 else jobs

    def _claim(self, batch_size: int, queues: Sequence[str]) -> list[Job]:
        out: list[Job] = []
        with self._lock:
            now_ns = time.time_ns()
            reclaim = time.monotonic() >= self._next_reclaim
            if reclaim:
                self._next_reclaim = time.monotonic() + self._reclaim_every
            due = f"{now_ns:020d}"
            try:
                for name in queues:
                    dirs = self._dirs(name)
                    if reclaim:
                        self._reclaim_expired(dirs, out, batch_size, now_ns)
                    for lane in dirs.lanes():
                        while len(out) < batch_size:
                            entry = lane.next_due(due, self._job_files)
                            if entry is None:
                                break
                            job = self._take(dirs, lane.path, entry, entry[WAITING_ID_AT : -len(_SUFFIX)], 0, now_ns)
                            if job is not None:
                                out.append(job)
                    if len(out) >= batch_size:
                        break
            except OSError:
                if not out:
                    raise
                # The jobs claimed so far are this worker's now: hand them over.
                log.exception("claiming more jobs failed; running the %d claimed", len(out))
        if reclaim:
            self._sweep()
        return out

    def _sweep(self) -> None:
        """Finish what processes killed half-way left (workflow releases, unique
        keys being taken): at most as often as the reclaim scan, one thread at a time."""
        if not self._sweeping.acquire(blocking=False):
            return
        try:
            self._sweep_flows()
            self._sweep_stages()
        except Exception:
            # A file of someone else's making must not stop this worker's claims.
            log.exception("looking for workflow jobs and unique keys to recover failed; trying again later")
        finally:
            self._sweeping.release()

    def _job_files(self, folder: str, entries: Iterable[os.DirEntry[str]]) -> Iterable[str]:
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
                    log.warning("skipping %s in %s: not a regular file (remove it)", name, folder)
            elif WAITING_NAME.fullmatch(name):
                yield name
            else:
                path = os.path.join(folder, name)
                quarantine(path, self.corrupt_dir, f"queue-{name}", "not a <due>-<seq>-<job id> name", log)

    def _reclaim_expired(self, dirs: QueueDirs, out: list[Job], batch_size: int, now_ns: int) -> None:
        """Claim jobs of one queue whose lease ran out (their worker died), oldest first."""
        now = f"{now_ns:020d}"
        expired = sorted(n for n in os.listdir(dirs.claimed_dir) if n[:20] < now and n.endswith(_SUFFIX))
        for name in expired:
            if len(out) >= batch_size:
                self._next_reclaim = 0.0  # more to reclaim: look again on the next claim
                return
            match = CLAIMED_NAME.fullmatch(name)
            if match is None:
                path = os.path.join(dirs.claimed_dir, name)
                quarantine(path, self.corrupt_dir, f"claimed-{name}", "not a <expiry>-<claims>-<job id> name", log)
                continue
            job_id, claims = match.group(3), int(match.group(2))
            mine = self._claims.get(job_id)
            if mine is not None and not mine.lost:
                # This process stalled past its own lease: renew, do not run the job twice.
                self._renew(job_id, mine, now_ns)
                continue
            job = self._take(dirs, dirs.claimed_dir, name, job_id, claims, now_ns)
            if job is not None:
                log.warning(
                    "job %s (%s): its claim expired (worker gone?); claimed again, attempt %d",
                    job.id,
                    job.func_name,
                    job.attempts,
                )
                out.append(job)

    def _take(self, dirs: QueueDirs, directory: str, name: str, job_id: str, claims: int, now_ns: int) -> Job | None:
        """Claim one file by renaming it into the queue's claimed/; ``None`` if
        another process was first or the file is unreadable (then it is quarantined).

        ``claims``: the runs the name counts (started, not yet in the file's
        ``attempts``); this claim is counted in the name once it starts."""
        expiry = now_ns + self._default_lease_ns
        path = f"{dirs.claimed_dir}{os.sep}{expiry:020d}-{claims}-{job_id}{_SUFFIX}"
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
        claim = _Claim(path, dirs.claimed_dir, expiry, claims, self._lease_ns(job), job.unique_key)
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
        path = f"{claim.dir}{os.sep}{expiry:020d}-{claim.claims}-{job_id}{_SUFFIX}"
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
            path = f"{claim.dir}{os.sep}{expiry:020d}-{claim.claims + 1}-{job.id}{_SUFFIX}"
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
        left: list[str] = []
        keys: list[tuple[str, str]] = []
        with self._lock:
            for job_id in job_ids:
                claim = self._claims.get(job_id)
                if claim is not None:
                    # Already gone: the lease ran out and another worker has the job.
                    if claim.unique_key is None:
                        # The file becomes the next result's (a spare, see TempFiles).
                        if not claim.lost and self._temp.recycle(claim.path):
                            left.append(job_id)
                    elif not claim.lost and unlink(claim.path):
                        # Deleted, not a spare: its key is a link to it (_file_unique).
                        left.append(job_id)
                        keys.append((job_id, claim.unique_key))
                    del self._claims[job_id]
        if left:
            self._left(left, keys)

    def _left(self, job_ids: Sequence[str], keys: Sequence[tuple[str, str]] = ()) -> None:
        """These jobs have left the queue (their files are gone): release the jobs
        that waited only for them, drop their cancel requests, free their keys.
        What fails here is finished by the sweep (a release) or by the next
        producer of the key, so it is logged, not raised."""
        try:
            self._release_children_of(job_ids)
            self._drop_cancel_requests(job_ids)
            for job_id, key in keys:
                self._release_key(key, job_id)
        except (OSError, BackendError):
            log.exception("after %d job(s) left the queue, releasing what waited for them failed", len(job_ids))

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
            # to its lane. A crash between them counts the claims once more, which is
            # better than the alternative order's risk of a second copy of the job.
            if claim.unique_key is not None:
                self._rewrite_unique(job, claim.unique_key, claim.path)
            else:
                self._temp.write_atomic(claim.path, job.to_bytes())
            replace(claim.path, self._lane_path(job))

    def extend_leases(self, job_ids: Sequence[str]) -> None:
        now_ns = time.time_ns()
        with self._lock:
            for job_id in job_ids:
                claim = self._claims.get(job_id)
                if claim is not None and not claim.lost:
                    self._renew(job_id, claim, now_ns)

    def close(self) -> None:
        with self._lock:
            for dirs in self._queues.values():
                dirs.forget()
        self._temp.drop_spares()
