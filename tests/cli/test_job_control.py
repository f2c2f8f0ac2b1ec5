"""Named queues, workflows and cancelling from the command line (issue 29):
``runworker --queues``, ``nuvom queues``, ``cancel job``, and the queue and
workflow rows of ``status`` / ``inspect job``.

In this process (``CliRunner``) on the memory store, which keeps every
capability, with a real in-process worker; and as real processes on every
durable store installed (the ``durable`` fixture: file, SQLite), where a case
that needs a capability the store lacks checks the clear refusal instead, or
is skipped saying which capability is missing."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from nuvom.errors import JobFailed
from nuvom.job import Flow, Job, JobStatus
from nuvom.plugins.contracts import BaseJobQueue, WorkerInfo

BANNER = "Ctrl+C to stop"

TASKS = textwrap.dedent(
    """
    import time
    from pathlib import Path

    from nuvom.job import current_job
    from nuvom.task import task


    @task
    def add(x, y):
        return x + y


    @task
    def patient(secs, release=None):
        # Runs until cancelled (it looks at its job's flag), `secs` have passed or the file `release` exists.
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline and not current_job().cancelled:
            if release and Path(release).exists():
                break
            time.sleep(0.02)
        return "cancelled" if current_job().cancelled else "finished"
    """
)


@pytest.fixture
def tasks_project(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS, encoding="utf-8")
    return tmp_path


def store_class(env: dict[str, str]) -> type[BaseJobQueue]:
    """The queue class the environment ``env`` selects (read here, nothing opened)."""
    from nuvom.app import App
    from nuvom.config import Settings

    name = env["NUVOM_QUEUE_BACKEND"]
    return App(Settings(queue_backend=name, result_backend=name)).backend_class("queue", name)


def cancels_running(cls: type[BaseJobQueue]) -> bool:
    return cls.request_cancel is not BaseJobQueue.request_cancel


def wait_until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def json_of(nuvom: Any, project: Path, env: dict[str, str], *args: str) -> Any:
    proc = nuvom([*args, "--format", "json"], project, env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def started(job_id: str) -> bool:
    from nuvom.sdk import get_job

    job = get_job(job_id)
    return job is not None and job.started_at is not None


def last_error_line(stderr: str) -> str:
    """A worker logs its start-up (INFO) before it refuses: the refusal is its last line."""
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr
    return line


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- runworker --queues -----------------------------------------------------------
def test_runworker_serves_the_queues_it_is_given_and_its_banner_names_them(
    nuvom, python, background, tasks_project, durable
):
    cls = store_class(durable)
    if not cls.supports_queues:
        proc = nuvom(["runworker", "--queues", "emails,default"], tasks_project, durable)
        assert proc.returncode == 6
        assert "has one queue only: a worker cannot serve emails, default" in last_error_line(proc.stderr)
        return
    worker = background(["runworker", "-w", "1", "--queues", "emails,default"], tasks_project, durable)
    worker.wait_for(BANNER)
    assert "queues     emails, default  (in this order)" in worker.stderr, worker.stderr
    produced = python(
        "from tasks import add\nprint(add.with_options(queue='emails').delay(2, 3).get(timeout=60))",
        tasks_project,
        durable,
    )
    assert produced.returncode == 0 and produced.stdout.strip() == "5", produced.stderr
    assert worker.stop(signal.SIGINT) == 0


def test_the_banner_names_the_queues_served_in_order(background, tasks_project, env_for, tmp_path):
    # The memory store keeps named queues in every process: the worker starts, and says which.
    env = env_for(tmp_path, NUVOM_QUEUE_BACKEND="memory", NUVOM_RESULT_BACKEND="memory")
    worker = background(["runworker", "-w", "1", "-q", "emails, default,emails"], tasks_project, env)
    worker.wait_for(BANNER)
    assert "queues     emails, default  (in this order)" in worker.stderr, worker.stderr
    assert worker.stop(signal.SIGTERM) == 0


def test_python_m_nuvom_worker_serves_the_queues_it_is_given(tasks_project, durable, env_for):
    import subprocess
    import sys

    cls = store_class(durable)
    argv = [sys.executable, "-m", "nuvom.worker", "tasks", "--queues", "emails"]
    if not cls.supports_queues:
        proc = subprocess.run(argv, cwd=tasks_project, env=durable, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 6 and "has one queue only" in proc.stderr, proc.stderr
        return
    worker = subprocess.Popen(argv, cwd=tasks_project, env=durable, stderr=open(tasks_project / "worker.err", "wb"))
    produce = "from tasks import add\nprint(add.with_options(queue='emails').delay(1, 1).get(60))"
    try:
        produced = subprocess.run(
            [sys.executable, "-c", produce],
            cwd=tasks_project,
            env=durable,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert produced.stdout.strip() == "2", produced.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


@pytest.mark.parametrize("value", ["", " , ", "bad name", "a/b", "x" * 65])
def test_a_bad_queue_name_is_a_usage_error_in_one_line(cli, mem, value):
    outcome = cli("runworker", "--queues", value)
    assert outcome.exit_code == 2, outcome.stderr
    assert "--queues" in one_error_line(outcome.stderr)


def test_python_m_nuvom_worker_refuses_a_bad_queue_name(tmp_path, env_for):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "nuvom.worker", "--queues", "no spaces"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "'no spaces' is not a queue name" in proc.stderr


# -- nuvom queues -------------------------------------------------------------------
def test_nuvom_queues_shows_each_named_queues_depth_and_the_workers_serving_it(cli, mem):
    queue, _ = mem
    parent = Job(func_name="a", queue="emails")
    queue.enqueue_many([parent, Job(func_name="a", queue="emails"), Job(func_name="a", queue="emails", priority=3)])
    queue.enqueue(Job(func_name="a"))
    # Waiting for its parent (a workflow job): counted as queued in its queue.
    queue.enqueue(Job(func_name="a", queue="reports", flow=Flow(parents=[parent.id]), status=JobStatus.WAITING))
    queue.enqueue(Job(func_name="a", queue="emails", attempts=1, status=JobStatus.RETRYING))
    [claimed] = queue.claim_batch(1, 0, lambda: 0, queues=["emails"])
    now = time.time()
    queue.publish_worker(
        WorkerInfo(
            worker_id="h:1:a",
            host="h",
            pid=1,
            queues=["emails", "bulk"],
            started_at=now,
            heartbeat_at=now,
            slots=1,
            busy=0,
            ttl_secs=60,
        )
    )
    outcome = cli("queues", "--format", "json")
    assert outcome.exit_code == 0, outcome.stderr
    doc = json.loads(outcome.stdout)
    assert doc["named_queues"] is True
    by_name = {row["name"]: row for row in doc["queues"]}
    assert by_name["emails"] == {"name": "emails", "queued": 2, "retrying": 1, "running": 1, "workers": 1}
    assert by_name["default"] == {"name": "default", "queued": 1, "retrying": 0, "running": 0, "workers": 0}
    assert by_name["reports"]["queued"] == 1  # the WAITING job
    # A queue a live worker serves shows, empty, so that a queue nobody serves stands out.
    assert by_name["bulk"] == {"name": "bulk", "queued": 0, "retrying": 0, "running": 0, "workers": 1}
    table = cli("queues")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["queue", "queued", "retrying", "running", "workers"]
    assert next(line for line in lines if line.startswith("emails")).split() == ["emails", "2", "1", "1", "1"]
    assert claimed.queue == "emails"


def test_nuvom_queues_on_a_durable_store(nuvom, python, tasks_project, durable):
    cls = store_class(durable)
    produce = "from tasks import add\nadd.delay(1, 2)\nadd.delay(3, 4)\n"
    if cls.supports_queues:
        produce += "add.with_options(queue='emails').delay(5, 6)\n"
    assert python(produce, tasks_project, durable).returncode == 0
    doc = json_of(nuvom, tasks_project, durable, "queues")
    by_name = {row["name"]: row for row in doc["queues"]}
    assert by_name["default"]["queued"] == 2 and by_name["default"]["running"] == 0
    assert doc["named_queues"] is cls.supports_queues
    table = nuvom(["queues"], tasks_project, durable)
    assert table.returncode == 0
    if cls.supports_queues:
        assert by_name["emails"]["queued"] == 1
    else:
        assert set(by_name) == {"default"}
        assert "store has one queue, default" in table.stderr  # said, not an error


# -- status / inspect job -----------------------------------------------------------
def test_status_and_inspect_show_queue_priority_unique_key_parents_and_dependents(cli, mem):
    queue, _ = mem
    parent = Job(func_name="a", queue="emails", priority=5, unique_key="welcome:7")
    queue.enqueue(parent)
    child = Job(func_name="b", flow=Flow(parents=[parent.id], receives="result"), status=JobStatus.WAITING)
    queue.enqueue(child)
    doc = json.loads(cli("status", parent.id, "--format", "json").stdout)
    assert (doc["queue"], doc["priority"], doc["unique_key"]) == ("emails", 5, "welcome:7")
    assert doc["dependents"] == [child.id] and doc["flow"] is None
    doc = json.loads(cli("inspect", "job", child.id, "--format", "json").stdout)
    assert doc["status"] == "WAITING" and doc["queue"] == "default"
    assert doc["flow"] == {"parents": [parent.id], "run_if": "succeeded", "receives": "result"}
    assert doc["dependents"] == []
    table = cli("status", parent.id).stdout
    rows = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in table.splitlines()}
    assert rows["queue"] == "emails, priority 5" and rows["unique key"] == "welcome:7"
    assert rows["then"] == f"{child.id}  (waiting for this job)"
    table = cli("inspect", "job", child.id).stdout
    assert f"waits for  {parent.id}  (runs once it succeeded, with its result as first argument)" in table


def test_status_shows_a_workflow_on_a_durable_store(nuvom, python, tasks_project, durable):
    cls = store_class(durable)
    if not cls.supports_workflows:
        pytest.skip(f"the {durable['NUVOM_QUEUE_BACKEND']} store keeps no workflows (supports_workflows)")
    chain = "from tasks import add\nfirst = add.delay(1, 2)\nprint(first.id, first.then(add, 10).id)"
    produced = python(chain, tasks_project, durable)
    assert produced.returncode == 0, produced.stderr
    first_id, then_id = produced.stdout.split()
    assert json_of(nuvom, tasks_project, durable, "status", first_id)["dependents"] == [then_id]
    doc = json_of(nuvom, tasks_project, durable, "status", then_id)
    assert doc["status"] == "WAITING" and doc["flow"]["parents"] == [first_id]


# -- cancel job ---------------------------------------------------------------------
def test_cancel_job_asks_a_running_job_to_stop(cli, mem, tasks_project, monkeypatch):
    monkeypatch.syspath_prepend(str(tasks_project))
    import tasks  # type: ignore[import-not-found]
    from nuvom.worker import Worker

    with Worker(max_workers=1):
        job = tasks.patient.delay(60)
        wait_until(lambda: started(job.id), 30, "the job running")
        outcome = cli("cancel", "job", job.id)
        assert outcome.exit_code == 0, outcome.stderr
        assert f"asked the worker running job {job.id} (patient) to stop" in outcome.stdout
        with pytest.raises(JobFailed) as failed:
            job.get(timeout=30)
    assert failed.value.exc_type == "Cancelled"
    doc = json.loads(cli("status", job.id, "--format", "json").stdout)
    assert doc["status"] == "FAILED" and doc["error"]["type"] == "Cancelled" and doc["attempts"] == 1
    again = cli("cancel", "job", job.id)
    assert again.exit_code == 4 and "is FAILED already" in one_error_line(again.stderr)


def test_cancel_job_of_a_workflow_job_waiting_for_its_parent(cli, mem):
    queue, _ = mem
    parent = Job(func_name="a")
    child = Job(func_name="b", flow=Flow(parents=[parent.id]), status=JobStatus.WAITING)
    queue.enqueue_many([parent, child])
    outcome = cli("cancel", "job", child.id)
    assert outcome.exit_code == 0 and "taken out of the queue" in outcome.stdout, outcome.stderr
    doc = json.loads(cli("status", parent.id, "--format", "json").stdout)
    assert doc["status"] == "PENDING" and doc["dependents"] == []  # the parent stays, nothing waits for it
    assert json.loads(cli("status", child.id, "-f", "json").stdout)["error"]["type"] == "Cancelled"


def test_cancel_job_takes_a_waiting_job_out_of_the_queue(nuvom, python, tasks_project, durable):
    made = python("from tasks import add\nprint(add.delay(1, 2).id)", tasks_project, durable)
    job_id = made.stdout.strip()
    doc = json_of(nuvom, tasks_project, durable, "cancel", "job", job_id)
    assert doc["cancelled"] == job_id and doc["how"] == "taken out of the queue"
    assert doc["job"]["status"] == "FAILED" and doc["job"]["error"]["type"] == "Cancelled"
    assert json_of(nuvom, tasks_project, durable, "status", job_id)["error"]["type"] == "Cancelled"
    again = nuvom(["cancel", "job", job_id], tasks_project, durable)
    assert again.returncode == 4 and f"job {job_id} is FAILED already" in one_error_line(again.stderr)


def test_cancel_job_of_a_running_job_on_a_durable_store(nuvom, python, background, tasks_project, durable):
    """Stops the job where the store records cancel requests; elsewhere says,
    in one line (exit 6), that the store cannot, and the job runs on unharmed."""
    cls = store_class(durable)
    worker = background(["runworker", "-w", "1"], tasks_project, durable)
    worker.wait_for(BANNER)
    release = tasks_project / "release"
    job_id = python(
        f"from tasks import patient\nprint(patient.delay(50, {str(release)!r}).id)", tasks_project, durable
    ).stdout.strip()
    wait_until(lambda: json_of(nuvom, tasks_project, durable, "status", job_id)["status"] == "RUNNING", 60, "claimed")
    proc = nuvom(["cancel", "job", job_id], tasks_project, durable)
    if cancels_running(cls):
        assert proc.returncode == 0, proc.stderr
        assert f"asked the worker running job {job_id} (patient) to stop" in proc.stdout
        done = wait_until(
            lambda: (d := json_of(nuvom, tasks_project, durable, "status", job_id))["status"] == "FAILED" and d,
            60,
            "the job cancelled",
        )
        assert done["error"]["type"] == "Cancelled" and done["attempts"] == 1
    else:
        assert proc.returncode == 6
        line = one_error_line(proc.stderr)
        assert f"job {job_id} is RUNNING: a worker holds it" in line and "cannot cancel running jobs" in line
        release.touch()
        done = wait_until(
            lambda: (d := json_of(nuvom, tasks_project, durable, "status", job_id))["status"] == "SUCCESS" and d,
            60,
            "the job to finish",
        )
        assert done["result"] == "finished"
    assert worker.stop(signal.SIGTERM) == 0


def test_cancel_job_of_an_unknown_or_malformed_id_is_one_line(cli, mem):
    unknown = cli("cancel", "job", "ffff")
    assert unknown.exit_code == 3 and "no job with id 'ffff'" in one_error_line(unknown.stderr)
    malformed = cli("cancel", "job", "../etc/passwd")
    assert malformed.exit_code == 4 and "not a valid job id" in one_error_line(malformed.stderr)


def test_cancel_job_on_a_store_that_cannot_cancel_running_jobs_says_so(cli, mem, tasks_project, monkeypatch):
    """The memory store with its cancel requests taken away stands for any store
    without them: the worker's claimed job is left to run, and the CLI says why."""
    queue, _ = mem
    monkeypatch.setattr(type(queue), "request_cancel", BaseJobQueue.request_cancel)
    monkeypatch.syspath_prepend(str(tasks_project))
    import tasks  # type: ignore[import-not-found]
    from nuvom.worker import Worker

    with Worker(max_workers=1):
        job = tasks.patient.delay(2)
        wait_until(lambda: started(job.id), 30, "the job running")
        outcome = cli("cancel", "job", job.id)
        assert outcome.exit_code == 6
        line = one_error_line(outcome.stderr)
        assert "the MemoryJobQueue store cannot cancel running jobs" in line
        assert job.get(timeout=30) == "finished"
