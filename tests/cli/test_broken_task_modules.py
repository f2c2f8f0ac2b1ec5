"""`nuvom runworker` and a task module that exits at import (issue 27, item 2):
its tasks' jobs fail naming the module and the exception, the failure is logged
once at ERROR, and every other task is served; on the file and SQLite stores,
whether the module comes from the manifest (first job) or NUVOM_TASK_MODULES (start)."""

from __future__ import annotations

import json
import signal
import textwrap

import pytest

BANNER = "Ctrl+C to stop"

MAILER = """
import os
import sys

from nuvom.task import task


@task
def send(to):
    return f"sent to {to}"


if not os.environ.get("API_KEY"):
    sys.exit("API_KEY not set")
"""

PRODUCE = """
import json
from nuvom.job import Job
from nuvom.backends import get_queue_backend, get_result_backend
send = [Job(func_name="send", args=[f"user{i}"]) for i in range(3)]
add = [Job(func_name="add", args=[2, 3])]
get_queue_backend().enqueue_many([*send, *add])
out = []
for job in (*send, *add):
    record = get_result_backend().wait(job.id, timeout=60)
    out.append([job.id, record.status.value, record.result, record.error and record.error.type,
                record.error and record.error.message])
print(json.dumps(out))
"""


@pytest.mark.parametrize("declared", [False, True], ids=["manifest", "task_modules"])
def test_runworker_fails_the_jobs_of_a_module_that_exits_at_import_and_serves_the_rest(
    nuvom, python, background, project, durable, declared
):
    (project / "mailer.py").write_text(textwrap.dedent(MAILER), encoding="utf-8")
    env = {k: v for k, v in durable.items() if k != "API_KEY"}
    if declared:
        env["NUVOM_TASK_MODULES"] = "mailer, tasks"
    else:
        assert nuvom(["discover", "tasks"], project, env).returncode == 0  # send and add, by name only
    worker = background(["runworker", "--workers", "2"], project, env)
    worker.wait_for(BANNER)
    produced = python(PRODUCE, project, env, timeout=90)
    assert produced.returncode == 0, produced.stderr
    rows = json.loads(produced.stdout)
    assert worker.stop(signal.SIGINT) == 0
    log = worker.stderr
    for job_id, status, _result, error_type, message in rows[:3]:
        assert (status, error_type) == ("FAILED", "TaskImportError"), (job_id, message)
        assert "'mailer'" in message and "SystemExit('API_KEY not set')" in message
    assert rows[3][1:3] == ["SUCCESS", 5]
    lines = log.splitlines()
    assert sum("failed to import" in line for line in lines) == 1, log
    # Every ERROR line is that one or the runner's line for one of the three jobs.
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) <= 4 and all("failed to import" in e or "failed without running" in e for e in errors), log
