"""Start-up stays light: parsing the command line imports no settings,
backends or plugins (bench/bench_cli.py has the timings)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from nuvom.cli import main
code = main(sys.argv[1:])
heavy = ["pydantic_settings", "nuvom.config", "nuvom.backends", "nuvom.plugins._loader", "nuvom.app",
         "nuvom.discovery", "nuvom.sdk", "nuvom.worker", "msgpack", "rich.table", "rich.console",
         "typer.rich_utils", "rich.markdown"]
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def imported_by(args, cwd, env):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_help_imports_nothing_heavy(tmp_path, env_for):
    # Help pages are plain text (nuvom.cli._help): not even rich is imported.
    # (typer >= 0.2x imports pydantic itself to convert a command's parameters: not checked.)
    for args in (
        ["--help"],
        ["status", "--help"],
        ["history", "recent", "--help"],
        ["plugin", "--help"],
        ["--version"],
        ["--version", "--format", "json"],
    ):
        probe = imported_by(args, tmp_path, env_for(tmp_path))
        assert probe["code"] == 0 and probe["loaded"] == [], (args, probe)


def test_usage_errors_import_nothing_heavy(tmp_path, env_for):
    probe = imported_by(["history", "recent", "--limit", "0"], tmp_path, env_for(tmp_path))
    assert probe["code"] == 2 and probe["loaded"] == [], probe


def test_status_loads_backends_but_not_the_worker(tmp_path, env_for):
    probe = imported_by(["status", "0" * 32, "--format", "json"], tmp_path, env_for(tmp_path))
    assert probe["code"] == 3
    assert "nuvom.backends" in probe["loaded"]
    assert "nuvom.worker" not in probe["loaded"]
    assert "rich.console" not in probe["loaded"]  # json output needs no rich


STORE = """
import time
from nuvom.app import default_app
from nuvom.job import Attempt, Job, JobError, JobStatus
now = time.time()
err = JobError(type="RuntimeError", message="it broke", traceback="Traceback (most recent call last):\\n  boom")
job = Job(func_name="add", task_path="tasks:add", status=JobStatus.FAILED, error=err, attempts=1,
          started_at=now - 0.01, finished_at=now,
          history=[Attempt(number=1, started_at=now - 0.01, finished_at=now, outcome="error", error=err)])
default_app().results.store([job])
print(job.id)
"""


def test_read_commands_to_a_pipe_print_plain_text_without_rich(tmp_path, env_for):
    # Output that is not a terminal is written without rich (nuvom.cli._render):
    # the tables of status, inspect and history cost no rich import.
    env = env_for(tmp_path, NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file")
    stored = subprocess.run([sys.executable, "-c", STORE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert stored.returncode == 0, stored.stderr
    job_id = stored.stdout.strip()
    for args in (["status", job_id], ["inspect", "job", job_id], ["history", "recent"]):
        probe = imported_by(args, tmp_path, env)
        assert probe["code"] == 0, (args, probe)
        assert not {"rich.console", "rich.table"} & set(probe["loaded"]), (args, probe)
        assert "nuvom.worker" not in probe["loaded"]


def test_only_the_called_command_is_built(tmp_path, env_for):
    # The command tree is converted one sub-command at a time (nuvom.cli._app._build).
    code = """
import sys
from unittest import mock
import typer.main
from nuvom.cli import main
built = []
real = typer.main.get_command
def spy(app):
    command = real(app)
    built.extend(getattr(command, "commands", {}))
    return command
with mock.patch.object(typer.main, "get_command", spy):
    code = main(sys.argv[1:])
print(sorted(set(built)), file=sys.stderr)
sys.exit(code)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, "status", "0" * 32, "-f", "json"],
        cwd=tmp_path,
        env=env_for(tmp_path, NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "['status']", proc.stderr


def test_nuvom_help_over_nuvom_0_11_is_refused_in_one_line(tmp_path, nuvom_script) -> None:
    import os
    import subprocess

    # 0.11.2's nuvom/__init__.py begins so; extend_path stands for the folder it shares with nuvom-core.
    (tmp_path / "old" / "nuvom").mkdir(parents=True)
    (tmp_path / "old" / "nuvom" / "__init__.py").write_text(
        "import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\nfrom nuvom.config import get_settings\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "old")}
    proc = subprocess.run([*nuvom_script, "--help"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: an earlier nuvom (0.11) is installed")
    assert "pip uninstall -y nuvom" in proc.stderr
