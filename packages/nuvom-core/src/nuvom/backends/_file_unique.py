"""Unique keys in the file store: at most one queued-or-running job per key::

    unique/<h>.key       the key (h: a hash of it): a hard link to its job's file
    unique/<h>.lock      the lock (_file_lock) of the steps that delete or move the key
    unique/stage/<h>.<kind>.<pid>-<token>-<n>   a job's file on its way in
                         (kind e: being queued, r: rewritten for a retry, l: a new link of the key)

The key and its job's file are one file under two names. Every move of the
job's file (claim, renewal, start mark, back to its lane for a retry, release
from ``waiting/``) is a rename, which keeps it the same file, so the key's link
count says whether its job is in the queue: 2 while it is, 1 once the job's
file is gone (acknowledged, cancelled, cleared). One ``stat`` answers; no
folder is searched.

Queueing (:meth:`FileUnique.enqueue_unique`):

1. the job is written to a stage file (a workflow job's blockers and edges first);
2. the stage file is linked to the key: ``os.link`` fails when the key exists,
   so of producers racing for a key exactly one gets it;
3. the stage file is renamed into the job's lane (or ``waiting/``).

A producer that finds the key: link count 2, its job is queued and its id is
returned (the key is the job: its id is read from it); link count 1, its job
left without the key being deleted: the key is deleted under the lock, checked
there to be still the same file with one link, and step 2 is tried again. A
holder with a record in ``jobs/`` whose file is still there is leaving this
instant (its outcome stored, its claim about to go): the producer waits for it,
up to two seconds, so that a ``.delay()`` made once ``.get()`` returned queues
a new job.

Leaving: the claim's file is deleted (not kept as a spare: the key would keep it
alive), then the key is deleted under the lock if it holds this job's id.

A retry writes new content, so a new file: under the lock, the content goes to
a stage file, the key is moved onto it (a link, then ``os.replace``), then the
stage file replaces the claimed file. The key's link count never drops to 1.

A process killed at any instant:

* producer after 1: a stage file that is not the key: deleted after a minute.
* producer after 2: the key is linked to a stage file: the job is as good as
  queued. The next producer that finds the key, or the sweep (every claimer,
  at most twice a second), renames it into its lane once it is a second old
  (one rename: once).
* worker after storing the outcome, before deleting the claim: the job runs
  again after its lease; its key is held meanwhile, rightly (it is queued).
* worker after deleting the claim, before deleting the key: the key has one
  link: the next producer deletes it.
* retry, after the key moved onto the stage file, before that replaced the
  claim: the key (two links: stage, key) says queued, and the job is: its old
  file is still claimed and runs again after its lease. When it leaves, the key
  holds its id and is deleted; the stage file, no longer the key, goes after a minute.
* anyone holding the lock: the lock is recovered (dead owner, or ten seconds).

A unique job whose file is found corrupt is moved to ``corrupt/``: its key keeps
two links, and is held, until that file is deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING

from nuvom.backends._file_io import read_bytes, replace, unlink, write_file
from nuvom.backends._file_lanes import DirNames
from nuvom.backends._file_lock import LockFile
from nuvom.errors import BackendError, SerializationError
from nuvom.job import Job, validate_job_id

if TYPE_CHECKING:
    from nuvom.backends._file_io import TempFiles

__all__ = ["FileUnique"]

log = logging.getLogger("nuvom.backends.file")

# A stage file linked to its key this old was left by a producer that died: queued by whoever sees it.
_STAGE_GRACE = 1.0
# Other stage files this old are deleted.
_STAGE_GARBAGE = 60.0
# A producer waits this long for a finished holder to leave the queue.
_LEAVING_WAIT = 2.0
# Attempts at taking a key that keeps changing hands.
_TRIES = 100


def _stem(key: str) -> str:
    # Keys are up to 256 characters of anything: files are named by a hash.
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _holder_id(data: bytes) -> str | None:
    try:
        return Job.from_bytes(data).id
    except SerializationError:
        return None


class FileUnique:
    """Mixed into :class:`~nuvom.backends.file.FileJobQueue` (needs its ``root``,
    ``_temp`` and the methods declared below)."""

    root: str
    _temp: TempFiles

    if TYPE_CHECKING:

        def _lane_path(self, job: Job) -> str: ...
        def _prepare_flow(self, job: Job) -> None: ...
        def _place_flow(self, job: Job, staged: str | None) -> None: ...
        def _forget_waiting(self, job: Job) -> None: ...
        def _has_record(self, job_id: str) -> bool: ...

    @property
    def _unique_dir(self) -> str:
        return os.path.join(self.root, "unique")

    def _stage_dir(self) -> str:
        path = os.path.join(self.root, "unique", "stage")
        if not self.__dict__.get("_stage_made"):
            os.makedirs(path, exist_ok=True)
            self.__dict__["_stage_made"] = True
        return path

    def _key_path(self, stem: str) -> str:
        return os.path.join(self._unique_dir, stem + ".key")

    def _key_lock(self, stem: str) -> LockFile:
        return LockFile(os.path.join(self._unique_dir, stem + ".lock"))

    def _stage_path(self, stem: str, kind: str) -> str:
        return os.path.join(self._stage_dir(), f"{stem}.{kind}.{os.path.basename(self._temp.new_path())}")

    # -- queueing -------------------------------------------------------------
    def enqueue_unique(self, job: Job) -> str:
        key = job.unique_key
        if key is None:
            raise ValueError(f"job {job.id} has no unique_key")
        validate_job_id(job.id)
        stem = _stem(key)
        if job.flow is not None:
            self._prepare_flow(job)
        stage = self._stage_path(stem, "e")
        write_file(stage, job.to_bytes())
        try:
            for _ in range(_TRIES):
                try:
                    os.link(stage, self._key_path(stem))
                except FileExistsError:
                    holder = self._key_holder(stem)
                    if holder is None:
                        continue  # the key was free after all: take it
                    if job.flow is not None:
                        self._forget_waiting(job)
                    return holder
                self._place_staged(job, stage)
                return job.id
        finally:
            unlink(stage)  # nothing left to delete once placed
        raise BackendError(f"file backend: unique key {key!r} changed hands {_TRIES} times while queueing; try again")

    def _key_holder(self, stem: str) -> str | None:
        """The id of the queued job holding the key; ``None`` if none does (the
        key was deleted, or was left by a job gone and is deleted here)."""
        path = self._key_path(stem)
        deadline = time.monotonic() + _LEAVING_WAIT
        pause = 0.0005
        while True:
            try:
                st = os.stat(path)
                holder = _holder_id(read_bytes(path))
            except FileNotFoundError:
                return None
            if st.st_nlink < 2 or holder is None:
                break
            if self._has_record(holder) and time.monotonic() < deadline:
                time.sleep(pause)  # its outcome is stored and its claim about to go: wait for it
                pause = min(pause * 2, 0.02)
                continue
            self._finish_stages(stem, st)
            return holder
        with self._key_lock(stem):
            try:
                again = os.stat(path)
            except FileNotFoundError:
                return None
            if os.path.samestat(again, st) and (again.st_nlink < 2 or holder is None):
                if holder is None:
                    log.warning("unique key file %s is unreadable; replaced", path)
                unlink(path)
        return None

    def _place_staged(self, job: Job, stage: str) -> None:
        if job.flow is not None:
            self._place_flow(job, stage)
            return
        try:
            replace(stage, self._lane_path(job))
        except FileNotFoundError:
            pass  # placed by another process that found its key

    def _finish_stages(self, stem: str, key: os.stat_result) -> None:
        """Queue the job of a producer that died after taking this key."""
        try:
            names = os.listdir(self._stage_dir())
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(f"{stem}.e."):
                self._finish_stage(os.path.join(self._stage_dir(), name), key)

    def _finish_stage(self, path: str, key: os.stat_result) -> None:
        try:
            st = os.stat(path)
            data = read_bytes(path)
        except FileNotFoundError:
            return
        if not os.path.samestat(st, key) or time.time() - st.st_mtime < _STAGE_GRACE:
            return
        try:
            job = Job.from_bytes(data)
        except SerializationError:
            return
        log.warning("job %s took its unique key, then its producer stopped before queueing it: queued now", job.id)
        self._place_staged(job, path)

    # -- leaving and retries ----------------------------------------------------
    def _release_key(self, key: str, job_id: str) -> None:
        """The job left the queue (its file is gone): delete its key if it holds it."""
        stem = _stem(key)
        path = self._key_path(stem)
        if not os.path.exists(path):
            return
        with self._key_lock(stem):
            try:
                holder = _holder_id(read_bytes(path))
            except FileNotFoundError:
                return
            if holder == job_id:
                unlink(path)

    def _rewrite_unique(self, job: Job, key: str, claimed: str) -> None:
        """Write a claimed unique job's new content over its claimed file (a
        retry), moving its key onto the new file first."""
        stem = _stem(key)
        stage, link = self._stage_path(stem, "r"), self._stage_path(stem, "l")
        write_file(stage, job.to_bytes())
        try:
            with self._key_lock(stem):
                try:
                    holder = _holder_id(read_bytes(self._key_path(stem)))
                except FileNotFoundError:
                    holder = None
                if holder == job.id:
                    os.link(stage, link)
                    replace(link, self._key_path(stem))
                replace(stage, claimed)
        finally:
            unlink(stage)
            unlink(link)

    # -- recovery -------------------------------------------------------------
    def _sweep_stages(self) -> None:
        """Queue the jobs of producers that died holding their key; delete old stage files."""
        stages = self.__dict__.get("_stages")
        if stages is None:
            stages = self.__dict__["_stages"] = DirNames(os.path.join(self._unique_dir, "stage"))
        names = stages.names()
        if not names:
            return
        now = time.time()
        for name in names:
            stem, _, rest = name.partition(".")
            kind = rest[:1]
            path = os.path.join(stages.path, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            try:
                key = os.stat(self._key_path(stem))
            except FileNotFoundError:
                key = None
            if key is not None and os.path.samestat(st, key):
                if kind == "e":
                    self._finish_stage(path, key)
                continue  # a retry's new file is the key until its job leaves
            if now - st.st_mtime >= _STAGE_GARBAGE:
                unlink(path)
