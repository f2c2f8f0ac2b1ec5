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
