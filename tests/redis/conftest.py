"""Fixtures for nuvom-redis: a real redis-server per test session (Debian's
``redis-server``) on a free loopback port, a key prefix of its own per test,
and real worker processes that share nothing with the test but the URL."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nuvom.config import load_settings
from nuvom.job import Job
from nuvom.redis import RedisJobQueue, RedisResultBackend, RedisSettings
from nuvom.testing import reset_process_state

REDIS_SERVER = shutil.which("redis-server")

# The tasks the worker processes run. Every run appends "<key> <pid> <time>" to
# runs.log (one O_APPEND write, atomic across processes), so a test counts
# executions themselves, not just the stored results.
TASKS = """
import asyncio
import os
import time

from nuvom.job import current_job
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


@task(unique=True, timeout_secs=2)
def only_one(key, secs):
    log_run(current_job().id, os.getpid(), time.time())
    time.sleep(secs)
    return key


@task(timeout_secs=2)
def link(previous, key, secs):
    log_run(key, os.getpid(), time.time())
    time.sleep(secs)
    return f"{previous}>{key}"


@task
def gather(results, key):
    log_run(key, os.getpid(), time.time())
    return results


@task(timeout_secs=60)
def patient(key):
    log_run(key, os.getpid(), time.time())
    deadline = time.time() + 60
    while time.time() < deadline and not current_job().cancelled:
        time.sleep(0.01)
    log_run(key + ("-saw-cancel" if current_job().cancelled else "-timed-out"), os.getpid(), time.time())
    return key


@task(timeout_secs=60)
async def dozing(key):
    log_run(key, os.getpid(), time.time())
    await asyncio.sleep(60)
    return key
"""

# A worker process as a user would write one without the CLI: backends built
# explicitly from the settings (NUVOM_REDIS_URL, NUVOM_REDIS_PREFIX). The ready
# file tells the test the worker is up, so that no test guesses with a sleep.
WORKER = """
import logging, os, pathlib, sys
import tasks
from nuvom.config import load_settings
from nuvom.redis import RedisJobQueue, RedisResultBackend
from nuvom.worker import Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
settings = load_settings()
worker = Worker(
    max_workers=int(sys.argv[1]), queue=RedisJobQueue(settings), results=RedisResultBackend(settings), settings=settings
)
worker.start()
pathlib.Path("ready-%d" % os.getpid()).touch()
worker.run_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (the test goes on the
    moment the condition holds; this is not a sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


class RedisServer:
    """A redis-server process in its own folder on a free loopback port, with
    the append-only file on (default ``appendfsync everysec``: the restart tests
    check that a killed server loses nothing acknowledged) and no RDB snapshots."""

    def __init__(self, folder: Path, *extra: str, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.password: str | None = None
        for i, arg in enumerate(extra):
            if arg == "--requirepass":
                self.password = extra[i + 1]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            str(REDIS_SERVER),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, 30, f"redis-server on port {self.port}")
        return self

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited with {self.proc.returncode}: {log}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
            return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


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
def prefix() -> str:
    """A key prefix of this test's own: tests share the session's server."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def rsettings(redis_server: RedisServer, prefix: str) -> RedisSettings:
    return RedisSettings(redis_url=redis_server.url, redis_prefix=prefix)


@pytest.fixture
def queue(rsettings: RedisSettings) -> Iterator[RedisJobQueue]:
    q = RedisJobQueue(load_settings(), redis=rsettings)
    yield q
    q.close()


@pytest.fixture
def results(rsettings: RedisSettings) -> Iterator[RedisResultBackend]:
    r = RedisResultBackend(load_settings(), redis=rsettings)
    yield r
    r.close()


def jobs_for(func: str, keys: list[str], *extra: Any, **fields: Any) -> list[Job]:
    """Jobs as ``tasks.<func>.delay(key, *extra)`` makes them (built here: the
    test process does not import the tasks)."""
    return [Job(func_name=func, task_path=f"tasks:{func}", args=[key, *extra], **fields) for key in keys]


class Project:
    """A host's folder with tasks.py, its worker processes and the shared runs log."""

    def __init__(self, root: Path, url: str, prefix: str, runs: Path | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.url, self.prefix = url, prefix
        self.runs = runs or root / "runs.log"
        self.runs.touch()
        (root / "tasks.py").write_text(TASKS)
        (root / "worker.py").write_text(WORKER)
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env.update(
            NUVOM_QUEUE_BACKEND="redis",
            NUVOM_RESULT_BACKEND="redis",
            NUVOM_REDIS_URL=self.url,
            NUVOM_REDIS_PREFIX=self.prefix,
            NUVOM_DATA_DIR=str(self.root / "data"),
            NUVOM_TEST_RUNS=str(self.runs),
            NUVOM_LOG_LEVEL="INFO",
            PYTHONPATH=str(self.root),
        )
        env.update(extra)
        return env

    def start_workers(self, n: int, threads: int = 4, **env: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            err = open(self.root / f"worker-{len(self.procs)}.err", "wb")
            proc = subprocess.Popen(
                [sys.executable, "worker.py", str(threads)],
                cwd=self.root,
                env=self.env(**env),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            err.close()
            self.procs.append(proc)
            started.append(proc)
        wanted = {self.root / f"ready-{p.pid}" for p in started}

        def ready() -> bool:
            for p in started:
                if p.poll() is not None:
                    raise AssertionError(f"worker {p.pid} exited with {p.returncode}: {self.stderr()}")
            return all(path.exists() for path in wanted)

        wait_until(ready, 60, "workers ready")
        return started

    def run_python(self, code: str, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=self.root, env=self.env(**env))
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
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
def project(tmp_path: Path, redis_server: RedisServer, prefix: str) -> Iterator[Project]:
    p = Project(tmp_path / "host", redis_server.url, prefix)
    try:
        yield p
    finally:
        p.stop()
