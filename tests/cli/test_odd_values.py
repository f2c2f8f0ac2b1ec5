"""Every command and every option fed odd values: huge and negative numbers,
bytes that are not UTF-8 (as Python hands them over: surrogate escapes),
empty, blank and very long strings. None may reach exit 70 (a bug) or print
a traceback; each is refused with one ``error:`` line and a documented code,
and the stored jobs are left byte for byte as they were."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from nuvom.job import Attempt, Job, JobError, JobStatus

DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7}  # docs/cli.md, "Exit codes"; 70 is a bug

ODD = [
    "99999999999999999999",
    "-99999999999999999999",
    "-1",
    "0",
    "1e308",
    "nan",
    "",
    " ",
    "x" * 100_000,
    os.fsdecode(b"\xff"),
    os.fsdecode(b"job-\xfe\xff"),
    "../../etc/passwd",
    "-",
    "é🙂\n",
]


def _command_tree() -> list[tuple[list[str], object]]:
    """``(path, command)`` for every leaf command of ``nuvom``."""
    import typer.main
    from nuvom.cli import app

    root = typer.main.get_command(app)
    ctx = root.make_context("nuvom", ["status", "x"], resilient_parsing=True)
    out = []

    def walk(group, path):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is None or name == "dashboard":  # plugin commands are their owners' to test
                continue
            if name == "runscheduler":  # takes no value at all and runs until stopped (tests/cli/test_schedule_cli.py)
                continue
            if hasattr(command, "list_commands"):
                walk(command, [*path, name])
            else:
                out.append(([*path, name], command))

    walk(root, [])
    return out


LEAVES = {" ".join(path): (path, command) for path, command in _command_tree()}


def _placeholder(param, job_id: str) -> str:
    name = str(param.name)
    return {"job_id": job_id, "target": "nuvom_nothing_here.plugin", "name": "hello"}.get(name, "x")


def _cases(command, job_id: str) -> list[list[str]]:
    """Argument lists for ``command``: each parameter in turn gets each odd value,
    the others a usable one."""
    params = [p for p in command.params if not getattr(p, "is_flag", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    required = []
    for p in params:
        if p.param_type_name == "option" and p.required:
            required += [p.opts[0], "job.json"]
    cases = []
    for target in params:
        for value in ODD:
            args = [value if p is target else _placeholder(p, job_id) for p in arguments]
            options = [target.opts[0], value] if target.param_type_name == "option" else []
            extra = [] if target.param_type_name == "option" and target.opts[0] in required else required
            cases.append(args + options + extra)
    if not params:
        cases.append([])
    return cases


def _store_jobs(monkeypatch: pytest.MonkeyPatch) -> list[Job]:
    from nuvom.app import default_app
    from nuvom.testing import reset_process_state

    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "file")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "file")
    reset_process_state()
    now = time.time()
    err = JobError(type="RuntimeError", message="it broke")
    jobs = [
        Job(func_name="add", status=JobStatus.SUCCESS, result=3, attempts=1, started_at=now - 1, finished_at=now),
        Job(
            func_name="boom",
            status=JobStatus.FAILED,
            error=err,
            attempts=1,
            started_at=now - 1,
            finished_at=now,
            history=[Attempt(number=1, started_at=now - 1, finished_at=now, outcome="error", error=err)],
        ),
    ]
    app = default_app()
    app.results.store(jobs)
    app.close()
    reset_process_state()
    return jobs


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the job store (the data dir, but for the task manifest
    that `list tasks` and `discover tasks` write)."""
    data = root / ".nuvom"
    return {
        str(p.relative_to(data)): p.read_bytes()
        for p in sorted(data.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _a_queue_name(value: str) -> bool:
    from nuvom.job import TaskOptions

    try:
        TaskOptions(queue=value)
    except ValueError:
        return False
    return True


def assert_clear_outcome(args: list[str], outcome) -> None:
    shown = [a if len(a) < 40 else a[:20] + "..." for a in args]
    assert outcome.exception is None, (shown, repr(outcome.exception))
    assert outcome.exit_code in DOCUMENTED, (shown, outcome.exit_code, outcome.stderr[-500:])
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    if outcome.exit_code not in (0, 1):
        lines = outcome.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error: "), (shown, outcome.stderr[-500:])
        assert "unexpected" not in lines[-1], (shown, lines[-1])


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_every_option_takes_odd_values_without_a_bug(cli, tmp_path, monkeypatch, command):
    # runworker is included: every odd value of --workers/--batch-size is out of
    # range, so the engine never starts (a usable value would run it until stopped).
    jobs = _store_jobs(monkeypatch)
    (tmp_path / "job.json").write_text('{"func_name": "add", "args": [1, 2]}', encoding="utf-8")
    (tmp_path / "tasks.py").write_text("from nuvom.task import task\n\n@task\ndef add(x, y):\n    return x + y\n")
    before = _snapshot(tmp_path)
    path, leaf = LEAVES[command]
    failed_id = jobs[1].id
    for args in _cases(leaf, failed_id):
        if path == ["retry", "job"] and failed_id in args:
            continue  # a usable retry queues a job: that is retry's own test
        if path == ["runworker"] and args[:1] == ["--queues"] and _a_queue_name(args[1]):
            continue  # a usable queue name would run the engine until stopped (tests/cli/test_job_control.py)
        outcome = cli(*path, *args)
        assert_clear_outcome([*path, *args], outcome)
    assert _snapshot(tmp_path) == before


def test_non_utf8_dotenv_is_one_line_for_every_command(cli, tmp_path):
    (tmp_path / ".env").write_bytes(b"NUVOM_LOG_LEVEL=INFO\nNUVOM_DATA_DIR=caf\xe9\n")
    for args in (
        ["status", "abc"],
        ["inspect", "job", "abc"],
        ["history", "recent"],
        ["retry", "job", "abc"],
        ["config"],
        ["plugin", "status"],
        ["list", "tasks"],
        ["discover", "tasks"],
    ):
        outcome = cli(*args)
        assert outcome.exit_code == 5, (args, outcome.exit_code, outcome.stderr)
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, outcome.stderr)
        assert ".env: byte 0xe9 at line 2, column 19 is not UTF-8 text" in lines[0]


def test_history_limit_out_of_range_is_a_usage_error(cli, mem):
    for value in ("99999999999999999999", "-5", "0", "10001"):
        outcome = cli("history", "recent", "--limit", value)
        assert outcome.exit_code == 2, (value, outcome.stderr)
        (line,) = outcome.stderr.strip().splitlines()
        assert line.startswith("error: nuvom history recent:") and "--limit" in line


def test_real_argv_bytes_from_the_shell(tmp_path, env_for, nuvom_script):
    """The console script given bytes that are not UTF-8, as a shell passes ``$'\\xff'``."""
    import subprocess

    env = env_for(tmp_path, NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file")
    script = [os.fsencode(part) for part in nuvom_script]
    for args in ([b"history", b"recent", b"--task", b"\xff"], [b"status", b"\xff\xfe"], [b"config", b"-f", b"\xff"]):
        proc = subprocess.run([*script, *args], cwd=tmp_path, env=env, capture_output=True, timeout=60)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        (line,) = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        assert line.startswith("error: argument") and "\\x" in line and "is not UTF-8 text" in line
        assert proc.stdout == b""
