"""Commands as nuvom 0.11.2's users typed them, through the real console script."""

from __future__ import annotations

import json


def test_runtestworker_run_takes_the_job_file_as_0_11_did(nuvom, project, env_for, tmp_path):
    (project / "job.json").write_text('{"func_name": "add", "args": [1, 2]}')
    ran = nuvom(["runtestworker", "run", "job.json"], project, env_for(tmp_path))
    assert ran.returncode == 0, ran.stderr
    assert "result: 3" in ran.stdout


def test_runtestworker_run_without_a_job_file_is_one_line_exit_2(nuvom, project, env_for, tmp_path):
    ran = nuvom(["runtestworker", "run"], project, env_for(tmp_path))
    assert ran.returncode == 2
    assert ran.stderr.count("\n") == 1 and "no job file" in ran.stderr and "Traceback" not in ran.stderr


def test_runtestworker_run_refuses_two_different_job_files(nuvom, project, env_for, tmp_path):
    (project / "a.json").write_text('{"func_name": "add", "args": [1, 2]}')
    (project / "b.json").write_text('{"func_name": "add", "args": [3, 4]}')
    ran = nuvom(["runtestworker", "run", "a.json", "--job-file", "b.json"], project, env_for(tmp_path))
    assert ran.returncode == 2 and "two job files given" in ran.stderr


def test_plugin_scaffold_takes_out_as_0_11_did(nuvom, env_for, tmp_path):
    made = nuvom(
        ["plugin", "scaffold", "hello", "--out", "plugins/hello", "--format", "json"], tmp_path, env_for(tmp_path)
    )
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["directory"] == "plugins/hello"
    assert (tmp_path / "plugins" / "hello" / "pyproject.toml").is_file()


SDK_RETRY = """
import sys
from nuvom.sdk import retry_job
print(retry_job(sys.argv[1]).id)
"""


def _failed_job_id(python, project, env) -> str:
    made = python(
        """
        from nuvom.app import default_app
        from nuvom.job import Job
        app = default_app()
        job = Job(func_name="boom", task_path="tasks:boom", args=["kaput"])
        app.run_locally(job, retries=False)
        app.results.store([job])
        print(job.id)
        """,
        project,
        env,
    )
    assert made.returncode == 0, made.stderr
    return str(made.stdout.strip())


def _sdk_retry(project, env, job_id: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SDK_RETRY, job_id], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_sdk_retry_job_after_nuvom_retry_job_queues_nothing_more(nuvom, python, project, durable):
    failed = _failed_job_id(python, project, durable)
    cli_retry = json.loads(nuvom(["retry", "job", failed, "-f", "json"], project, durable).stdout)
    assert cli_retry["already_retried"] is False
    assert _sdk_retry(project, durable, failed) == cli_retry["job"]["id"]
    queued = json.loads(nuvom(["history", "recent", "-f", "json"], project, durable).stdout)
    assert [j["id"] for j in queued["jobs"]] == [failed]  # nothing ran; one retry waits
    size = python("from nuvom.sdk import queue_size\nprint(queue_size())", project, durable)
    assert size.stdout.strip() == "1"


def test_nuvom_retry_job_after_sdk_retry_job_reports_it(nuvom, python, project, durable):
    failed = _failed_job_id(python, project, durable)
    sdk_id = _sdk_retry(project, durable, failed)
    again = json.loads(nuvom(["retry", "job", failed, "-f", "json"], project, durable).stdout)
    assert (again["already_retried"], again["job"]["id"]) == (True, sdk_id)
