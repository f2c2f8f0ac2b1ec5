"""``--format table|json``: tables for people, one stable JSON document for scripts."""

from __future__ import annotations

import json
import time

import pytest
from nuvom.job import Attempt, Job, JobError, JobStatus

JOB_KEYS = {
    "id",
    "executor",
    "task",
    "task_path",
    "status",
    "args",
    "kwargs",
    "result",
    "error",
    "attempts",
    "max_retries",
    "retry_delay_secs",
    "timeout_secs",
    "timeout_policy",
    "store_result",
    "tags",
    "created_at",
    "not_before",
    "started_at",
    "finished_at",
    "duration_secs",
    "worker_id",
    "retry_of",
    "schedule_key",
    "queue",
    "priority",
    "unique_key",
    "flow",
    "history",
}
#: ``status`` and ``inspect job`` add the jobs still waiting for this one.
SHOWN_JOB_KEYS = JOB_KEYS | {"dependents"}


def finished(func: str = "add", *, ok: bool = True, at: float | None = None, **fields) -> Job:
    now = at or time.time()
    if ok:
        attempt = Attempt(number=1, started_at=now - 0.5, finished_at=now)
        return Job(
            func_name=func,
            task_path=f"tasks:{func}",
            args=[1, 2],
            status=JobStatus.SUCCESS,
            result=3,
            attempts=1,
            created_at=now - 1,
            started_at=now - 0.5,
            finished_at=now,
            history=[attempt],
            worker_id="host:1:abc",
            **fields,
        )
    error = JobError(
        type="RuntimeError",
        message="it broke",
        traceback='Traceback (most recent call last):\n  File "tasks.py"\nRuntimeError: it broke\n',
    )
    history = [
        Attempt(number=1, started_at=now - 2, finished_at=now - 1.5, outcome="error", error=error),
        Attempt(number=2, started_at=now - 0.5, finished_at=now, outcome="error", error=error),
    ]
    return Job(
        func_name=func,
        task_path=f"tasks:{func}",
        status=JobStatus.FAILED,
        error=error,
        attempts=2,
        max_retries=1,
        created_at=now - 3,
        started_at=now - 0.5,
        finished_at=now,
        history=history,
        **fields,
    )


def json_of(outcome) -> dict:
    assert outcome.exit_code == 0, (outcome.stdout, outcome.stderr, outcome.exception)
    return json.loads(outcome.stdout)  # exactly one document, nothing else on stdout


# -- status -----------------------------------------------------------------------
def test_status_json_is_the_job_document(cli, mem):
    _, results = mem
    job = finished()
    results.store([job])
    doc = json_of(cli("status", job.id, "--format", "json"))
    assert set(doc) == SHOWN_JOB_KEYS
    assert (doc["id"], doc["status"], doc["result"], doc["task"]) == (job.id, "SUCCESS", 3, "add")
    assert doc["duration_secs"] == pytest.approx(0.5)


def test_status_table_shows_status_and_result(cli, mem):
    _, results = mem
    job = finished()
    results.store([job])
    out = cli("status", job.id)
    assert out.exit_code == 0
    assert "SUCCESS" in out.stdout and "result" in out.stdout and "3" in out.stdout
    assert out.stderr == ""


def test_status_of_a_queued_job_comes_from_the_queue(cli, mem):
    queue, _ = mem
    job = Job(func_name="add", args=[1, 2])
    queue.enqueue(job)
    doc = json_of(cli("status", job.id, "-f", "json"))
    assert doc["status"] == "PENDING"
    assert "PENDING" in cli("status", job.id).stdout


def test_status_of_a_failed_job_points_at_inspect(cli, mem):
    _, results = mem
    job = finished("boom", ok=False)
    results.store([job])
    out = cli("status", job.id)
    assert out.exit_code == 0
    assert "FAILED" in out.stdout and "RuntimeError: it broke" in out.stdout
    assert f"nuvom inspect job {job.id}" in out.stdout


# -- inspect job --------------------------------------------------------------------
def test_inspect_json_has_error_traceback_and_every_attempt(cli, mem):
    _, results = mem
    job = finished("boom", ok=False)
    results.store([job])
    doc = json_of(cli("inspect", "job", job.id, "--format=json"))
    assert set(doc) == SHOWN_JOB_KEYS
    assert doc["error"]["type"] == "RuntimeError"
    assert "RuntimeError: it broke" in doc["error"]["traceback"]
    assert [a["number"] for a in doc["history"]] == [1, 2]
    assert {"number", "outcome", "executor", "worker_id", "started_at", "finished_at", "duration_secs", "error"} == set(
        doc["history"][0]
    )


