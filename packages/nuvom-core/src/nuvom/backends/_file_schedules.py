"""Schedules of the file backend (:class:`nuvom.backends.file.FileJobQueue`)::

    .nuvom/schedules/
      <stem>.schedule          the schedule (msgpack), <stem> a hash of its key
      <stem>.paused            present while the schedule is paused
      ticks/<stem>-<timing>/   one folder per schedule and timing
        <tick ms>.tick         the claim of a tick: created with O_CREAT|O_EXCL,
                               holding its job (or b"skip")
        <tick ms>.done         the tick's job is in queue/
        <tick ms>.repair       a repair of this tick is under way

A tick is claimed by creating its ``.tick`` file exclusively: of several
processes exactly one succeeds, on POSIX and on Windows. The winner then
writes the job into ``queue/`` under a name fixed by the tick (due time, id
derived from key and tick), then ``.done``. A process killed between the
claim and ``.done`` leaves a ``.tick`` alone; any firing loop that finds one
older than ``_REPAIR_AFTER`` (and no job with its id anywhere) queues the job
again, under the same name, so a repair run twice still makes one job.

Progress (last tick, next tick) is read from the tick files, so no record is
ever read, changed and written back: pausing (a file), claiming (a file) and
storing (a whole-file replace) never undo each other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from typing import TYPE_CHECKING

from nuvom.backends._file_io import read_bytes, unlink
from nuvom.errors import SerializationError
from nuvom.job import Job
from nuvom.plugins.contracts import BaseScheduleStore
from nuvom.schedule import Schedule, tick_job_id, tick_ms

if TYPE_CHECKING:
    from nuvom.backends._file_io import TempFiles

__all__ = ["FileSchedules"]

log = logging.getLogger("nuvom.backends.file")

_SKIP = b"skip"
# A claim without .done this old is taken for a claimer that died mid-way.
_REPAIR_AFTER = 10.0
# A repair lock this old is taken for a repairer that died.
_STALE_REPAIR = 60.0
# Tick files kept per schedule; older ones are pruned (the newest decides progress).
_KEEP_TICKS = 64
_O_BINARY = getattr(os, "O_BINARY", 0)
_CREATE_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY


def _stem(key: str) -> str:
    # Keys may hold ':' (not allowed in Windows file names): files are named by a hash.
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _timing_id(s: Schedule) -> str:
    text = f"{s.at}|{s.interval}|{s.cron}|{s.timezone_name}|{tick_ms(s.anchor)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class FileSchedules(BaseScheduleStore):
    """The schedule store half of the file queue (needs its ``root``,
    ``_temp``, ``get`` and ``_lane_dir_of``)."""

    root: str
    _temp: TempFiles

    def get(self, job_id: str) -> Job | None:  # provided by FileJobQueue
        raise NotImplementedError

    def _lane_dir_of(self, job: Job) -> str:  # provided by FileJobQueue
        raise NotImplementedError

    @property
    def _sched_dir(self) -> str:
        path = os.path.join(self.root, "schedules")
        if not os.path.isdir(path):
            os.makedirs(os.path.join(path, "ticks"), exist_ok=True)
        return path

    def _tick_dir(self, s: Schedule) -> str:
        return os.path.join(self._sched_dir, "ticks", f"{_stem(s.key)}-{_timing_id(s)}")

    # -- records ----------------------------------------------------------------
    def _read_spec(self, stem: str) -> Schedule | None:
        path = os.path.join(self._sched_dir, stem + ".schedule")
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            return None
        try:
            from nuvom import serialization

            return Schedule.model_validate(serialization.loads(data, what="stored schedule"))
        except (SerializationError, ValueError) as exc:
            log.warning("schedule file %s is unreadable, ignored: %s", path, exc)
            return None

    def _with_progress(self, s: Schedule, stem: str) -> Schedule:
        s.paused = os.path.exists(os.path.join(self._sched_dir, stem + ".paused"))
        ticks = self._ticks(self._tick_dir(s))
        if ticks:
            last = ticks[-1]
            s.last_run_at = last / 1000
            # Ticks are named in whole ms: the next tick is the first past the named one's ms.
            after = s.tick_after(last / 1000 + 0.0005)
            stored = s.next_run_at
            s.next_run_at = None if after is None else max(after, stored) if stored is not None else after
            for ms in reversed(ticks):
                content = self._marker(self._tick_dir(s), ms)
                if content != _SKIP:
                    s.last_job_id = tick_job_id(s.key, ms / 1000)
                    break
        return s

    def _ticks(self, tick_dir: str) -> list[int]:
        try:
            names = os.listdir(tick_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".tick") and n[:-5].isdigit())

    def _marker(self, tick_dir: str, ms: int) -> bytes | None:
        try:
            return read_bytes(os.path.join(tick_dir, f"{ms:015d}.tick"))
        except FileNotFoundError:
            return None

    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        from nuvom import serialization

        stem = _stem(schedule.key)
        data = serialization.dumps(schedule.model_dump(mode="json"), what=f"schedule {schedule.key}")
        self._temp.write_atomic(os.path.join(self._sched_dir, stem + ".schedule"), data)
        paused = os.path.join(self._sched_dir, stem + ".paused")
        if schedule.paused:
            open(paused, "ab").close()
        else:
            unlink(paused)
        os.makedirs(self._tick_dir(schedule), exist_ok=True)
        # Folders of earlier timings of this key: their ticks no longer count.
        ticks_root = os.path.join(self._sched_dir, "ticks")
        mine = os.path.basename(self._tick_dir(schedule))
        for name in os.listdir(ticks_root):
            if name.startswith(stem + "-") and name != mine:
                shutil.rmtree(os.path.join(ticks_root, name), ignore_errors=True)
        return schedule

    def get_schedule(self, key: str) -> Schedule | None:
        stem = _stem(key)
        s = self._read_spec(stem)
        return None if s is None or s.key != key else self._with_progress(s, stem)

    def list_schedules(self) -> list[Schedule]:
        out = []
        for name in os.listdir(self._sched_dir):
            if name.endswith(".schedule"):
                stem = name[: -len(".schedule")]
                s = self._read_spec(stem)
                if s is not None:
                    out.append(self._with_progress(s, stem))
        return sorted(out, key=lambda s: s.key)

    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        stem = _stem(key)
        if self._read_spec(stem) is None:
            return None
        path = os.path.join(self._sched_dir, stem + ".paused")
        if paused:
            open(path, "ab").close()
        else:
            unlink(path)
        return self.get_schedule(key)

    def delete_schedule(self, key: str) -> bool:
        stem = _stem(key)
        s = self._read_spec(stem)
        if s is None:
            return False
        unlink(os.path.join(self._sched_dir, stem + ".paused"))
        gone = unlink(os.path.join(self._sched_dir, stem + ".schedule"))
        shutil.rmtree(self._tick_dir(s), ignore_errors=True)
        return gone

    # -- ticks ------------------------------------------------------------------
    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        current = self.get_schedule(key)
        if current is None or current.paused:
            return False
        if current.next_run_at is None or tick_ms(tick) < tick_ms(current.next_run_at):
            return False  # another process got further; this tick is past
        tick_dir = self._tick_dir(current)
        os.makedirs(tick_dir, exist_ok=True)
        ms = tick_ms(tick)
        try:
            fd = os.open(os.path.join(tick_dir, f"{ms:015d}.tick"), _CREATE_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, job.to_bytes() if job is not None else _SKIP)
        finally:
            os.close(fd)
        if job is not None:
            self._queue_tick_job(job, tick)
        open(os.path.join(tick_dir, f"{ms:015d}.done"), "ab").close()
        self._prune(tick_dir, ms)
        return True

    def _queue_tick_job(self, job: Job, tick: float) -> None:
        # A name fixed by the tick: queueing it again (a repair) replaces the file
        # instead of adding a second job.
        due_ns = max(0, int(tick * 1e9))
        path = f"{self._lane_dir_of(job)}{os.sep}{due_ns:020d}-00000000-{job.id}.msgpack"
        self._temp.write_atomic(path, job.to_bytes())

    def _prune(self, tick_dir: str, newest: int) -> None:
        ticks = self._ticks(tick_dir)
        if len(ticks) <= _KEEP_TICKS * 2:
            return
        for ms in ticks[:-_KEEP_TICKS]:
            if ms < newest and os.path.exists(os.path.join(tick_dir, f"{ms:015d}.done")):
                unlink(os.path.join(tick_dir, f"{ms:015d}.tick"))
                unlink(os.path.join(tick_dir, f"{ms:015d}.done"))

    def repair_ticks(self) -> int:
        repaired = 0
        now = time.time()
        for s in self.list_schedules():
            tick_dir = self._tick_dir(s)
            try:
                names = set(os.listdir(tick_dir))
            except FileNotFoundError:
                continue
            for name in names:
                if not name.endswith(".tick") or name[:-5] + ".done" in names:
                    continue
                path = os.path.join(tick_dir, name)
                try:
                    if now - os.stat(path).st_mtime < _REPAIR_AFTER:
                        continue  # its claimer is probably queueing it this instant
                except FileNotFoundError:
                    continue
                if self._repair(s, tick_dir, int(name[:-5])):
                    repaired += 1
        return repaired

    def _repair(self, s: Schedule, tick_dir: str, ms: int) -> bool:
        lock = os.path.join(tick_dir, f"{ms:015d}.repair")
        try:
            os.close(os.open(lock, _CREATE_EXCL, 0o644))
        except FileExistsError:
            try:
                if time.time() - os.stat(lock).st_mtime > _STALE_REPAIR:
                    unlink(lock)  # its repairer died; the next pass takes over
            except FileNotFoundError:
                pass
            return False
        try:
            content = self._marker(tick_dir, ms)
            if content == _SKIP:
                queued = False
            else:
                job = None
                if content:
                    try:
                        job = Job.from_bytes(content)
                    except SerializationError:
                        job = None
                if job is None:  # the claimer died while writing the claim: rebuild the job
                    job = s.make_job(ms / 1000, time.time())
                queued = not self._job_exists(job.id)
                if queued:
                    self._queue_tick_job(job, ms / 1000)
                    log.warning(
                        "schedule %s: tick %d was claimed by a process that died; its job %s queued", s.key, ms, job.id
                    )
            open(os.path.join(tick_dir, f"{ms:015d}.done"), "ab").close()
            return queued
        finally:
            unlink(lock)

    def _job_exists(self, job_id: str) -> bool:
        # queue/ and claimed/ (get), then the file results of the same data dir.
        if self.get(job_id) is not None:
            return True
        return os.path.exists(os.path.join(self.root, "jobs", f"{job_id}.msgpack"))
