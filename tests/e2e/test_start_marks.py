"""Start marks (issue 12, items 6 and 7), with real worker processes on each durable store
(SQLite, files, and Redis when ``redis-server`` and nuvom-redis are installed: a
real server of this module's own on a free loopback port).

* Only a claim that started counts: jobs a SIGKILLed worker held without
  starting them are handed back with nothing counted, never failed as
  "lost with its worker".
* A task holding the GIL in C for longer than the leases of the jobs waiting
  behind it (no Python thread of its worker runs meanwhile, so nothing is
  renewed): those claims go to another worker, and the stalled worker does not
  run them again when it wakes up; nothing is counted as lost.
"""

from __future__ import annotations

import importlib.util
import json
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

TASKS = """
import os, time
from nuvom.task import task

RUNS = os.environ["RUNS"]


def log_run(*fields):
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(map(str, fields)) + "\\n").encode())
    finally:
        os.close(fd)


def ran_before(key):
    with open(RUNS) as f:
        return any(line.split()[0] == key for line in f)


@task(timeout_secs=0.5, timeout_policy="ignore")
def stall_once(i):
    # The first run of each job stalls (its worker is killed meanwhile); a second run returns.
    first = not os.path.exists(RUNS) or not ran_before(str(i))
    log_run(i, os.getpid(), "first" if first else "again")
    while first and not os.path.exists(RUNS + ".go"):
        time.sleep(0.01)
    return i


@task(timeout_secs=60)
def hog(secs):
    log_run("hog", os.getpid(), "first")
    # Calibrated on the fastest of a few samples: a busy machine only makes the hog longer.
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        sum(range(200_000))
        best = min(best, time.perf_counter() - t0)
    n = int(secs / max(1e-9, best) * 200_000)
    # One call into C: the GIL is not released until it returns, so no other
    # thread of this worker (the watchdog renewing leases, the dispatcher) runs.
    sum(range(n))
    return "done"


@task
def quick(i):
    log_run(i, os.getpid(), "first")
    return i
"""

AUDIT = """
import json, sys
from nuvom.sdk import get_job

out = {}
for job_id in json.load(open("ids.json")):
    job = get_job(job_id)
    out[job_id] = None if job is None else {
        "status": job.status.value,
        "attempts": job.attempts,
        "outcomes": [a.outcome for a in job.history],
        "arg": job.args[0],
        "error": job.error.message if job.error else None,
    }
print(json.dumps(out))
"""


REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server for this module's redis cases (started only if one runs)."""
    if REDIS_SERVER is None or importlib.util.find_spec("nuvom.redis") is None:
        pytest.skip("needs redis-server (apt-get install redis-server) and nuvom-redis installed")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not redis_answers(port):
            assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer within 30 s"
            time.sleep(0.01)  # polling interval while the server starts
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Run:
    def __init__(self, root: Path, backend: str, redis_url: str | None = None) -> None:
        self.root = root
        (root / "tasks.py").write_text(TASKS)
        (root / "audit.py").write_text(AUDIT)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        self.env.update(
            NUVOM_QUEUE_BACKEND=backend,
            NUVOM_RESULT_BACKEND=backend,
            NUVOM_DATA_DIR=str(root / ".nuvom"),
            NUVOM_LEASE_SECS="1",
            NUVOM_JOB_TIMEOUT_SECS="1",  # quick jobs: leases of max(1, 1 x 1.1 + 2) = 3.1 s
            NUVOM_BATCH_SIZE="8",
            NUVOM_LOG_LEVEL="INFO",
            RUNS=str(root / "runs.txt"),
            PYTHONPATH=str(root),
        )
        if redis_url is not None:
            # A prefix of this test's own: the module's server is shared.
            self.env.update(NUVOM_REDIS_URL=redis_url, NUVOM_REDIS_PREFIX=f"t{uuid.uuid4().hex[:12]}")
        self.procs: list[subprocess.Popen[bytes]] = []

    def python(self, code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def queue(self, code: str) -> list[str]:
        """Run ``code`` (which sets ``jobs``) in a producer; the ids, in order."""
        self.python(f"import json, tasks\n{code}\njson.dump([j.id for j in jobs], open('ids.json', 'w'))")
        ids: list[str] = json.loads((self.root / "ids.json").read_text())
        return ids

    def worker(self, threads: int) -> subprocess.Popen[bytes]:
        log = open(self.root / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nuvom.worker", "tasks", "--threads", str(threads)],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("worker-*.log")))

    def runs(self) -> list[list[str]]:
        path = self.root / "runs.txt"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            for proc in self.procs:
                assert proc.returncode != 1, f"a worker failed: {self.logs()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}; logs:\n{self.logs()}"
            time.sleep(0.01)  # polling interval between looks at real files

    def audit(self) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            records: dict[str, Any] = json.loads(self.python(open(self.root / "audit.py").read()))
            done = all(r is not None and r["status"] in ("SUCCESS", "FAILED") for r in records.values())
            return records if done else None

        return self.wait_for("every job to be settled", settled, 60.0)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def run(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Run]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    r = Run(tmp_path, request.param, url)
    try:
        yield r
    finally:
        r.stop()


@pytest.mark.parametrize("run", ["sqlite", "file", "redis"], indirect=True)
def test_jobs_a_killed_worker_never_started_are_handed_back_not_counted_as_lost(run: Run) -> None:
    ids = run.queue("jobs = tasks.stall_once.map([(i,) for i in range(9)])")
    assert len(ids) == 9
    killed: set[str] = set()
    for _ in range(4):
        # One thread, batches of 8: the worker holds up to 8 more jobs than it runs.
        worker = run.worker(threads=1)
        pid = str(worker.pid)
        run.wait_for("the worker's first job to start", lambda: any(r[1:] == [pid, "first"] for r in run.runs()))
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        killed.add(pid)
    # A job may also have run again (quickly, and been stored) in a later killed worker.
    started_in_killed = Counter(r[0] for r in run.runs() if r[1] in killed and r[2] == "first")
    assert sum(started_in_killed.values()) == 4 and set(started_in_killed.values()) == {1}
    (run.root / "runs.txt.go").touch()  # from now on, first runs return at once
    run.worker(threads=2)
    records = run.audit()
    by_arg = {str(r["arg"]): r for r in records.values()}
    assert len(by_arg) == 9
    assert {r["status"] for r in records.values()} == {"SUCCESS"}, records
    for key, record in by_arg.items():
        if key in started_in_killed:
            # Started, then its worker died: one lost run, counted.
            assert record["attempts"] == 2 and record["outcomes"] == ["lost", "success"], (key, record)
        else:
            # Claimed by up to four workers that died, never started: nothing counted.
            assert record["attempts"] == 1 and record["outcomes"] == ["success"], (key, record)
    assert "WorkerLost" not in run.logs()


@pytest.mark.parametrize("run", ["sqlite", "file", "redis"], indirect=True)
def test_a_task_holding_the_gil_past_the_leases_behind_it_runs_nothing_twice(run: Run) -> None:
    ids = run.queue("jobs = [tasks.hog.delay(7.0)] + tasks.quick.map([(i,) for i in range(7)])")
    stalled = run.worker(threads=1)
    # The hog runs (its lease follows its 60 s timeout from its start); the seven
    # quick jobs claimed with it wait in the same worker, on leases of 3.1 s that
    # nothing can renew while the hog holds the GIL.
    run.wait_for("the hog to start", lambda: any(r[0] == "hog" for r in run.runs()))
    other = run.worker(threads=2)
    records = run.audit()
    runs = run.runs()
    per_job = Counter(r[0] for r in runs)
    assert all(n == 1 for n in per_job.values()), per_job  # nothing ran twice
    assert set(per_job) == {"hog"} | {str(i) for i in range(7)}
    assert {r[1] for r in runs if r[0] == "hog"} == {str(stalled.pid)}
    # The scenario happened: the other worker took over claims that expired in the stalled one.
    assert any(r[1] == str(other.pid) for r in runs if r[0] != "hog"), runs
    assert {r["status"] for r in records.values()} == {"SUCCESS"}, records
    assert all(r["attempts"] == 1 and r["outcomes"] == ["success"] for r in records.values()), records
    assert records[ids[0]]["arg"] == 7.0
    run.wait_for("the stalled worker to pass the claims it lost", lambda: "not run here" in run.logs(), 30.0)