def test_inspect_table_shows_attempts_timings_and_traceback(cli, mem):
    _, results = mem
    job = finished("boom", ok=False, tags=["nightly"])
    results.store([job])
    out = cli("inspect", "job", job.id)
    assert out.exit_code == 0
    for text in ("Attempts", "Traceback", "RuntimeError: it broke", "created", "finished", "duration", "nightly"):
        assert text in out.stdout, text


def test_inspect_shows_bytes_results_in_json_as_base64(cli, mem):
    _, results = mem
    job = finished()
    job.result = b"\x00\xffdata"
    results.store([job])
    doc = json_of(cli("inspect", "job", job.id, "-f", "json"))
    assert doc["result"] == {"base64": "AP9kYXRh"}


# -- history recent -----------------------------------------------------------------
def test_history_json_is_newest_first_and_filtered(cli, mem):
    _, results = mem
    now = time.time()
    old, new, failed, other = (
        finished(at=now - 30),
        finished(at=now - 10),
        finished("boom", ok=False, at=now - 20),
        finished("mul", at=now - 5),
    )
    results.store([old, new, failed, other])
    doc = json_of(cli("history", "recent", "-f", "json"))
    assert [j["id"] for j in doc["jobs"]] == [other.id, new.id, failed.id, old.id]
    assert doc["count"] == 4
    assert doc["filters"] == {"limit": 20, "status": None, "task": None}
    doc = json_of(cli("history", "recent", "--status", "success", "--task", "add", "--limit", "1", "-f", "json"))
    assert [j["id"] for j in doc["jobs"]] == [new.id]
    assert doc["filters"] == {"limit": 1, "status": "SUCCESS", "task": "add"}
    doc = json_of(cli("history", "recent", "--status", "FAILED", "-f", "json"))
    assert [j["id"] for j in doc["jobs"]] == [failed.id]


def test_history_table_lists_jobs(cli, mem):
    _, results = mem
    jobs = [finished(), finished("boom", ok=False)]
    results.store(jobs)
    out = cli("history", "recent")
    assert out.exit_code == 0
    for job in jobs:
        assert job.id in out.stdout
    assert "RuntimeError: it broke" in out.stdout


def test_empty_history_is_a_note_not_an_error(cli, mem):
    out = cli("history", "recent")
    assert out.exit_code == 0 and out.stdout == ""
    assert "no finished jobs" in out.stderr
    assert json_of(cli("history", "recent", "-f", "json"))["jobs"] == []


# -- retry job ------------------------------------------------------------------------
def test_retry_json_queues_a_new_job_pointing_at_the_failed_one(cli, mem):
    queue, results = mem
    job = finished("boom", ok=False)
    results.store([job])
    doc = json_of(cli("retry", "job", job.id, "-f", "json"))
    assert doc["retried"] == job.id
    assert set(doc["job"]) == JOB_KEYS
    assert doc["job"]["retry_of"] == job.id and doc["job"]["status"] == "PENDING"
    assert queue.get(doc["job"]["id"]) is not None


def test_retry_table_prints_the_new_id(cli, mem):
    queue, results = mem
    job = finished("boom", ok=False)
    results.store([job])
    out = cli("retry", "job", job.id)
    assert out.exit_code == 0
    new_id = out.stdout.split()[1]
    assert queue.get(new_id).retry_of == job.id
    assert "memory queue is not shared" in out.stderr


# -- config ---------------------------------------------------------------------------
def test_config_json_names_every_setting_and_its_source(cli, tmp_path):
    (tmp_path / ".env").write_text("NUVOM_BATCH_SIZE=7\n", encoding="utf-8")
    doc = json_of(cli("config", "--format", "json", env={"NUVOM_MAX_WORKERS": "3"}))
    settings = doc["settings"]
    assert settings["NUVOM_MAX_WORKERS"]["value"] == 3
    assert settings["NUVOM_MAX_WORKERS"]["source"] == "environment"
    assert settings["NUVOM_BATCH_SIZE"] == {
        "value": 7,
        "source": ".env",
        "description": settings["NUVOM_BATCH_SIZE"]["description"],
    }
    assert settings["NUVOM_JOB_TIMEOUT_SECS"]["source"] == "default"
    assert {"NUVOM_QUEUE_BACKEND", "NUVOM_RESULT_BACKEND", "NUVOM_DATA_DIR", "NUVOM_LOG_LEVEL"} <= set(settings)
    assert set(doc["backends"]) == {"queue", "result"}
    assert set(doc["backends"]["queue"]) == {"name", "why", "installed"}
    assert isinstance(doc["plugins"], dict)


