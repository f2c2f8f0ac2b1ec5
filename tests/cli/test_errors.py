"""Errors are one line on stderr and a documented non-zero exit code, never a traceback."""

from __future__ import annotations

import pytest


def assert_one_line_error(outcome, code: int, *fragments: str) -> None:
    assert outcome.exception is None, outcome.exception
    assert outcome.exit_code == code, (outcome.exit_code, outcome.stdout, outcome.stderr)
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert outcome.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_job_id_is_exit_3(cli, mem):
    assert_one_line_error(cli("status", "0123456789abcdef"), 3, "no job with id '0123456789abcdef'")


def test_unknown_job_id_for_inspect_and_retry(cli, mem):
    assert_one_line_error(cli("inspect", "job", "nosuchjob"), 3, "nosuchjob")
    assert_one_line_error(cli("retry", "job", "nosuchjob"), 3, "nosuchjob")


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "a/b", "x" * 65, "id with spaces"])
def test_path_like_or_malformed_job_id_is_exit_4(cli, mem, bad_id):
    assert_one_line_error(cli("status", bad_id), 4, "is not a valid job id")


def test_malformed_id_is_refused_before_any_backend_is_opened(cli):
    # The backend does not exist: the id is checked first, so that is not what is reported.
    out = cli("inspect", "job", "../secret", env={"NUVOM_RESULT_BACKEND": "nope"})
    assert_one_line_error(out, 4, "'../secret' is not a valid job id")


def test_unknown_backend_is_exit_6(cli):
    out = cli("status", "abc", env={"NUVOM_QUEUE_BACKEND": "no-such-store"})
    assert_one_line_error(out, 6, "unknown queue backend 'no-such-store'", "NUVOM_QUEUE_BACKEND")


def test_unknown_result_backend_is_exit_6(cli):
    out = cli("history", "recent", env={"NUVOM_RESULT_BACKEND": "cassandra"})
    assert_one_line_error(out, 6, "unknown result backend 'cassandra'")


def test_bad_env_file_value_names_the_variable(cli, tmp_path):
    (tmp_path / ".env").write_text("NUVOM_MAX_WORKERS=lots\n", encoding="utf-8")
    assert_one_line_error(cli("config"), 5, "NUVOM_MAX_WORKERS='lots'")


def test_bad_environment_value_fails_every_command_that_reads_settings(cli):
    env = {"NUVOM_TIMEOUT_POLICY": "explode"}
    for args in (["config"], ["status", "abc"], ["history", "recent"]):
        assert_one_line_error(cli(*args, env=env), 5, "NUVOM_TIMEOUT_POLICY")


def test_malformed_plugins_file_reports_the_line(cli, tmp_path):
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["a:B"\nx = 1\n', encoding="utf-8")
    out = cli("plugin", "status")
    assert_one_line_error(out, 7, ".nuvom_plugins.toml", "line 3")


def test_malformed_plugins_file_does_not_stop_commands_that_load_no_plugin(cli, tmp_path):
    # Backends are found through entry points: reading jobs loads no plugin, so
    # a broken plugins file is reported by the commands that load plugins only.
    (tmp_path / ".nuvom_plugins.toml").write_text("[plugins\n", encoding="utf-8")
    assert cli("history", "recent").exit_code == 0
    assert_one_line_error(cli("plugin", "status"), 7, "line 1")


def test_debug_shows_the_traceback(cli, mem):
    out = cli("--debug", "status", "nosuchjob")
    assert out.exit_code == 3
    assert "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: no job with id")


def test_unexpected_exception_is_exit_70_with_a_hint(cli, mem, monkeypatch):
    import nuvom.sdk

    def broken(job_id):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(nuvom.sdk, "get_job", broken)
    out = cli("status", "abc")
    assert_one_line_error(out, 70, "unexpected RuntimeError: disk on fire", "--debug")


def test_history_rejects_a_status_it_cannot_hold(cli, mem):
    assert_one_line_error(cli("history", "recent", "--status", "PENDING"), 2, "SUCCESS or FAILED")


def test_retry_of_a_successful_job_is_exit_4(cli, mem):
    from nuvom.job import Job, JobStatus

    _, results = mem
    job = Job(func_name="add", status=JobStatus.SUCCESS, result=3, finished_at=1.0)
    results.store([job])
    assert_one_line_error(cli("retry", "job", job.id), 4, "only failed jobs are retried")


def test_unreadable_job_file_is_exit_4(cli, tmp_path):
    (tmp_path / "job.json").write_text('{"func_name": "add", "args": [1,\n', encoding="utf-8")
    assert_one_line_error(cli("runtestworker", "run", "--job-file", "job.json"), 4, "not valid JSON", "line 2")
    assert_one_line_error(cli("runtestworker", "run", "--job-file", "missing.json"), 4, "cannot be read")
    (tmp_path / "nofunc.json").write_text('{"args": []}', encoding="utf-8")
    assert_one_line_error(cli("runtestworker", "run", "--job-file", "nofunc.json"), 4, "func_name")


def test_scaffold_refuses_a_bad_name_and_a_non_empty_directory(cli, tmp_path):
    assert_one_line_error(cli("plugin", "scaffold", "9lives"), 2, "not a usable plugin name")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    assert_one_line_error(cli("plugin", "scaffold", "hello", "--dir", "taken"), 2, "not empty")


def test_unknown_command_is_a_usage_error(cli):
    out = cli("frobnicate")
    assert out.exit_code == 2
    assert "Traceback" not in out.stderr
