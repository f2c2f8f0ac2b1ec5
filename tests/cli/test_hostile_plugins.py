"""A plugin module that exits or blocks at import cannot stop the commands
that only read jobs or settings: those load no hook plugin (backends come from
entry points). `plugin status`, which does import plugins, reports such a
plugin as failing, by name."""

from __future__ import annotations

import json

import pytest

#: Generous for a loaded 2-core machine; a command that imports the blocking
#: plugin never finishes, so any deadline tells the two apart.
DEADLINE = 60

STORE_FAILED_JOB = """
import time
from nuvom.app import default_app
from nuvom.job import Attempt, Job, JobError, JobStatus
now = time.time()
err = JobError(type="RuntimeError", message="boom")
job = Job(func_name="boom", task_path="tasks:boom", status=JobStatus.FAILED, error=err, attempts=1,
          started_at=now - 0.01, finished_at=now,
          history=[Attempt(number=1, started_at=now - 0.01, finished_at=now, outcome="error", error=err)])
default_app().results.store([job])
print(job.id)
"""


def write_hostile_plugins(project, *targets: str) -> None:
    (project / "exit_nine.py").write_text("import sys\nsys.exit(9)\n\nclass ExitPlugin: ...\n")
    (project / "blocker.py").write_text("import threading\nthreading.Event().wait()\n\nclass BlockPlugin: ...\n")
    (project / "interrupter.py").write_text("raise KeyboardInterrupt\n\nclass InterruptPlugin: ...\n")
    lines = ", ".join(f'"{t}"' for t in targets)
    (project / ".nuvom_plugins.toml").write_text(f"[plugins]\nhooks = [{lines}]\n")


def test_read_commands_load_no_hook_plugin(tmp_path, env_for, nuvom, python):
    env = env_for(tmp_path, NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file")
    stored = python(STORE_FAILED_JOB, tmp_path, env)
    assert stored.returncode == 0, stored.stderr
    job_id = stored.stdout.strip()
    write_hostile_plugins(tmp_path, "exit_nine:ExitPlugin", "blocker:BlockPlugin")
    for args in (
        ["status", job_id, "-f", "json"],
        ["inspect", "job", job_id, "-f", "json"],
        ["history", "recent", "-f", "json"],
        ["config", "-f", "json"],
        ["retry", "job", job_id, "-f", "json"],
    ):
        proc = nuvom(args, tmp_path, env, timeout=DEADLINE)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
        doc = json.loads(proc.stdout)
        assert doc, args
    # The retry went to the queue: the job it made is readable by id.
    new_id = doc["job"]["id"]
    proc = nuvom(["status", new_id, "-f", "json"], tmp_path, env, timeout=DEADLINE)
    assert json.loads(proc.stdout)["retry_of"] == job_id


def test_config_plugins_flag_is_what_imports_plugins(tmp_path, env_for, nuvom):
    env = env_for(tmp_path)
    write_hostile_plugins(tmp_path, "exit_nine:ExitPlugin")
    plain = nuvom(["config", "-f", "json"], tmp_path, env, timeout=DEADLINE)
    assert plain.returncode == 0, plain.stderr
    # With --plugins the plugin is imported; its sys.exit(9) is caught by the
    # loader and does not become the command's exit code.
    with_plugins = nuvom(["config", "--plugins", "-f", "json"], tmp_path, env, timeout=DEADLINE)
    assert with_plugins.returncode == 0, with_plugins.stderr
    assert "ExitPlugin" not in json.loads(with_plugins.stdout)["plugins"]


@pytest.mark.parametrize(
    ("target", "name", "fragment"),
    [
        ("exit_nine:ExitPlugin", "ExitPlugin", "SystemExit(9)"),
        ("interrupter:InterruptPlugin", "InterruptPlugin", "KeyboardInterrupt"),
    ],
)
def test_plugin_status_reports_exit_and_interrupt_at_import_by_name(tmp_path, env_for, nuvom, target, name, fragment):
    env = env_for(tmp_path)
    write_hostile_plugins(tmp_path, target)
    proc = nuvom(["plugin", "status", "-f", "json"], tmp_path, env, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    records = {r["target"]: r for r in json.loads(proc.stdout)["plugins"]}
    record = records[target]
    assert (record["name"], record["state"]) == (name, "failed")
    assert fragment in record["error"]
    table = nuvom(["plugin", "status"], tmp_path, {**env, "COLUMNS": "200"}, timeout=DEADLINE)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if name in line)
    assert "failed" in row
