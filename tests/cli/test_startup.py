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
