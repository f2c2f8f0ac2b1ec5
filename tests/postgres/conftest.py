"""Fixtures for nuvom-postgres: a real PostgreSQL server per test session
(Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` into a temporary
folder, on a free loopback port), a schema of its own per test, and real worker
processes that share nothing with the test but the URL and the schema.

The server refuses to run as root: under root it runs as an unprivileged user
made for it (``nuvompg``)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nuvom.config import load_settings
from nuvom.job import Job
from nuvom.postgres import PostgresJobQueue, PostgresResultBackend, PostgresSettings
from nuvom.testing import reset_process_state

PASSWORD = "nuvom-test-pw"
SERVER_USER = "nuvompg"


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


PG_BIN = _bin_dir()

# The tasks the worker processes run. Every run appends "<key> <pid> <time>" to
# runs.log (one O_APPEND write, atomic across processes), so a test counts
# executions themselves, not just the stored results.
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

# A worker process as `nuvom runworker` runs one: backends chosen by the
# environment (NUVOM_QUEUE_BACKEND=postgres, NUVOM_POSTGRES_URL, ...). The ready
# file tells the test the worker is up, so that no test guesses with a sleep.
WORKER = """
import logging, os, pathlib, sys
import tasks
from nuvom.worker import Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
worker = Worker(max_workers=int(sys.argv[1]))
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


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: ``None`` for this process's own user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            pytest.skip("running as root, and no useradd to make the unprivileged user PostgreSQL needs")
        subprocess.run([useradd, "--system", "--no-create-home", SERVER_USER], check=False, capture_output=True)
        entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class PostgresServer:
    """A PostgreSQL server in its own temporary folder on a free loopback port:
    password (scram) over TCP, started with ``pg_ctl``, stopped by its PID.
    ``fsync=off``: the tests kill processes, never the machine."""

    def __init__(self, port: int | None = None) -> None:
        if PG_BIN is None or not (PG_BIN / "initdb").exists():
            pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed (apt-get install postgresql)")
        self.account = _server_account()
        self.folder = Path(tempfile.mkdtemp(prefix="nuvom-pg-"))
        self.data = self.folder / "data"
        self.port = port or free_port()
        self.pid: int | None = None
        if self.account is not None:
            os.chown(self.folder, *self.account)
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.account is not None:
            os.chown(pwfile, *self.account)
        self._run(
            "initdb", "-D", str(self.data), "-U", "nuvom", "--pwfile", str(pwfile), "-E", "UTF8", "--no-locale",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip

    def _run(self, program: str, *args: str) -> None:
        assert PG_BIN is not None
        extra: dict[str, Any] = {}
        if self.account is not None:
            extra = {"user": self.account[0], "group": self.account[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        out = subprocess.run(
            [str(PG_BIN / program), *args], capture_output=True, text=True, env=env, cwd=self.folder, **extra
        )
        if out.returncode != 0:
            raise AssertionError(f"{program} failed ({out.returncode}): {out.stdout}{out.stderr}{self.log()}")

    def url(self, database: str = "nuvom_test", password: str = PASSWORD) -> str:
        return f"postgresql://nuvom:{password}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self) -> PostgresServer:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300 -c shared_buffers=64MB -c log_min_messages=warning"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        if not (self.folder / "created").exists():
            self.psql("CREATE DATABASE nuvom_test", database="postgres")
            (self.folder / "created").touch()
        return self

    def psql(self, statement: str, database: str = "nuvom_test") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT: a fast shutdown (clients cut off, a clean checkpoint); SIGQUIT:
        an immediate one, recovered from the WAL at the next start, as after a crash."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        wait_until(lambda: not _alive(pid), 60, f"PostgreSQL {pid} to stop")
        # After an immediate shutdown children may outlive the postmaster a moment.
        wait_until(lambda: not (self.data / "postmaster.pid").exists() or sig != signal.SIGINT, 30, "pid file gone")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.remove()


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
def schema() -> str:
    """A schema of this test's own: tests share the session's server and database."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def psettings(pg_server: PostgresServer, schema: str) -> PostgresSettings:
    return PostgresSettings(postgres_url=pg_server.url(), postgres_schema=schema)


@pytest.fixture
def pg_env(pg_server: PostgresServer, schema: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's server and schema in the environment, the backends chosen by it."""
    env = {
        "NUVOM_QUEUE_BACKEND": "postgres",
        "NUVOM_RESULT_BACKEND": "postgres",
        "NUVOM_POSTGRES_URL": pg_server.url(),
        "NUVOM_POSTGRES_SCHEMA": schema,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def queue(psettings: PostgresSettings) -> Iterator[PostgresJobQueue]:
    q = PostgresJobQueue(load_settings(), postgres=psettings)
    yield q
    q.close()


@pytest.fixture
def results(psettings: PostgresSettings) -> Iterator[PostgresResultBackend]:
    r = PostgresResultBackend(load_settings(), postgres=psettings)
    yield r
    r.close()


def jobs_for(func: str, keys: list[str], *extra: Any, **fields: Any) -> list[Job]:
    """Jobs as ``tasks.<func>.delay(key, *extra)`` makes them (built here: the
    test process does not import the tasks)."""
    return [Job(func_name=func, task_path=f"tasks:{func}", args=[key, *extra], **fields) for key in keys]


class Project:
    """A host's folder with tasks.py, its worker processes and the shared runs log."""

    def __init__(self, root: Path, url: str, schema: str, runs: Path | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.url, self.schema = url, schema
        self.runs = runs or root / "runs.log"
        self.runs.touch()
        (root / "tasks.py").write_text(TASKS)
        (root / "worker.py").write_text(WORKER)
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env.update(
            NUVOM_QUEUE_BACKEND="postgres",
            NUVOM_RESULT_BACKEND="postgres",
            NUVOM_POSTGRES_URL=self.url,
            NUVOM_POSTGRES_SCHEMA=self.schema,
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
def project(tmp_path: Path, pg_server: PostgresServer, schema: str) -> Iterator[Project]:
    p = Project(tmp_path / "host", pg_server.url(), schema)
    try:
        yield p
    finally:
        p.stop()
