"""A SQLite store that was read-only and became writable again (issue 27, item 3):
a running worker resumes within seconds, without a restart, logs one line per
change of state, and finishes every job once, as a fresh worker would.

Real mounts (root only): a tmpfs holds the store, and a read-only bind mount is
put over the worker's view of it. Linux refuses to remount a filesystem
read-only while a process holds files on it open for writing (EBUSY), and SQLite
always does; a read-only mount over the data folder (what a container's volume
can become) is how a running worker meets a read-only store here.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom.errors import BackendError
from nuvom.job import Job, JobStatus
from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend

from .conftest import Project, wait_until

N_JOBS = 60


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"mount {' '.join(args)} failed: {proc.stderr.strip()}")


class Disk:
    """A small tmpfs, and bind mounts of it that can be made read-only and back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounts: list[Path] = []

    def bind(self, at: Path) -> Path:
        self.bind_from(self.root, at)
        return at

    def read_only(self, at: Path) -> None:
        _mount("-o", "remount,bind,ro", str(at))

    def cover_read_only(self, at: Path) -> None:
        """A read-only view of the disk mounted over ``at`` in one step. A bind
        over ``at`` made read-only afterwards fails with EBUSY whenever a process
        opened a file for writing through it in between (a worker's thread
        opening its connection): a bind of a read-only bind is read-only from
        its first moment."""
        stage = self.root.parent / "read-only-stage"
        self.read_only(self.bind(stage))
        self.bind_from(stage, at)

    def bind_from(self, source: Path, at: Path) -> None:
        at.mkdir(exist_ok=True)
        _mount("--bind", str(source), str(at))
        self.mounts.append(at)

    def writable(self, at: Path) -> None:
        _mount("-o", "remount,bind,rw", str(at))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "disk"
    root.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(root)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    d = Disk(root)
    try:
        yield d
    finally:
        for at in reversed([*d.mounts, root]):
            subprocess.run(["umount", "-l", str(at)], capture_output=True)


def start_worker(project: Project, data: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = project.root / f"worker-{len(project.procs)}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", "tasks", "--threads", "4"],
        cwd=project.root,
        env=project.env(NUVOM_DATA_DIR=str(data), NUVOM_LOG_LEVEL="INFO"),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    project.procs.append(proc)
    wait_until(lambda: "started" in log.read_text(errors="replace"), 60, "the worker started")
    return proc, log


def sqlite_lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "nuvom.sqlite" in line and text in line]


def all_done(results: SQLiteResultBackend, jobs: list[Job]) -> bool:
    return all((r := results.get_full(j.id)) is not None and r.status is JobStatus.SUCCESS for j in jobs)


def test_a_worker_started_on_a_read_only_store_resumes_once_it_is_writable(project: Project, disk: Disk) -> None:
    # The producer holds the store open through a writable path (another host's
    # mount of the volume); this worker sees it through a read-only one.
    data = disk.root / "data"
    queue, results = SQLiteJobQueue(path=data / "nuvom.db"), SQLiteResultBackend(path=data / "nuvom.db")
    jobs = [Job(func_name="record", task_path="tasks:record", args=[f"k{i}"]) for i in range(N_JOBS)]
    queue.enqueue_many(jobs)
    view = disk.bind(project.root / "view")
    disk.read_only(view)
    _, log = start_worker(project, view / "data")
    wait_until(lambda: "is read-only" in log.read_text(), 30, "the worker to find the store read-only")
    assert not project.run_lines()

    disk.writable(view)
    writable_at = time.monotonic()
    wait_until(lambda: project.run_lines(), 30, "the first job to run")
    resumed_in = time.monotonic() - writable_at
    wait_until(lambda: all_done(results, jobs), 60, "every job stored")
    assert resumed_in < 10, f"resumed {resumed_in:.1f} s after the store became writable"
    assert sorted(project.executions().values()) == [1] * N_JOBS  # each once
    assert len(sqlite_lines(log, "is read-only")) == 1, log.read_text()
    assert len(sqlite_lines(log, "is writable again")) == 1, log.read_text()
    queue.close()
    results.close()


def test_a_read_only_spell_under_a_running_worker_ends_with_every_job_done_once(project: Project, disk: Disk) -> None:
    data = disk.root / "data"
    SQLiteJobQueue(path=data / "nuvom.db").qsize()  # created while writable
    producer_side = disk.bind(project.root / "producer") / "data" / "nuvom.db"
    _, log = start_worker(project, data)
    # A read-only mount over the data folder: what the worker opens from now on
    # (its threads' first connections) is read-only, its open files are not.
    disk.cover_read_only(disk.root)
    queue, results = SQLiteJobQueue(path=producer_side), SQLiteResultBackend(path=producer_side)
    jobs = [Job(func_name="record", task_path="tasks:record", args=[f"k{i}"]) for i in range(N_JOBS)]
    queue.enqueue_many(jobs)
    # Outcomes held in memory, more jobs waiting than the worker may hold: then writable.
    wait_until(lambda: "storing finished jobs failed" in log.read_text(), 30, "the worker to meet the read-only store")
    disk.writable(disk.root)
    wait_until(lambda: all_done(results, jobs), 60, "every job stored")
    assert sorted(project.executions().values()) == [1] * N_JOBS
    assert len(sqlite_lines(log, "is read-only")) == 1, log.read_text()
    assert len(sqlite_lines(log, "is writable again")) == 1, log.read_text()
    queue.close()
    results.close()


# Holds the store open from another process, as another worker on the volume would.
KEEPER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM nuvom_queue").fetchone()
print("open", flush=True)
sys.stdin.read()
"""


def test_connections_opened_while_read_only_do_not_keep_the_process_read_only(
    disk: Disk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    created = SQLiteJobQueue(path=disk.root / "data" / "nuvom.db")
    created.qsize()
    created.close()
    keeper = subprocess.Popen(
        [sys.executable, "-c", KEEPER, str(disk.root / "data" / "nuvom.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert keeper.stdout is not None and keeper.stdout.readline().strip() == "open"
        view = disk.bind(tmp_path / "view")
        disk.read_only(view)
        path = view / "data" / "nuvom.db"
        # Two Databases on the file in this process, as in a worker (queue, results).
        queue, results = SQLiteJobQueue(path=path), SQLiteResultBackend(path=path)
        assert queue.qsize() == 0 and results.count() == 0  # reading works read-only
        with caplog.at_level(logging.INFO, logger="nuvom.sqlite"):
            for _ in range(3):
                with pytest.raises(BackendError, match="is read-only"):
                    queue.enqueue(Job(func_name="record"))
            disk.writable(view)

            def enqueued() -> bool:
                try:
                    queue.enqueue(Job(func_name="record"))
                except BackendError:
                    return False
                return True

            wait_until(enqueued, 10, "a write once the file is writable")
            job = Job(func_name="record")
            now = time.time()
            job.mark_claimed()
            job.mark_succeeded(job.mark_started("w", now), "done", now)
            results.store([job])  # the other Database on the file writes too
            assert results.get_full(job.id) is not None and queue.qsize() == 1
        queue.close()
        results.close()
    finally:
        keeper.communicate("", timeout=30)
    messages = [r.getMessage() for r in caplog.records if r.name == "nuvom.sqlite"]
    assert sum("is read-only" in m for m in messages) == 1, messages
    assert sum("is writable again" in m for m in messages) == 1, messages
