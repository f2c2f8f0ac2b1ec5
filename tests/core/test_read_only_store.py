"""The file store read-only for a while under a running worker (issue 27, item 3,
as it applies to files): the worker cannot claim meanwhile, says so once, claims
again as soon as the folder is writable, and every job ends SUCCESS, run once.

A real tmpfs (root only) with a read-only bind mount put over it, then made
writable: Linux refuses to remount a filesystem read-only while a process holds
a file on it open for writing, and the worker holds the results index open.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import Settings
from nuvom.job import Job, JobStatus

from ._waiting import wait_until

TASKS = """
import os
from nuvom.task import task


@task
def record(key):
    fd = os.open(os.environ["RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{key}\\n".encode())
    os.close(fd)
    return key
"""


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "disk"
    root.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(root)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield root
    finally:
        for _ in range(2):  # the read-only bind mount, then the tmpfs
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def test_a_read_only_spell_under_a_file_store_worker_ends_with_every_job_done_once(tmp_path: Path, disk: Path) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS), encoding="utf-8")
    runs, data = tmp_path / "runs.log", disk / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(NUVOM_DATA_DIR=str(data), NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file", RUNS=str(runs))
    settings = Settings(data_dir=data, queue_backend="file", result_backend="file")
    queue, results = FileJobQueue(settings), FileResultBackend(settings)
    queue.qsize()  # the folders, made while writable
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", "tasks", "--threads", "4"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    try:
        wait_until(lambda: "started" in log.read_text(), 60)
        jobs = [Job(func_name="record", task_path="tasks:record", args=[f"k{i}"]) for i in range(60)]
        # Another host's view of the volume, writable throughout: the producer's.
        producer_view = tmp_path / "producer"
        producer_view.mkdir()
        subprocess.run(["mount", "--bind", str(disk), str(producer_view)], check=True)
        # Then a read-only mount over the worker's view.
        subprocess.run(["mount", "--bind", str(disk), str(disk)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(disk)], check=True)
        try:
            side = Settings(data_dir=producer_view / "data", queue_backend="file", result_backend="file")
            FileJobQueue(side).enqueue_many(jobs)
            wait_until(lambda: "claiming jobs failed" in log.read_text(), 30)
        finally:
            subprocess.run(["umount", "-l", str(producer_view)], capture_output=True)
        subprocess.run(["mount", "-o", "remount,bind,rw", str(disk)], check=True)
        wait_until(
            lambda: all((r := results.get_full(j.id)) is not None and r.status is JobStatus.SUCCESS for j in jobs), 60
        )
    finally:
        worker.terminate()
        worker.wait(30)
    keys = runs.read_text().split()
    assert sorted(keys) == sorted(f"k{i}" for i in range(60))  # every job ran, none twice
    text = log.read_text()
    assert text.count("claiming jobs failed") == 1 and text.count("claiming jobs works again") == 1, text
