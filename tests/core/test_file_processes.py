"""The file backends across processes: several workers, claimers and producers
on one data dir, and a worker killed in the middle of its batch.

Worker processes run ``Worker().run_forever()`` in ``tmp_path`` with a
``tasks.py`` written there. Every run of a task creates one file in a runs
directory, so exactly-once is checked by counting files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import load_settings
from nuvom.job import Job, JobStatus

TASKS = """
import os
import time

from nuvom.task import task

RUNS = os.environ["RUNS_DIR"]


def _mark(kind, n):
    # One new file per run; the name says which job, which process, which run.
    name = f"{kind}-{n}-{os.getpid()}-{time.monotonic_ns()}"
    os.close(os.open(os.path.join(RUNS, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))


@task
def record(n):
    _mark("run", n)
    return n


@task
def slow(n):
    _mark("start", n)
    time.sleep(0.4)
    return n
"""

WORKER = "from nuvom.worker import Worker; Worker().run_forever()"
# The same, saying when it is up: tests that check the work is shared start
# every worker before queueing, or the first one up may take it all.
READY_WORKER = (
    "import os, pathlib; from nuvom.worker import Worker; w = Worker().start(); "
    "pathlib.Path(os.environ['READY']).touch(); w.run_forever()"
)


class Cluster:
    """Processes sharing ``tmp_path/.nuvom``, stopped at teardown whatever happens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs"
        self.runs.mkdir()
        (root / "tasks.py").write_text(TASKS)
        self.env = {
            **os.environ,
            "NUVOM_QUEUE_BACKEND": "file",
            "NUVOM_RESULT_BACKEND": "file",
            "NUVOM_DATA_DIR": str(root / ".nuvom"),
            "RUNS_DIR": str(self.runs),
            "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
        }
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        settings = load_settings(data_dir=root / ".nuvom")
        self.queue = FileJobQueue(settings)
        self.results = FileResultBackend(settings)

    def spawn(self, code: str, **env: str) -> subprocess.Popen[bytes]:
        log = self.root / f"proc-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", code], cwd=self.root, env={**self.env, **env}, stdout=out, stderr=out
            )
        self.procs.append((proc, log))
        return proc

    def enqueue(self, func: str, ns: range) -> list[Job]:
        jobs = [Job(func_name=func, task_path=f"tasks:{func}", args=[n]) for n in ns]
        self.queue.enqueue_many(jobs)
        return jobs

    def runs_of(self, kind: str) -> Counter[int]:
        return Counter(int(name.split("-")[1]) for name in os.listdir(self.runs) if name.startswith(f"{kind}-"))

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log.read_text(errors="replace") for p, log in self.procs if p is proc)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_several_workers_run_every_job_exactly_once(cluster: Cluster) -> None:
    n = 600
    ready = [cluster.root / f"ready-{i}" for i in range(3)]
    workers = [cluster.spawn(READY_WORKER, READY=str(r)) for r in ready]
    wait_for(lambda: all(r.exists() for r in ready), "three workers up")
    jobs = cluster.enqueue("record", range(n))
    wait_for(lambda: cluster.results.count() == n, f"{n} results")
    cluster.stop_all()
    assert cluster.runs_of("run") == Counter(range(n))
    records = [cluster.results.get_full(job.id) for job in jobs]
    assert all(r is not None and r.status is JobStatus.SUCCESS and r.attempts == 1 for r in records)
    assert cluster.queue.qsize() == 0 and os.listdir(cluster.queue.claimed_dir) == []
    for worker in workers:
        assert "Traceback" not in cluster.output(worker)
    assert len({r.worker_id for r in records if r is not None}) > 1  # the work was shared


CLAIMER = """
import os, time
from pathlib import Path
from nuvom.backends.file import FileJobQueue
queue = FileJobQueue()
# A start line: every claimer is up before any claims, so they really compete.
Path(os.environ["OUT"] + ".ready").touch()
deadline = time.monotonic() + 60
while not Path(os.environ["GO"]).exists() and time.monotonic() < deadline:
    time.sleep(0.005)
claimed = []
idle = 0
while idle < 20:
    jobs = queue.claim(7)
    idle = 0 if jobs else idle + 1
    claimed += [j.id for j in jobs]
    queue.ack([j.id for j in jobs])
with open(os.environ["OUT"], "w") as f:
    f.write("\\n".join(claimed))
"""


def test_concurrent_claimers_never_share_a_job(cluster: Cluster) -> None:
    jobs = cluster.enqueue("record", range(2000))
    outs = [cluster.root / f"claimed-{i}.txt" for i in range(4)]
    go = cluster.root / "go"
    procs = [cluster.spawn(CLAIMER, OUT=str(out), GO=str(go)) for out in outs]
    wait_for(lambda: all(Path(f"{out}.ready").exists() for out in outs), "every claimer to be ready")
    go.touch()
    for proc in procs:
        assert proc.wait(120) == 0, cluster.output(proc)
    claimed = [line for out in outs for line in out.read_text().split("\n") if line]
    assert Counter(claimed) == Counter(job.id for job in jobs)
    assert sum(1 for out in outs if out.read_text()) > 1


def test_killed_worker_jobs_are_reclaimed(cluster: Cluster) -> None:
    # lease = max(NUVOM_LEASE_SECS, timeout + margin): about three seconds here.
    short = {"NUVOM_LEASE_SECS": "1", "NUVOM_JOB_TIMEOUT_SECS": "1", "NUVOM_MAX_WORKERS": "4"}
    jobs = cluster.enqueue("slow", range(16))
    doomed = cluster.spawn(WORKER, **short)
    wait_for(lambda: sum(cluster.runs_of("start").values()) >= 3, "the first worker to start jobs")
    doomed.kill()  # SIGKILL: no handback, claims left behind with their leases
    doomed.wait()
    finished_before = {job.id for job in jobs if cluster.results.get_full(job.id) is not None}
    abandoned = [job for job in jobs if job.id not in finished_before]
    assert os.listdir(cluster.queue.claimed_dir), "the killed worker held no claims"
    rescuer = cluster.spawn(WORKER, **short)
    wait_for(lambda: cluster.results.count() == len(jobs), "every job to be recovered")
    records = {job.id: cluster.results.get_full(job.id) for job in jobs}
    assert all(r is not None and r.status is JobStatus.SUCCESS for r in records.values())
    started_by_doomed = {
        int(name.split("-")[1]) for name in os.listdir(cluster.runs) if name.split("-")[2] == str(doomed.pid)
    }
    lost = [records[job.id] for job in abandoned if job.args[0] in started_by_doomed]
    assert lost, "no job was killed mid-run"
    for record in lost:
        assert record is not None and record.attempts >= 2
        assert record.history[0].outcome == "lost"
    assert cluster.queue.qsize() == 0
    cluster.stop_all()
    assert os.listdir(cluster.queue.claimed_dir) == []
    assert "Traceback" not in cluster.output(rescuer)


PRODUCER = """
import os
from tasks import record
start = int(os.environ["START"])
record.map(range(start, start + 250))
"""


def test_concurrent_producers_lose_no_job(cluster: Cluster) -> None:
    worker = cluster.spawn(WORKER)
    producers = [cluster.spawn(PRODUCER, START=str(k * 250)) for k in range(4)]
    for proc in producers:
        assert proc.wait(120) == 0, cluster.output(proc)
    wait_for(lambda: cluster.results.count() == 1000, "1000 results")
    assert cluster.runs_of("run") == Counter(range(1000))
    cluster.stop_all()
    assert "Traceback" not in cluster.output(worker)
