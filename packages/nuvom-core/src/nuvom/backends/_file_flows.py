"""Workflows in the file store: jobs that wait for other jobs (:mod:`nuvom.workflow`)::

    flow/<parent id>/<child id>              the child waits for the parent (an edge, empty file)
    blockers/<child id>/<parent id>          a parent the child still waits for (empty file)
    <queue base>/waiting/<child id>.msgpack  the child, until it is released into its lane

A parent counts until it has *left* the queue: its file is gone (its outcome
stored, then its claim removed; cancelled; cleared). The store never reads
outcomes: the worker that claims a released child reads its parents' records
and decides (:mod:`nuvom._flow`).

Queueing a child C of parents P1..Pn (the producer):

1. ``blockers/C/Pi`` and ``flow/Pi/C`` for every parent;
2. C's file into ``waiting/`` (written whole, then renamed there);
3. each Pi that has a record in ``jobs/`` (it finished: a record is stored
   before its job leaves the queue) is resolved for C: ``blockers/C/Pi``,
   then ``flow/Pi/C``, deleted;
4. C is released if no blocker is left.

A parent P leaving (:meth:`FileFlows._release_children_of`, after its file is gone):

5. every child in ``flow/P/`` is resolved for P, then released if no
   blocker is left; ``flow/P/`` is removed.

Releasing C is one rename of ``waiting/C`` into its lane: of processes
releasing C at once exactly one succeeds, and cancelling C takes the same file
with a rename, so a child is released at most once and never once cancelled.

No release is lost. Step 3 runs after step 1, and step 5 after P's record was
stored: if the producer's step 3 finds no record of P, P's record, and so its
step 5, come later, and step 5 lists ``flow/P`` after step 1 wrote C there.
Two parents leaving at once each delete their blocker, then look: the later
one finds none left (both may release: one rename wins).

A process killed at any instant:

* producer, between 1 and 2: blockers and edges of a child that is not
  waiting; parents resolving it find nothing to release; the sweep deletes
  them after ten minutes.
* producer, after 2: the child waits with its edges in place; the sweep (every
  claimer, at most twice a second) does steps 3 and 4.
* worker, after a parent's outcome is stored and before its claim is removed:
  the parent runs again once its lease runs out (at-least-once); meanwhile the
  sweep may release its children (the parent has a record): they see that
  first outcome, and are not released a second time.
* worker, after the claim is removed and before step 5 ends: the parent is gone
  and has a record: the sweep resolves it and releases what it blocked.
* anyone, between deleting a child's last blocker and renaming it: the sweep
  finds a waiting child with no blocker and releases it.
* anyone, after the rename: leftovers (an empty ``blockers/C``, edges of a
  released child) go with the next parent leaving, or with the sweep.

A parent with no record in ``jobs/`` (results kept in another store, an id the
store never held, a job cancelled by a process killed before it stored the
``Cancelled`` record) is looked for in the queue's folders by the sweep, at
least every second; once it has been missing from every look for three
seconds it counts as gone. A job still queued is found by such a look unless it
is renamed (claimed, renewed, retried) during it: missing from every look
for three seconds does not happen to a job that is in the queue.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nuvom.backends._file_io import quarantine, read_bytes, replace, touch, unlink
from nuvom.backends._file_lanes import DirNames
from nuvom.errors import BackendError, SerializationError
from nuvom.job import Job, validate_job_id

if TYPE_CHECKING:
    from nuvom.backends._file_io import TempFiles
    from nuvom.backends._file_lanes import QueueDirs

__all__ = ["FileFlows"]

log = logging.getLogger("nuvom.backends.file")

_SUFFIX = ".msgpack"
# A parent without a record counts as gone once missing from every look for this long...
_MISSING_FOR = 3.0
# ...looked for at least this often (a longer gap starts the count again).
_LOOK_EVERY = 1.0
# A parent found in the queue releases its children when it leaves: looked for
# again only this long after (in case its worker was killed while leaving).
_LOOK_AGAIN_AFTER = 60.0
# Leftovers of a child that is not waiting are deleted once this old.
_LEFTOVER_SECS = 600.0
_TIDY_EVERY = 60.0


class FileFlows:
    """Mixed into :class:`~nuvom.backends.file.FileJobQueue` (needs its ``root``,
    ``corrupt_dir``, ``_temp`` and the folder methods declared below)."""

    root: str
    corrupt_dir: str
    _temp: TempFiles

    if TYPE_CHECKING:

        def _dirs(self, name: str) -> QueueDirs: ...
        def _all_dirs(self) -> list[QueueDirs]: ...
        def _lane_path(self, job: Job) -> str: ...
        def _lane_names(self, dirs: QueueDirs) -> list[tuple[int, str, str]]: ...

    def _init_flows(self) -> None:
        self._flow_dir = os.path.join(self.root, "flow")
        self._blockers_dir = os.path.join(self.root, "blockers")
        self._jobs_dir = os.path.join(self.root, "jobs")
        self._parents = DirNames(self._flow_dir)
        self._missing_since: dict[str, float] = {}
        self._seen_at: dict[str, float] = {}
        self._last_look = float("-inf")
        self._next_tidy = time.monotonic() + _TIDY_EVERY

    # -- queueing -------------------------------------------------------------
    def _enqueue_flow(self, job: Job) -> None:
        self._prepare_flow(job)
        self._place_flow(job, None)

    def _parents_of(self, job: Job) -> list[str]:
        assert job.flow is not None
        return [validate_job_id(p) for p in dict.fromkeys(job.flow.parents) if p != job.id]

    def _prepare_flow(self, job: Job) -> None:
        """Step 1: the child's blockers and edges."""
        child = validate_job_id(job.id)
        folder = os.path.join(self._blockers_dir, child)
        os.makedirs(folder, exist_ok=True)
        for parent in self._parents_of(job):
            touch(os.path.join(folder, parent))
            self._add_edge(parent, child)

    def _add_edge(self, parent: str, child: str) -> None:
        folder = os.path.join(self._flow_dir, parent)
        for _ in range(100):
            os.makedirs(folder, exist_ok=True)
            try:
                touch(os.path.join(folder, child))
                return
            except FileNotFoundError:
                continue  # the parent left and removed its folder this instant: make it again
        raise BackendError(f"file backend: could not record that job {child} waits for job {parent} in {folder}")

    def _place_flow(self, job: Job, staged: str | None) -> None:
        """Steps 2 to 4: the child into waiting/ (from ``staged``, a file of it
        already written, if given), then released if no parent blocks it."""
        dirs = self._dirs(job.queue)
        dirs.make_waiting_dir()
        path = dirs.waiting_path(job.id)
        if staged is None:
            self._temp.write_atomic(path, job.to_bytes())
        else:
            try:
                replace(staged, path)
            except FileNotFoundError:
                pass  # placed by another process (_file_unique): the steps below are safe twice
        for parent in self._parents_of(job):
            if self._has_record(parent):
                self._resolve(job.id, parent)
        self._try_release(job.id)

    def _has_record(self, job_id: str) -> bool:
        """The job has a final record among the file results of this data dir."""
        return os.path.exists(os.path.join(self._jobs_dir, job_id + _SUFFIX))

    # -- releasing ------------------------------------------------------------
    def _resolve(self, child: str, parent: str) -> None:
        unlink(os.path.join(self._blockers_dir, child, parent))
        unlink(os.path.join(self._flow_dir, parent, child))

    def _try_release(self, child: str) -> bool:
        """Move the child into its lane if no parent blocks it any longer."""
        blockers = os.path.join(self._blockers_dir, child)
        try:
            if os.listdir(blockers):
                return False
        except FileNotFoundError:
            pass
        for dirs in self._all_dirs():
            path = dirs.waiting_path(child)
            try:
                data = read_bytes(path)
            except FileNotFoundError:
                continue
            try:
                job = Job.from_bytes(data)
            except SerializationError as exc:
                quarantine(path, self.corrupt_dir, f"waiting-{child}{_SUFFIX}", str(exc), log)
                return False
            try:
                replace(path, self._lane_path(job))
            except FileNotFoundError:
                return False  # released or cancelled by another process meanwhile
            _rmdir(blockers)
            return True
        return False

    def _release_children_of(self, job_ids: Sequence[str]) -> None:
        """Step 5 for jobs that left the queue: one ``stat`` of ``flow/`` when none has children."""
        parents = self._parents.names()
        if not parents:
            return
        for parent in job_ids:
            if parent in parents:
                self._release_children(parent)

    def _release_children(self, parent: str) -> None:
        folder = os.path.join(self._flow_dir, parent)
        try:
            children = os.listdir(folder)
        except FileNotFoundError:
            return
        for child in children:
            self._resolve(child, parent)
            self._try_release(child)
        _rmdir(folder)

    def _forget_waiting(self, job: Job) -> None:
        """A waiting child was cancelled: its blockers and edges go."""
        self._forget_blockers(job.id)
        if job.flow is not None:
            for parent in self._parents_of(job):
                unlink(os.path.join(self._flow_dir, parent, job.id))

    def _forget_blockers(self, child: str) -> None:
        shutil.rmtree(os.path.join(self._blockers_dir, child), ignore_errors=True)

    def dependents(self, job_id: str) -> list[str]:
        validate_job_id(job_id)
        try:
            children = os.listdir(os.path.join(self._flow_dir, job_id))
        except FileNotFoundError:
            return []
        every = self._all_dirs()
        return sorted(c for c in children if any(os.path.exists(d.waiting_path(c)) for d in every))

    # -- recovery -------------------------------------------------------------
    def _sweep_flows(self) -> None:
        """Finish releases that processes killed half-way left (the module docstring)."""
        now = time.monotonic()
        waiting = [n[: -len(_SUFFIX)] for d in self._all_dirs() for n in d.waiting.names() if n.endswith(_SUFFIX)]
        without_record: dict[str, list[str]] = {}
        for child in waiting:
            try:
                blockers = os.listdir(os.path.join(self._blockers_dir, child))
            except FileNotFoundError:
                blockers = []
            left = []
            for parent in blockers:
                if self._has_record(parent):
                    self._resolve(child, parent)
                else:
                    left.append(parent)
            if not left:
                self._try_release(child)
            for parent in left:
                without_record.setdefault(parent, []).append(child)
        seen = self._seen_at
        unseen = {p: c for p, c in without_record.items() if now - seen.get(p, float("-inf")) >= _LOOK_AGAIN_AFTER}
        if unseen and now - self._last_look >= _LOOK_EVERY:
            self._look_for(unseen, now)
        for parents in (self._missing_since, self._seen_at):
            for parent in [p for p in parents if p not in without_record]:
                del parents[parent]
        if now >= self._next_tidy:
            self._next_tidy = now + _TIDY_EVERY
            self._tidy(set(waiting))

    def _look_for(self, parents: dict[str, list[str]], now: float) -> None:
        if now - self._last_look > 2 * _LOOK_EVERY:
            self._missing_since.clear()  # not looked for a while: the count starts again
        self._last_look = now
        present = self._present_ids()
        for parent, children in parents.items():
            if parent in present:
                self._missing_since.pop(parent, None)
                self._seen_at[parent] = now
                continue
            since = self._missing_since.setdefault(parent, now)
            if now - since >= _MISSING_FOR:
                log.warning(
                    "job %s is not in the queue and has no record here; the %d job(s) waiting for it are released",
                    parent,
                    len(children),
                )
                del self._missing_since[parent]
                for child in children:
                    self._resolve(child, parent)
                    self._try_release(child)

    def _present_ids(self) -> set[str]:
        """The ids of every job in the queue, from the names of its files."""
        ids: set[str] = set()
        every = self._all_dirs()
        for dirs in every:
            ids.update(n[: -len(_SUFFIX)] for n in dirs.waiting.names() if n.endswith(_SUFFIX))
        # Lanes, claims, lanes again: a job moving between them while we look is seen once.
        lanes = [path for dirs in every for path in dirs.all_lane_dirs()]
        for folder in (*lanes, *(dirs.claimed_dir for dirs in every), *lanes):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            ids.update(n.split("-", 2)[-1][: -len(_SUFFIX)] for n in names if n.endswith(_SUFFIX))
        return ids

    def _tidy(self, waiting: set[str]) -> None:
        """Delete blockers and edges of children that are not waiting, once old."""
        cutoff = time.time() - _LEFTOVER_SECS
        for child in _listdir(self._blockers_dir):
            path = os.path.join(self._blockers_dir, child)
            if child not in waiting and _older(path, cutoff):
                self._forget_blockers(child)
        for parent in _listdir(self._flow_dir):
            folder = os.path.join(self._flow_dir, parent)
            for child in _listdir(folder):
                path = os.path.join(folder, child)
                if child not in waiting and _older(path, cutoff):
                    unlink(path)
            if _older(folder, cutoff):
                _rmdir(folder)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _older(path: str, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return False


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (a child or parent added meanwhile), or gone already
