"""Job control on the file store across real processes: unique keys, fan-in and
chains while workers are killed with SIGKILL, and cancelling a running job
from another process.

Worker processes run ``Worker().run_forever()`` on ``tmp_path/.nuvom`` with a
``tasks.py`` written there. Every run of a task creates files in a runs
folder (``<kind>~<job id>~<pid>~<monotonic ns>``), so runs are counted, and
ordered, from the files.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import load_settings
from nuvom.job import Job, JobStatus

TASKS = """
import os
import time

from nuvom.job import current_job
from nuvom.task import task

RUNS = os.environ["RUNS_DIR"]


def _mark(kind):
    name = f"{kind}~{current_job().id}~{os.getpid()}~{time.monotonic_ns()}"
    os.close(os.open(os.path.join(RUNS, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))


@task(unique=True)
def once(key):
    _mark("start")
    time.sleep(0.3)
    _mark("end")
    return key


@task
def member(n):
    _mark("start")
    time.sleep(0.3)
    _mark("end")
    return n * n


@task
def gather(values):
    _mark("start")
    _mark("end")
    return sum(values)


@task
def link(value, step):
    _mark("start")
    time.sleep(0.3)
    _mark("end")
    return value + step


@task
def until_cancelled():
    _mark("start")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not current_job().cancelled:
        time.sleep(0.01)
    _mark("saw-cancel" if current_job().cancelled else "timeout")
    return "returned anyway"
"""

WORKER = "from nuvom.worker import Worker; Worker().run_forever()"
# Short leases: a killed worker's jobs come back after max(1 s, 2 s x 1.1 + 2 s) = 4.2 s.
FAST = {"NUVOM_LEASE_SECS": "1", "NUVOM_JOB_TIMEOUT_SECS": "2", "NUVOM_MAX_WORKERS": "2"}


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
            **FAST,
        }
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()
        settings = load_settings(data_dir=root / ".nuvom")
        self.queue = FileJobQueue(settings)
        self.results = FileResultBackend(settings)

    def spawn(self, code: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.root / f"proc-{len(self.procs)}.log"
        with log.open("wb") as out:
            argv = [sys.executable, "-c", code, *args]
            proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=out, stderr=out)
        self.procs.append((proc, log))
        return proc

    def start_workers(self, n: int) -> None:
        self.workers += [self.spawn(WORKER) for _ in range(n)]

    def busy_pids(self) -> set[int]:
        """Workers running a job now: a start mark without its end."""
        open_runs: dict[tuple[str, int], int] = defaultdict(int)
        for name in os.listdir(self.runs):
            kind, job_id, pid, _ = name.split("~")
            open_runs[job_id, int(pid)] += 1 if kind == "start" else -1
        return {pid for (_, pid), n in open_runs.items() if n > 0}

    def kill_busy(self) -> bool:
        """SIGKILL a worker that is running a job, and start another in its place."""
        busy = self.busy_pids()
        victim = next((w for w in self.workers if w.poll() is None and w.pid in busy), None)
        if victim is None:
            return False
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.killed.add(victim.pid)
        self.workers.remove(victim)
        self.start_workers(1)
        return True

    def kill_while(self, busy: Callable[[], bool], every: float = 1.0, kills: int = 4, timeout: float = 180) -> None:
        """While ``busy()`` holds, kill a worker in the middle of a job every
        ``every`` seconds, ``kills`` times at most; then wait for the rest."""
        deadline = time.monotonic() + timeout
        next_kill = time.monotonic() + every
        done = 0
        while busy():
            assert time.monotonic() < deadline, "the work did not finish while workers were being killed"
            if done < kills and time.monotonic() >= next_kill and self.kill_busy():
                done += 1
                next_kill = time.monotonic() + every
            time.sleep(0.02)

    def runs_of(self) -> dict[str, list[tuple[str, int, int]]]:
        """Per job id: (kind, pid, monotonic ns) of each mark, in time order."""
        out: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for name in os.listdir(self.runs):
            kind, job_id, pid, ns = name.split("~")
            out[job_id].append((kind, int(pid), int(ns)))
        for marks in out.values():
            marks.sort(key=lambda m: m[2])
        return out

    def record(self, job_id: str) -> Job | None:
        return self.results.get_full(job_id)

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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def run_script(cluster: Cluster, code: str) -> str:
    proc = cluster.spawn(code)
    assert proc.wait(120) == 0, cluster.output(proc)
    return cluster.output(proc)


def successes(cluster: Cluster, ids: list[str]) -> bool:
    return all((r := cluster.record(i)) is not None and r.status is JobStatus.SUCCESS for i in ids)


PRODUCER = """
import json, sys, time
import tasks
calls = []
for round_ in range(12):
    for key in range(10):
        t0 = time.time()
        job = tasks.once.delay(f"key{key}")
        calls.append([f"key{key}", job.id, t0, time.time()])
    time.sleep(0.15)
json.dump(calls, open(sys.argv[1], "w"))
"""


def test_racing_producers_keep_one_job_per_key_while_workers_are_killed(cluster: Cluster) -> None:
    cluster.start_workers(2)
    outs = [cluster.root / f"calls-{i}.json" for i in range(2)]
    producers = [cluster.spawn(PRODUCER, str(out)) for out in outs]
    cluster.kill_while(lambda: any(p.poll() is None for p in producers))
    for p in producers:
        assert p.returncode == 0, cluster.output(p)
    calls = [tuple(c) for out in outs for c in json.loads(out.read_text())]
    jobs = {job_id for _, job_id, _, _ in calls}
    cluster.kill_while(lambda: not successes(cluster, sorted(jobs)))
    records = {job_id: cluster.record(job_id) for job_id in jobs}
    # A job's life: from the end of the call that queued it to its last outcome (it
    # leaves the queue a moment after). A call made wholly inside the life of a job
    # of its key returns that job: never two queued-or-running jobs for one key.
    born: dict[str, float] = {}
    for _, job_id, _, t1 in sorted(calls, key=lambda c: c[3]):
        born.setdefault(job_id, t1)
    lives: dict[str, set[tuple[float, float, str]]] = defaultdict(set)
    for key, job_id, _, _ in calls:
        record = records[job_id]
        assert record is not None and record.finished_at is not None
        lives[key].add((born[job_id], record.finished_at, job_id))
    for key, job_id, t0, t1 in calls:
        for start, end, other in lives[key]:
            assert other == job_id or not (start < t0 and t1 < end), f"{key}: {job_id} queued while {other} was"
    # Runs of two jobs of one key never overlap.
    runs = cluster.runs_of()
    for key in lives:
        spans = sorted((runs[job_id][0][2], runs[job_id][-1][2], job_id) for job_id in {j for _, _, j in lives[key]})
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            assert end < start, f"{key}: jobs {first} and {second} ran at the same time"
    assert cluster.killed, "no worker was killed"


GROUP = """
import sys
import tasks
from nuvom.workflow import group
members = tasks.member.map(range(12))
callback = group(members).then(tasks.gather)
print(" ".join([callback.id, *[m.id for m in members]]))
"""


def test_a_fan_in_runs_its_callback_once_with_every_result_while_workers_are_killed(cluster: Cluster) -> None:
    callback, *members = run_script(cluster, GROUP).split()
    cluster.start_workers(2)
    cluster.kill_while(lambda: not successes(cluster, members))
    wait_for(lambda: successes(cluster, [callback]), "the callback's outcome")
    record = cluster.record(callback)
    assert record is not None and record.result == sum(n * n for n in range(12))
    starts = [m for m in cluster.runs_of()[callback] if m[0] == "start"]
    assert len(starts) == 1  # released once, run once (no worker was killed after the members finished)
    assert cluster.killed, "no worker was killed"


CHAINS = """
import tasks
ids = []
for chain in range(6):
    first = tasks.link.delay(0, 1)
    second = first.then(tasks.link, 10)
    third = second.then(tasks.link, 100)
    ids.append(",".join([first.id, second.id, third.id]))
print(" ".join(ids))
"""


def test_chains_run_link_by_link_while_workers_are_killed(cluster: Cluster) -> None:
    chains = [c.split(",") for c in run_script(cluster, CHAINS).split()]
    links = [job_id for chain in chains for job_id in chain]
    cluster.start_workers(2)
    cluster.kill_while(lambda: not successes(cluster, links))
    cluster.stop_all()
    runs = cluster.runs_of()
    for first, second, third in chains:
        assert [cluster.record(j).result for j in (first, second, third)] == [1, 11, 111]  # type: ignore[union-attr]
        for parent, child in ((first, second), (second, third)):
            # The child's first run starts after a run of its parent ended: it ran once its parent
            # succeeded. (A parent whose worker was killed after storing its outcome, before its
            # claim went, runs again later; its child may be released by then, by that outcome.)
            first_end = next(ns for kind, _, ns in runs[parent] if kind == "end")
            assert runs[child][0][2] > first_end
    for job_id in links:
        starts = [pid for kind, pid, _ in runs[job_id] if kind == "start"]
        assert starts, f"job {job_id} never ran"
        # Run more than once only when a killed worker had started it.
        assert len(starts) == 1 or set(starts[:-1]) <= cluster.killed, (job_id, starts)
    assert cluster.killed, "no worker was killed"
    assert cluster.queue.qsize() == 0


CANCEL = """
import sys
from nuvom.sdk import cancel_job
job = cancel_job(sys.argv[1])
print(job.status.value if job is not None else "none")
"""


def test_a_running_job_is_cancelled_from_another_process(cluster: Cluster) -> None:
    cluster.start_workers(1)
    job = Job(func_name="until_cancelled", task_path="tasks:until_cancelled", timeout_secs=60)
    cluster.queue.enqueue(job)
    wait_for(lambda: job.id in cluster.runs_of(), "the job to start")
    canceller = cluster.spawn(CANCEL, job.id)
    assert canceller.wait(60) == 0, cluster.output(canceller)
    assert cluster.output(canceller).split()[-1] == "RUNNING"
    wait_for(lambda: cluster.record(job.id) is not None, "the cancelled job's record")
    record = cluster.record(job.id)
    assert record is not None and record.status is JobStatus.FAILED and record.attempts == 1
    assert record.error is not None and record.error.type == "Cancelled"
    assert [kind for kind, _, _ in cluster.runs_of()[job.id]] == ["start", "saw-cancel"]
    assert os.listdir(cluster.root / ".nuvom" / "cancels") == []
