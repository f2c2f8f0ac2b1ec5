"""CLI details: one duration per attempt everywhere, whole values off a
terminal, ``--version --format json``, help without type artefacts, and a
failed job retried once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from nuvom.job import Attempt, Job, JobError, JobStatus

LONG_MESSAGE = " ".join(f"word{i:03d}" for i in range(60))  # ~480 characters, 60 whole words
LONG_TASK = "generate_the_quarterly_report_for_every_region"


def failed_job(func: str = "boom", message: str = "it broke", *, at: float | None = None) -> Job:
    now = at or time.time()
    error = JobError(type="RuntimeError", message=message, traceback="Traceback ...\nRuntimeError: x\n")
    # The attempt ran 34 µs; the record's finished_at is later (hooks, storing):
    # what the job took is the attempt's time.
    attempt = Attempt(number=1, started_at=now - 0.000641, finished_at=now - 0.000607, outcome="error", error=error)
    return Job(
        func_name=func,
        task_path=f"tasks:{func}",
        status=JobStatus.FAILED,
        error=error,
        attempts=1,
        created_at=now - 1,
        started_at=now - 0.000641,
        finished_at=now,
        history=[attempt],
    )


# -- durations -------------------------------------------------------------------
def test_status_inspect_and_json_give_the_attempt_duration(cli, mem):
    _, results = mem
    job = failed_job()
    results.store([job])
    status = cli("status", job.id)
    assert status.exit_code == 0, status.stderr
    assert "(last attempt 34 µs)" in status.stdout, status.stdout
    inspect = cli("inspect", "job", job.id)
    assert "34 µs (last attempt)" in inspect.stdout
    attempts_rows = [line for line in inspect.stdout.splitlines() if "error" in line and "µs" in line]
    assert attempts_rows and all("34 µs" in row for row in attempts_rows), inspect.stdout
    assert "641 µs" not in status.stdout + inspect.stdout  # the job's span, not the last attempt's
    doc = json.loads(cli("status", job.id, "-f", "json").stdout)
    assert doc["duration_secs"] == doc["history"][-1]["duration_secs"] == pytest.approx(0.000034, abs=1e-6)
    history = cli("history", "recent")
    assert "34 µs" in history.stdout and "641 µs" not in history.stdout


# -- whole values when stdout is not a terminal --------------------------------------
@pytest.mark.parametrize("columns", ["40", "60", "200"])
def test_piped_tables_print_whole_values(cli, mem, columns):
    _, results = mem
    job = failed_job(LONG_TASK, LONG_MESSAGE)
    results.store([job])
    env = {"COLUMNS": columns}
    for args in (["history", "recent"], ["status", job.id], ["inspect", "job", job.id]):
        out = cli(*args, env=env)
        assert out.exit_code == 0, (args, out.stderr)
        lines = out.stdout.splitlines()
        # The id, the task name and the whole message each sit on one line.
        assert any(job.id in line for line in lines), (args, out.stdout)
        assert any(LONG_MESSAGE in line for line in lines), (args, out.stdout)
        if args[0] != "status":
            assert any(LONG_TASK in line for line in lines), (args, out.stdout)
        assert "…" not in out.stdout


def test_long_results_are_whole_when_piped(cli, mem):
    _, results = mem
    now = time.time()
    value = "x" * 3000
    job = Job(func_name="big", status=JobStatus.SUCCESS, result=value, attempts=1, started_at=now - 1, finished_at=now)
    results.store([job])
    for args in (["status", job.id], ["inspect", "job", job.id], ["history", "recent"]):
        out = cli(*args)
        assert repr(value) in out.stdout, args


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal needs the pty module (POSIX)")
def test_narrow_terminal_keeps_ids_whole_and_wraps_at_words(tmp_path, env_for, python):
    import pty

    env = env_for(tmp_path, NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file", COLUMNS="60")
    env.pop("TERM", None)
    stored = python(
        f"""
        from nuvom.app import default_app
        from nuvom.job import Attempt, Job, JobError, JobStatus
        import time
        now = time.time()
        err = JobError(type="RuntimeError", message={LONG_MESSAGE!r})
        job = Job(func_name={LONG_TASK!r}, status=JobStatus.FAILED, error=err, attempts=1, started_at=now - 1,
                  finished_at=now, history=[Attempt(number=1, started_at=now - 1, finished_at=now, outcome="error",
                  error=err)])
        default_app().results.store([job])
        print(job.id)
        """,
        tmp_path,
        env,
    )
    assert stored.returncode == 0, stored.stderr
    job_id = stored.stdout.strip()
    for args in (["history", "recent"], ["inspect", "job", job_id]):
        primary, secondary = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "nuvom.cli", *args], cwd=tmp_path, env=env, stdout=secondary, stderr=subprocess.PIPE
        )
        os.close(secondary)
        chunks = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(primary)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", b"".join(chunks).decode("utf-8", "replace"))
        assert job_id in text, (args, text)
        words = set(re.findall(r"\w+", text))
        # Every word of the message is whole: wrapped at spaces, never cut inside a word.
        assert {f"word{i:03d}" for i in range(60)} <= words, (args, text)
        assert max(len(line) for line in text.splitlines()) <= 60


# -- --version ------------------------------------------------------------------------
def test_version_as_json(cli):
    out = cli("--version", "--format", "json")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["version"] == doc["packages"]["nuvom-cli"]
    assert "nuvom-core" in doc["packages"]
    table = cli("--version")
    assert table.exit_code == 0 and f"nuvom-cli {doc['version']}" in table.stdout


# -- help -----------------------------------------------------------------------------
COMMANDS = [
    [],
    ["runworker"],
    ["runtestworker"],
    ["runtestworker", "run"],
    ["status"],
    ["inspect"],
    ["inspect", "job"],
    ["history"],
    ["history", "recent"],
    ["retry"],
    ["retry", "job"],
    ["list"],
    ["list", "tasks"],
    ["discover"],
    ["discover", "tasks"],
    ["config"],
    ["plugin"],
    ["plugin", "status"],
    ["plugin", "test"],
    ["plugin", "scaffold"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "nuvom")
def test_help_has_no_type_artefacts(cli, command):
    out = cli(*command, "--help")
    assert out.exit_code == 0, out.stderr
    text = out.stdout
    assert text.startswith("Usage: nuvom")
    for artefact in ("<bool>", "<str>", "<int", "<path>", "list[", "{JOB_ID}", "[bold]", "[/]", "VALUE"):
        assert artefact not in text, (command, artefact, text)


def test_help_shows_metavars_and_bounds(cli):
    text = cli("history", "recent", "--help").stdout
    assert "--limit N" in text and "1 to 10000" in text
    assert "--format table|json" in text
    assert "Usage: nuvom retry job [OPTIONS] JOB_ID" in cli("retry", "job", "--help").stdout


# -- retry once ---------------------------------------------------------------------------
def test_second_retry_reports_the_first_unless_forced(cli, mem):
    queue, results = mem
    job = failed_job()
    results.store([job])
    first = json.loads(cli("retry", "job", job.id, "-f", "json").stdout)
    assert first["already_retried"] is False
    new_id = first["job"]["id"]
    assert queue.qsize() == 1

    again = cli("retry", "job", job.id)
    assert again.exit_code == 0, again.stderr
    assert f"already retried as {new_id}" in again.stdout
    doc = json.loads(cli("retry", "job", job.id, "-f", "json").stdout)
    assert (doc["already_retried"], doc["job"]["id"]) == (True, new_id)
    assert queue.qsize() == 1  # nothing queued twice

    forced = json.loads(cli("retry", "job", job.id, "--force", "-f", "json").stdout)
    assert forced["already_retried"] is False and forced["job"]["id"] != new_id
    assert queue.qsize() == 2


def test_a_finished_retry_is_found_too(cli, mem):
    queue, results = mem
    job = failed_job()
    results.store([job])
    new_id = json.loads(cli("retry", "job", job.id, "-f", "json").stdout)["job"]["id"]
    # A worker ran the retry: it left the queue and its outcome is stored.
    (claimed,) = queue.claim(1)
    assert claimed.id == new_id
    done = failed_job(at=time.time() + 1)
    done.id, done.retry_of = new_id, job.id
    results.store([done])
    assert queue.qsize() == 0
    out = cli("retry", "job", job.id)
    assert out.exit_code == 0 and f"already retried as {new_id}" in out.stdout
    assert queue.qsize() == 0
