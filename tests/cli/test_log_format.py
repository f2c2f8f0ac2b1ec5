"""NUVOM_LOG_FORMAT=json: a real `nuvom runworker` whose stderr a log shipper reads."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

QUEUE_JOBS = """
from tasks import add, boom
print(add.delay(2, 3).id)
print(boom.delay("kaput").id)
"""

WAIT_FOR = """
import sys
from nuvom.backends import get_result_backend
for job_id in sys.argv[1:]:
    assert get_result_backend().wait(job_id, timeout=60) is not None, job_id
"""

UTC_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_log_format_makes_every_stderr_line_a_json_object(nuvom, python, background, project, durable):
    env = {**durable, "NUVOM_LOG_FORMAT": "json"}
    assert nuvom(["discover", "tasks"], project, env).returncode == 0
    worker = background(["runworker", "-w", "2"], project, env)
    worker.wait_for("started: 2 threads")
    produced = python(QUEUE_JOBS, project, env)
    assert produced.returncode == 0, produced.stderr
    ids = produced.stdout.split()
    done = subprocess.run([sys.executable, "-c", WAIT_FOR, *ids], cwd=project, env=env, capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert worker.stop(signal.SIGTERM) == 0

    lines = worker.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record), record
        assert UTC_STAMP.match(record["timestamp"]), record["timestamp"]
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert record["logger"].startswith("nuvom")
    messages = [r["message"] for r in records]
    assert any("started" in m for m in messages) and any(m.endswith("stopped") for m in messages), messages
    assert "Ctrl+C to stop" not in worker.stderr  # no banner panel: its facts are a log record


def test_text_log_format_is_the_default_banner(background, project, durable):
    worker = background(["runworker", "-w", "1"], project, durable)
    worker.wait_for("Ctrl+C to stop")
    assert worker.stop(signal.SIGTERM) == 0
    assert not worker.stderr.lstrip().startswith("{")


def test_an_unknown_log_format_is_one_line_naming_the_variable(nuvom, project, durable):
    proc = nuvom(["runworker"], project, {**durable, "NUVOM_LOG_FORMAT": "xml"})
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.count("\n") == 1 and "NUVOM_LOG_FORMAT" in proc.stderr, proc.stderr


def test_json_log_format_applies_to_the_scheduler_process(background, project, durable):
    scheduler = background(["runscheduler"], project, {**durable, "NUVOM_LOG_FORMAT": "json"})
    scheduler.wait_for("scheduler started")
    assert scheduler.stop(signal.SIGTERM) == 0
    records = [json.loads(line) for line in scheduler.stderr.splitlines()]
    assert [r["message"] for r in records if r["logger"] == "nuvom.cli"][-1] == "scheduler stopping"
