"""Where the file queue keeps each named queue's jobs, and listings of folders.

Every named queue has a base folder: the data dir itself for ``default`` (so
that a data dir of an earlier version keeps working as it is), else
``queues/<name>/``. Under a base::

    queue/                 waiting jobs of priority 0
    priorities/<p>/        waiting jobs of priority p (any other integer)
    claimed/               the queue's claimed jobs
    waiting/<id>.msgpack   workflow jobs waiting for their parents

A priority folder is a *lane*: names in it sort by due time, so a claim takes
due names in order from the highest priority's lane, then the next. A job
never changes lanes (its queue and priority are fixed), so a lane's listing is
kept between claims as before, and a new job in a higher lane is seen by the
next claim through that lane folder's mtime.

Queue names (``[A-Za-z0-9_.:-]``) become folder names that are the same on
case-insensitive and Windows file systems: lowercase letters, digits, ``_``
and ``-`` are kept, any other character is written ``.xx`` (its hex code).
"""

from __future__ import annotations

import heapq
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from nuvom.backends._file_io import storage_error
from nuvom.errors import BackendError
from nuvom.job import DEFAULT_QUEUE

__all__ = ["DirNames", "Lane", "QueueDirs", "decode_queue", "encode_queue"]

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_ENCODED = re.compile(r"(?:[a-z0-9_-]|\.[0-9a-f]{2})+")
# Nothing due in the listing and the folder unchanged: list again after this anyway.
_RELIST_SECS = 1.0
# Directory mtimes tick with a coarse clock; "unchanged" is trusted only for a
# listing taken this long after the directory's last change.
MTIME_TRUST_NS = 50_000_000
# A listing keeps the first this many names of a lane in due order, so that a
# worker's memory does not grow with the queue; a listing costs one pass over
# the folder per this many claims.
_LISTING_MAX = 16_384


def encode_queue(name: str) -> str:
    if not _QUEUE_NAME.fullmatch(name):
        raise BackendError(
            f"queue name {name!r} is not valid: 1-64 letters, digits, '_', '.', ':' or '-' (task(queue=...))"
        )
    return "".join(c if c in _KEPT else f".{ord(c):02x}" for c in name)


def decode_queue(folder: str) -> str | None:
    if not _ENCODED.fullmatch(folder):
        return None
    out, k = [], 0
    while k < len(folder):
        if folder[k] == ".":
            out.append(chr(int(folder[k + 1 : k + 3], 16)))
            k += 3
        else:
            out.append(folder[k])
            k += 1
    return "".join(out)


