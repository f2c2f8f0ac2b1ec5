"""The history index of the file result backend: the newest finished jobs
without reading every result file.

Each process that stores results appends to a segment of its own,
``index/<opened-ns>-<pid>-<token>.idx``, one line per stored job::

    <bound-ns> TAB <finished-ns> TAB <status> TAB <job id> TAB <task name> LF

One writer per segment, so appends need no lock between processes and work
the same on Windows, where ``O_APPEND`` from several processes is not atomic.

``bound-ns`` is the running maximum of finish times along a segment: it
never decreases, and is never below the finish time of any line before it. Reading a segment backwards, the read can
therefore stop at the first line whose bound is older than the ``limit``-th
best finish time found so far: for the newest 10 of 100,000 jobs that is one
64 KiB read. Segments are visited most recently modified first, and a segment
last modified before that finish time (minus the file system's timestamp
granularity) is skipped without being opened: a job is stored after it
finished, so a segment's mtime is at least its last bound (a finish time set
in the future by hand moves the mtime forward to keep that true).

The index only points at result files; :class:`~nuvom.backends.file.FileResultBackend`
reads and checks each record it returns, so a stale or torn line costs a
lookup, never a wrong answer.
"""

from __future__ import annotations

import heapq
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence

__all__ = ["ResultIndex"]

_O_BINARY = getattr(os, "O_BINARY", 0)
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_BINARY
_SUFFIX = ".idx"
_CHUNK = 1 << 16
_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
# Timestamps of files tick with a coarse clock (a few ms on Linux, 2 s on FAT):
# a segment's mtime may trail the bound of its last line by that much.
_MTIME_SLACK_NS = 3_000_000_000

#: ``(finished_at, status, job id, task name)`` of one stored job.
Entry = tuple[float | None, str, str, str]


def _clean(name: str) -> str:
    return name.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _encode_name(name: str) -> bytes:
    return _clean(name).encode("utf-8", "replace")


class ResultIndex:
    """Append-only, segmented index of stored jobs, read newest first."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._path = ""
        self._bound = 0

    # -- writing --------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> None:
        """Record stored jobs, one write for the whole group."""
        if not entries:
            return
        now_ns = time.time_ns()
        with self._lock:
            fd = self._segment()
            bound = self._bound
            lines = []
            for finished_at, status, job_id, task_name in entries:
                finished = now_ns if finished_at is None else int(finished_at * 1e9)
                bound = max(bound, finished)
                lines.append(f"{bound}\t{finished}\t{status}\t{job_id}\t{_clean(task_name)}\n")
            view = memoryview("".join(lines).encode("utf-8", "replace"))
            while view:
                view = view[os.write(fd, view) :]
            self._bound = bound
            if bound > now_ns:
                # A finish time in the future (set by hand): keep "mtime >= every
                # bound in the segment" true so that readers do not skip it.
                try:
                    os.utime(self._path, ns=(bound, bound))
                except OSError:
                    pass

    def _segment(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            # A forked child writes a segment of its own, never its parent's.
            self._path = os.path.join(self.directory, f"{time.time_ns():020d}-{pid}-{secrets.token_hex(3)}{_SUFFIX}")
            self._fd = os.open(self._path, _APPEND_FLAGS, 0o644)
            self._pid, self._bound = pid, 0
        return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    # -- reading --------------------------------------------------------------
    def segments(self) -> list[tuple[int, str]]:
        """``(mtime_ns, path)`` of every segment, most recently modified first."""
        out = []
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if entry.name.endswith(_SUFFIX):
                        try:
                            out.append((entry.stat().st_mtime_ns, entry.path))
                        except FileNotFoundError:
                            continue
        except FileNotFoundError:
            return []
        out.sort(reverse=True)
        return out

    def newest(self, limit: int, status: str | None = None, task: str | None = None) -> list[tuple[int, str]]:
        """``(finished_ns, job id)`` of up to ``limit`` jobs, newest first, one
        line per id (its latest), filtered by status and task name."""
        want_status = None if status is None else status.encode("ascii")
        want_task = None if task is None else _encode_name(task)
        best: dict[bytes, tuple[int, int]] = {}  # job id -> (bound, finished) of its latest line
        threshold: int | None = None  # finish time of the limit-th best, once there are that many
        for mtime_ns, path in self.segments():
            if threshold is not None and mtime_ns + _MTIME_SLACK_NS < threshold:
                break  # this segment and every one after it hold only older lines
            for lines in _lines_backwards(path):
                exhausted = False
                for line in lines:
                    parts = line.split(b"\t", 4)
                    if len(parts) != 5 or not _ID.fullmatch(parts[3]):
                        continue  # torn or foreign line
                    try:
                        bound, finished = int(parts[0]), int(parts[1])
                    except ValueError:
                        continue
                    if threshold is not None and bound < threshold:
                        exhausted = True
                        break
                    if (want_status is not None and parts[2] != want_status) or (
                        want_task is not None and parts[4] != want_task
                    ):
                        continue
                    seen = best.get(parts[3])
                    if seen is None or bound > seen[0]:
                        best[parts[3]] = (bound, finished)
                if len(best) >= limit:
                    threshold = heapq.nlargest(limit, (f for _, f in best.values()))[-1]
                if exhausted:
                    break
        ranked = heapq.nlargest(limit, best.items(), key=lambda item: item[1][1])
        return [(finished, job_id.decode("ascii")) for job_id, (_, finished) in ranked]

    def status_counts(self) -> dict[str, int]:
        """How many jobs have each status, by the latest line of each id. Reads
        every segment whole: a dashboard samples it, the hot path never does."""
        latest: dict[bytes, tuple[int, bytes]] = {}
        for _mtime, path in self.segments():
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            for line in data.split(b"\n")[:-1]:  # the last piece may be half-written
                parts = line.split(b"\t", 4)
                if len(parts) != 5:
                    continue
                try:
                    bound = int(parts[0])
                except ValueError:
                    continue
                seen = latest.get(parts[3])
                if seen is None or bound >= seen[0]:
                    latest[parts[3]] = (bound, parts[2])
        out: dict[str, int] = {}
        for _bound, status in latest.values():
            key = status.decode("ascii", "replace")
            out[key] = out.get(key, 0) + 1
        return out


def _lines_backwards(path: str) -> Iterator[list[bytes]]:
    """The complete lines of a file, last first, a chunk at a time."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - a generator that closes it in finally
    except FileNotFoundError:
        return
    try:
        pos = f.seek(0, os.SEEK_END)
        carry = b""
        # After the last newline comes nothing, or a line its process is still
        # writing: dropped, once, wherever the read finds that newline.
        drop_tail = True
        while pos > 0:
            step = min(_CHUNK, pos)
            pos -= step
            f.seek(pos)
            pieces = (f.read(step) + carry).split(b"\n")
            # The first piece may continue before this chunk: carried to the next read.
            carry = pieces.pop(0) if pos > 0 else b""
            if drop_tail and pieces:
                pieces.pop()
                drop_tail = False
            pieces.reverse()
            yield pieces
    finally:
        f.close()
