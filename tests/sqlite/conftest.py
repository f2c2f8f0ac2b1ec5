"""Fixtures for nuvom-sqlite: a fresh directory and nuvom state per test, the
backends on a real file, and real worker processes on that file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend
from nuvom.testing import reset_process_state

# The tasks the worker processes run. Every run appends "<key> <pid> <time>" to
# runs.log (one O_APPEND write, atomic across processes), so a test counts
# executions themselves, not just the result rows.
TASKS = """
import os
import time

from nuvom.task import task

RUNS = os.environ["NUVOM_TEST_RUNS"]


def log_run(*fields):
    line = " ".join(str(f) for f in fields) + "\\n"
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def runs_of(key):
    with open(RUNS) as f:
        return sum(1 for line in f if line.split()[0] == key)


@task
def record(key):
    log_run(key, os.getpid(), time.time())
    return key


@task(timeout_secs=2)
def slow(key, secs):
    log_run(key, os.getpid(), time.time())
    time.sleep(secs)
    return key


@task(retries=3, retry_delay_secs=0.3)
def flaky(key, fail_times):
    log_run(key, os.getpid(), time.time())
    n = runs_of(key)
    if n <= fail_times:
        raise RuntimeError(f"attempt {n} of {key} fails")
    return n
"""

# What `nuvom runworker` will run. The ready file tells the test the worker is
# up, so that no test has to guess with a sleep.
WORKER = (
    "import os, pathlib, tasks; from nuvom.worker import Worker; "
    "w = Worker(max_workers={threads}); w.start(); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); w.run_forever()"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("NUVOM_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("NUVOM_DATA_DIR", str(tmp_path / "data"))
    reset_process_state()
    yield tmp_path
    reset_process_state()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nuvom.db"


@pytest.fixture
def queue(db_path: Path) -> Iterator[SQLiteJobQueue]:
    q = SQLiteJobQueue(path=db_path)
    yield q
    q.close()


@pytest.fixture
def results(db_path: Path) -> Iterator[SQLiteResultBackend]:
    r = SQLiteResultBackend(path=db_path)
    yield r
    r.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (not a sleep as synchronisation:
    the test goes on the moment the condition holds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def expire_leases(db_path: Path) -> None:
    """Make every claim's lease run out now (as if its worker had died long ago)."""
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.execute("UPDATE nuvom_queue SET ready_at = 0 WHERE state = 1")
    conn.close()


class Project:
    """A project directory with tasks.py, worker processes and the runs log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs.log"
        self.runs.touch()
        (root / "tasks.py").write_text(TASKS)
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env.update(
            NUVOM_QUEUE_BACKEND="sqlite",
            NUVOM_RESULT_BACKEND="sqlite",
            NUVOM_DATA_DIR=str(self.root / "data"),
            NUVOM_TEST_RUNS=str(self.runs),
            NUVOM_LOG_LEVEL="WARNING",
            PYTHONPATH=str(self.root),
        )
        env.update(extra)
        return env

    def start_workers(self, n: int, threads: int = 4, **env: str) -> list[subprocess.Popen[bytes]]:
        before = set(self.root.glob("ready-*"))
        started = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER.format(threads=threads)],
                cwd=self.root,
                env=self.env(**env),
                stdout=subprocess.DEVNULL,
                stderr=open(self.root / f"worker-{len(self.procs) + i}.err", "wb"),
            )
            for i in range(n)
        ]
        self.procs.extend(started)
        wanted = {self.root / f"ready-{p.pid}" for p in started}

        def ready() -> bool:
            for p in started:
                if p.poll() is not None:
                    raise AssertionError(f"worker {p.pid} exited with {p.returncode}: {self.stderr()}")
            return wanted <= set(self.root.glob("ready-*")) - before

        wait_until(ready, 60, "workers ready")
        return started

    def run_python(self, code: str, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=self.root, env=self.env(**env))
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stderr(self) -> str:
        return "\n".join(f.read_text(errors="replace") for f in sorted(self.root.glob("worker-*.err")))

    def run_lines(self) -> list[list[str]]:
        return [line.split() for line in self.runs.read_text().splitlines() if line.strip()]

    def executions(self) -> Counter[str]:
        return Counter(fields[0] for fields in self.run_lines())


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    try:
        yield p
    finally:
        p.stop()