class DirNames:
    """The names in one folder, listed again only when the folder changed (its
    mtime): asking costs one ``stat`` while nothing changes. A folder that does
    not exist is empty."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._state: tuple[int | None, frozenset[str]] = (None, frozenset())

    def names(self) -> frozenset[str]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        state = self._state
        if state[0] == mtime:
            return state[1]
        listed_at = time.time_ns()
        try:
            names = frozenset(os.listdir(self.path))
        except FileNotFoundError:
            return frozenset()
        self._state = (mtime if listed_at - mtime > MTIME_TRUST_NS else None, names)
        return names


class Lane:
    """One folder of waiting jobs (a queue's priority), with the sorted names
    of its last listing, consumed from the left by claims."""

    def __init__(self, path: str, priority: int) -> None:
        self.path = path
        self.priority = priority
        self.listing: deque[str] = deque()
        self._listed_at = float("-inf")
        self._listed_mtime: int | None = None

    def next_due(self, due: str, job_files: Callable[[str, Iterable[os.DirEntry[str]]], Iterable[str]]) -> str | None:
        """The next due name, listing the folder again when the listing has none
        left and the folder may have changed. ``job_files`` filters a listing."""
        listing = self.listing
        if not (listing and listing[0][:20] <= due) and self._outdated():
            self._relist(job_files)
            listing = self.listing
        if listing and listing[0][:20] <= due:
            return listing.popleft()
        return None

    def _outdated(self) -> bool:
        if time.monotonic() - self._listed_at >= _RELIST_SECS or self._listed_mtime is None:
            return True
        # An unchanged folder has nothing new: an idle worker with many delayed
        # jobs waiting stats a directory instead of listing it.
        try:
            return os.stat(self.path).st_mtime_ns != self._listed_mtime
        except FileNotFoundError:
            return False

    def _relist(self, job_files: Callable[[str, Iterable[os.DirEntry[str]]], Iterable[str]]) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
            listed_at_ns = time.time_ns()
            with os.scandir(self.path) as entries:
                # The earliest names only: memory stays flat however long the queue.
                names = heapq.nsmallest(_LISTING_MAX, job_files(self.path, entries))
        except FileNotFoundError:
            mtime, listed_at_ns, names = 0, time.time_ns(), []
        self.listing = deque(names)
        self._listed_at = time.monotonic()
        self._listed_mtime = mtime if listed_at_ns - mtime > MTIME_TRUST_NS else None

    def forget(self) -> None:
        self.listing.clear()
        self._listed_at = float("-inf")


class QueueDirs:
    """The folders of one named queue (see the module docstring)."""

    def __init__(self, name: str, base: str) -> None:
        self.name = name
        self.base = base
        self.queue_dir = os.path.join(base, "queue")
        self.claimed_dir = os.path.join(base, "claimed")
        self.waiting_dir = os.path.join(base, "waiting")
        self.prio_dir = os.path.join(base, "priorities")
        for path in (self.queue_dir, self.claimed_dir):
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise storage_error(exc, f"creating the folders of queue {name!r}", path) from None
        self.waiting = DirNames(self.waiting_dir)
        self._p0 = Lane(self.queue_dir, 0)
        self._lanes: list[Lane] = [self._p0]
        self._by_priority: dict[int, Lane] = {0: self._p0}
        self._prio_mtime: int | None = None
        self._made: set[str] = {self.queue_dir}
        self._lock = threading.Lock()

    def lanes(self) -> list[Lane]:
        """Its lanes, highest priority first (one ``stat`` while they stay the same)."""
        try:
            mtime = os.stat(self.prio_dir).st_mtime_ns
        except FileNotFoundError:
            return self._lanes
        if mtime == self._prio_mtime:
            return self._lanes
        listed_at = time.time_ns()
        priorities = {0}
        for name in os.listdir(self.prio_dir):
            try:
                priorities.add(int(name))
            except ValueError:
                continue  # not ours
        with self._lock:
            for p in priorities - self._by_priority.keys():
                self._by_priority[p] = Lane(os.path.join(self.prio_dir, str(p)), p)
            self._lanes = sorted((self._by_priority[p] for p in priorities), key=lambda lane: -lane.priority)
        self._prio_mtime = mtime if listed_at - mtime > MTIME_TRUST_NS else None
        return self._lanes

    def lane_dir(self, priority: int) -> str:
        """The folder for jobs of ``priority``, made on first use."""
        if priority == 0:
            return self.queue_dir
        path = os.path.join(self.prio_dir, str(priority))
        if path not in self._made:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise storage_error(exc, "creating a priority folder", path) from None
            self._made.add(path)
        return path

    def waiting_path(self, job_id: str) -> str:
        return os.path.join(self.waiting_dir, job_id + ".msgpack")

    def make_waiting_dir(self) -> None:
        if self.waiting_dir not in self._made:
            os.makedirs(self.waiting_dir, exist_ok=True)
            self._made.add(self.waiting_dir)

    def all_lane_dirs(self) -> list[str]:
        return [lane.path for lane in self.lanes()]

    def forget(self) -> None:
        for lane in self._lanes:
            lane.forget()


def base_of(root: str, name: str) -> str:
    return root if name == DEFAULT_QUEUE else os.path.join(root, "queues", encode_queue(name))
