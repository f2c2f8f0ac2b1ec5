"""The real console script against real backends, process by process:
a worker started, jobs queued by another process, history and inspect read
back, a retry, and a graceful stop on SIGINT/SIGTERM with exit code 0."""

from __future__ import annotations

import json
import signal

import pytest

BANNER = "Ctrl+C to stop"

QUEUE_JOBS = """
from tasks import add, boom
print(add.delay(2, 3).id)
print(boom.delay("kaput").id)
"""

WAIT_FOR = """
import sys
from nuvom.backends import get_result_backend
for job_id in sys.argv[1:]:
    record = get_result_backend().wait(job_id, timeout=60)
    assert record is not None, f"no outcome for {job_id}"
    print(record.status.value)
"""


def wait_for(python, project, env, *ids):
    import subprocess
    import sys
    import textwrap

    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WAIT_FOR), *ids],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def status_json(nuvom, project, env, *args):
    proc = nuvom([*args, "--format", "json"], project, env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_worker_runs_jobs_from_another_process_and_stops_on_sigint(nuvom, python, background, project, durable):
    worker = background(["runworker", "--workers", "2"], project, durable)
    worker.wait_for(BANNER)
    banner = worker.stderr
    for text in ("queue", "results", durable["NUVOM_QUEUE_BACKEND"], "data", str(project / ".nuvom"), "tasks"):
        assert text in banner, text
    # Where the jobs are (the store, as `describe()` names it) and which queues it serves.
    assert f"store      {durable['NUVOM_QUEUE_BACKEND']} " in banner and "queues     default" in banner, banner

    produced = python(QUEUE_JOBS, project, durable)
    assert produced.returncode == 0, produced.stderr
    add_id, boom_id = produced.stdout.split()
    assert wait_for(python, project, durable, add_id, boom_id) == ["SUCCESS", "FAILED"]

    # status / inspect / history read back what the worker stored
    doc = status_json(nuvom, project, durable, "status", add_id)
    assert (doc["status"], doc["result"], doc["attempts"]) == ("SUCCESS", 5, 1)
    assert doc["worker_id"] and doc["finished_at"] >= doc["started_at"] >= doc["created_at"]

    doc = status_json(nuvom, project, durable, "inspect", "job", boom_id)
    assert doc["status"] == "FAILED"
    assert doc["attempts"] == 2 and [a["outcome"] for a in doc["history"]] == ["error", "error"]  # retries=1
    assert doc["error"]["type"] == "RuntimeError" and doc["error"]["message"] == "kaput"
    assert "raise RuntimeError(message)" in doc["error"]["traceback"]

    table = nuvom(["inspect", "job", boom_id], project, durable)
    assert table.returncode == 0 and "Traceback" in table.stdout and "Attempts" in table.stdout

    history = status_json(nuvom, project, durable, "history", "recent")
    assert {j["id"] for j in history["jobs"]} == {add_id, boom_id}
    failed = status_json(nuvom, project, durable, "history", "recent", "--status", "FAILED")
    assert [j["id"] for j in failed["jobs"]] == [boom_id]

    # retry: a new job, run by the same worker, pointing at the failed one
    retried = status_json(nuvom, project, durable, "retry", "job", boom_id)
    new_id = retried["job"]["id"]
    assert new_id != boom_id and retried["job"]["retry_of"] == boom_id
    assert wait_for(python, project, durable, new_id) == ["FAILED"]
    doc = status_json(nuvom, project, durable, "status", new_id)
    assert doc["retry_of"] == boom_id and doc["attempts"] == 2

    assert worker.stop(signal.SIGINT) == 0
    assert "stopped" in worker.stderr
    assert "Traceback" not in worker.stderr


def test_worker_stops_gracefully_on_sigterm(background, project, durable):
    worker = background(["runworker", "-w", "1"], project, durable)
    worker.wait_for(BANNER)
    assert worker.stop(signal.SIGTERM) == 0
    assert "stopped" in worker.stderr


def test_worker_imports_project_tasks_without_pythonpath(nuvom, python, background, project, durable):
    # The job names only the task (no import path): the worker must find
    # tasks.py through the manifest and the project directory on sys.path.
    assert "PYTHONPATH" not in durable
    assert nuvom(["discover", "tasks"], project, durable).returncode == 0
    worker = background(["runworker", "-w", "1"], project, durable)
    worker.wait_for(BANNER)
    assert "2 registered" in worker.stderr
    produced = python(
        """
        from nuvom.backends import get_queue_backend
        from nuvom.job import Job
        job = Job(func_name="add", args=[40, 2])
        get_queue_backend().enqueue(job)
        print(job.id)
        """,
        project,
        durable,
    )
    job_id = produced.stdout.strip()
    assert wait_for(python, project, durable, job_id) == ["SUCCESS"]
    assert status_json(nuvom, project, durable, "status", job_id)["result"] == 42
    assert worker.stop(signal.SIGINT) == 0


def test_dev_mode_worker_starts_and_stops(background, project, durable):
    worker = background(["runworker", "--dev", "-w", "1"], project, durable)
    worker.wait_for(BANNER)
    assert "dev mode" in worker.stderr
    assert worker.stop(signal.SIGINT) == 0


def test_memory_queue_warns_that_other_processes_are_not_seen(background, project, env_for, tmp_path):
    env = env_for(tmp_path, NUVOM_QUEUE_BACKEND="memory", NUVOM_RESULT_BACKEND="memory")
    worker = background(["runworker", "-w", "1"], project, env)
    worker.wait_for("is not shared between processes")
    assert worker.stop(signal.SIGINT) == 0


def test_worker_with_an_unknown_backend_fails_in_one_line(nuvom, project, env_for, tmp_path):
    proc = nuvom(["runworker"], project, env_for(tmp_path, NUVOM_QUEUE_BACKEND="kafka"))
    assert proc.returncode == 6
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("error: unknown queue backend 'kafka'")
    ]


@pytest.mark.parametrize("args", [["status", "ffff"], ["inspect", "job", "ffff"], ["retry", "job", "ffff"]])
def test_console_script_unknown_id_exit_code(nuvom, project, durable, args):
    proc = nuvom(args, project, durable)
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: no ") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


def test_console_script_bad_dotenv(nuvom, project, env_for, tmp_path):
    (project / ".env").write_text("NUVOM_BATCH_SIZE=-3\n")
    proc = nuvom(["runworker"], project, env_for(tmp_path))
    assert proc.returncode == 5
    assert proc.stderr.count("\n") == 1 and "NUVOM_BATCH_SIZE" in proc.stderr
    proc = nuvom(["--debug", "config"], project, env_for(tmp_path))
    assert proc.returncode == 5 and "Traceback" in proc.stderr


def test_runtestworker_console_script_exit_codes(nuvom, project, env_for, tmp_path):
    (project / "ok.json").write_text('{"func_name": "add", "args": [1, 2]}')
    (project / "bad.json").write_text('{"func_name": "boom", "task_path": "tasks:boom"}')
    env = env_for(tmp_path)
    ok = nuvom(["runtestworker", "run", "--job-file", "ok.json"], project, env)
    assert ok.returncode == 0 and "result: 3" in ok.stdout
    bad = nuvom(["runtestworker", "run", "--job-file", "bad.json"], project, env)
    assert bad.returncode == 1 and "RuntimeError: boom" in bad.stdout


def test_python_dash_m_runs_the_same_cli(project, env_for, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "nuvom.cli", "status", "../x"],
        cwd=project,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 4 and proc.stderr.startswith("error: ")
