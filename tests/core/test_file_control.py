"""Cancel requests, rate limits and lock files of the file store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nuvom.backends._file_lock import LockFile
from nuvom.backends.file import FileJobQueue
from nuvom.config import Settings, load_settings
from nuvom.errors import BackendError
from nuvom.job import Job


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


@pytest.fixture
def queue(settings: Settings) -> FileJobQueue:
    return FileJobQueue(settings)


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_a_cancel_request_is_recorded_only_for_a_claimed_job(queue: FileJobQueue, settings: Settings) -> None:
    job = Job(func_name="t")
    queue.enqueue(job)
    assert queue.request_cancel(job.id) is False  # queued, not claimed: cancel() takes those
    assert os.listdir(Path(queue.root, "cancels")) == []
    assert [j.id for j in queue.claim(1)] == [job.id]
    other = FileJobQueue(settings)  # another process's view: the request is in the store
    assert other.request_cancel(job.id) is True
    assert queue.cancel_requested([job.id, "someone-else"]) == {job.id}
    queue.ack([job.id])
    assert queue.cancel_requested([job.id]) == set()
    assert os.listdir(Path(queue.root, "cancels")) == []


def test_stores_on_one_data_dir_share_a_rate_limit(settings: Settings) -> None:
    first, second = FileJobQueue(settings), FileJobQueue(settings)
    assert [first.acquire_rate("k", 3, 30.0), second.acquire_rate("k", 3, 30.0), first.acquire_rate("k", 3, 30.0)] == [
        0.0,
        0.0,
        0.0,
    ]
    wait = second.acquire_rate("k", 3, 30.0)
    assert 9.0 < wait <= 10.0  # one start every 10 s once the burst of 3 is used
    assert first.acquire_rate("other", 3, 30.0) == 0.0


RATE_PROCESS = """
import os, sys, time
from pathlib import Path
from nuvom.backends.file import FileJobQueue
queue = FileJobQueue()
Path(os.environ["OUT"] + ".ready").touch()
while not Path(os.environ["GO"]).exists():
    time.sleep(0.001)
end = time.monotonic() + 1.5
granted = 0
while time.monotonic() < end:
    if queue.acquire_rate("shared", 10, 1.0) == 0.0:
        granted += 1
Path(os.environ["OUT"]).write_text(str(granted))
"""


def test_processes_share_a_rate_limit(isolated: Path) -> None:
    go = isolated / "go"
    outs = [isolated / f"granted-{i}" for i in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-c", RATE_PROCESS], env={**os.environ, "OUT": str(out), "GO": str(go)})
        for out in outs
    ]
    for out in outs:
        wait_for(Path(f"{out}.ready"))
    go.touch()
    for proc in procs:
        assert proc.wait(60) == 0
    granted = sum(int(out.read_text()) for out in outs)
    # 10 at once, then one every 0.1 s for 1.5 s: at most 26 in all, where three
    # limits of their own would grant 25 each.
    assert 10 <= granted <= 26, granted


HOLDER = """
import os, sys, time
from pathlib import Path
from nuvom.backends._file_lock import LockFile
lock = LockFile(sys.argv[1])
lock.acquire()
Path(sys.argv[2]).touch()
time.sleep(120)
"""


def test_a_lock_held_by_a_live_process_is_waited_for(isolated: Path) -> None:
    path, ready = isolated / "x.lock", isolated / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(ready)])
    try:
        wait_for(ready)
        with pytest.raises(BackendError, match=r"x\.lock"):
            LockFile(str(path), wait_secs=0.5).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_at_once(isolated: Path) -> None:
    path, ready = isolated / "x.lock", isolated / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(ready)])
    wait_for(ready)
    holder.kill()  # SIGKILL: the lock file stays
    holder.wait()
    assert path.exists()
    started = time.monotonic()
    with LockFile(str(path), wait_secs=5):
        assert time.monotonic() - started < 2
    assert not path.exists()


def test_a_lock_older_than_its_stale_time_is_taken(isolated: Path) -> None:
    path = isolated / "x.lock"
    # A live owner (this process) frozen for longer than stale_secs loses the lock.
    path.write_text(f"{os.getpid()} ns {time.time() - 5:.6f} token")
    with LockFile(str(path), stale_secs=2, wait_secs=5):
        assert "token" not in path.read_text()