def test_config_explains_the_backend_choice(cli):
    doc = json_of(cli("config", "-f", "json", env={"NUVOM_QUEUE_BACKEND": "memory"}))
    assert doc["backends"]["queue"] == {"name": "memory", "why": "NUVOM_QUEUE_BACKEND", "installed": True}
    assert doc["backends"]["result"]["why"].startswith("default")


def test_config_table_shows_values_and_sources(cli, tmp_path):
    (tmp_path / ".env").write_text("NUVOM_BATCH_SIZE=7\n", encoding="utf-8")
    out = cli("config", env={"NUVOM_MAX_WORKERS": "3"})
    assert out.exit_code == 0
    rows = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1].startswith("NUVOM_"):
            rows[cells[1]] = cells[2:4]
    assert rows["NUVOM_MAX_WORKERS"] == ["3", "environment"]
    assert rows["NUVOM_BATCH_SIZE"] == ["7", ".env"]
    assert rows["NUVOM_LOG_LEVEL"] == ["INFO", "default"]
    assert "queue backend" in out.stdout


def test_config_shows_an_unknown_backend_as_not_installed(cli):
    doc = json_of(cli("config", "-f", "json", env={"NUVOM_QUEUE_BACKEND": "no-such-store"}))
    assert doc["backends"]["queue"]["installed"] is False


# -- runtestworker -------------------------------------------------------------------
def test_runtestworker_runs_a_job_and_exits_0(cli, project):
    (project / "job.json").write_text('{"func_name": "add", "task_path": "tasks:add", "args": [2, 3]}')
    doc = json_of(cli("runtestworker", "run", "--job-file", "job.json", "-f", "json"))
    assert (doc["status"], doc["result"], doc["attempts"]) == ("SUCCESS", 5, 1)
    out = cli("runtestworker", "run", "--job-file", "job.json")
    assert out.exit_code == 0 and "SUCCESS" in out.stdout and "result: 5" in out.stdout


def test_runtestworker_failure_exits_1_with_retries_and_traceback(cli, project):
    (project / "job.json").write_text(
        '{"func_name": "boom", "task_path": "tasks:boom", "kwargs": {"message": "nope"}, "max_retries": 1}'
    )
    out = cli("runtestworker", "run", "--job-file", "job.json", "-f", "json")
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert doc["status"] == "FAILED" and doc["attempts"] == 2
    assert doc["error"]["type"] == "RuntimeError" and doc["error"]["message"] == "nope"
    out = cli("runtestworker", "run", "--job-file", "job.json", "--no-retries")
    assert out.exit_code == 1
    assert "Traceback" in out.stdout and "RuntimeError: nope" in out.stdout


def test_runtestworker_accepts_the_inspect_document(cli, mem, project):
    _, results = mem
    job = finished("boom", ok=False)
    results.store([job])
    (project / "failed.json").write_text(cli("inspect", "job", job.id, "-f", "json").stdout)
    out = cli("runtestworker", "run", "--job-file", "failed.json", "--no-retries", "-f", "json")
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert doc["attempts"] == 1 and doc["error"]["message"] == "boom"


# -- help and version ----------------------------------------------------------------
COMMANDS = [
    ["runworker"],
    ["runtestworker", "run"],
    ["status"],
    ["inspect", "job"],
    ["history", "recent"],
    ["retry", "job"],
    ["cancel", "job"],
    ["queues"],
    ["list", "tasks"],
    ["discover", "tasks"],
    ["config"],
    ["plugin", "status"],
    ["plugin", "test"],
    ["plugin", "scaffold"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(cli, command):
    out = cli(*command, "--help")
    assert out.exit_code == 0, out.stderr
    assert "Example" in out.stdout
    assert "nuvom " + " ".join(command) in " ".join(out.stdout.split())


@pytest.mark.parametrize(
    "command",
    [c for c in COMMANDS if c not in (["plugin", "test"], ["plugin", "scaffold"], ["runworker"])],
    ids=" ".join,
)
def test_every_data_command_takes_format(cli, command):
    out = cli(*command, "--help")
    assert "--format" in out.stdout


def test_version_lists_the_nuvom_packages(cli):
    out = cli("--version")
    assert out.exit_code == 0
    assert "nuvom-cli" in out.stdout and "nuvom-core" in out.stdout
