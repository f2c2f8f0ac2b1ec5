"""Bad input, as a user would produce it: each gets one clear line, a
non-zero exit where a command is involved, and never loses stored jobs."""

from __future__ import annotations

import json

import pytest

TASKS = """
    from nuvom.task import task

    @task
    def echo(value):
        return value
"""


@pytest.fixture
def p(make_project):
    project = make_project("sqlite")
    project.write("tasks.py", TASKS)
    return project


def _one_clean_error_line(proc, *fragments):
    assert proc.returncode != 0
    assert proc.stdout == "" or proc.stdout.strip() == "", proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unserializable_argument_is_refused_at_delay(p):
    proc = p.python("from tasks import echo\necho.delay({1, 2})", check=False)
    assert "SerializationError: task 'echo': positional argument 0 (set)" in proc.stderr
    assert p.python("from nuvom.sdk import queue_size\nprint(queue_size())").stdout.strip() == "0"


def test_huge_argument_is_refused_with_the_limit_named(p):
    p.env["NUVOM_MAX_PAYLOAD_BYTES"] = "100000"
    proc = p.python("from tasks import echo\necho.delay('x' * 200000)", check=False)
    assert "over the limit of 100000 (NUVOM_MAX_PAYLOAD_BYTES)" in proc.stderr


def test_unknown_task_name_in_a_stored_job_fails_that_job_only(p, wait_for):
    ids = json.loads(
        p.python("""
        import json
        from nuvom.backends import get_queue_backend
        from nuvom.job import Job
        from tasks import echo
        ghost = Job(func_name="renamed_long_ago")
        get_queue_backend().enqueue(ghost)
        print(json.dumps([ghost.id, echo.delay("still runs").id]))
    """).stdout
    )
    p.start_worker("--workers", "1")
    wait_for(lambda: p.nuvom_json("status", ids[1])["status"] == "SUCCESS", what="the good job")
    ghost = p.nuvom_json("inspect", "job", ids[0])
    assert ghost["status"] == "FAILED" and "no task named 'renamed_long_ago'" in ghost["error"]["message"]


def test_malformed_env_value_stops_the_worker_with_one_line(p):
    p.write(".env", "NUVOM_MAX_WORKERS=abc\n")
    _one_clean_error_line(p.nuvom("runworker", check=False), "NUVOM_MAX_WORKERS='abc'")


def test_malformed_plugins_file_names_the_line(p):
    p.write(".nuvom_plugins.toml", '[plugins]\nqueue_backend = ["a:B"\n')
    _one_clean_error_line(p.nuvom("plugin", "status", check=False), ".nuvom_plugins.toml", "line")


def test_plugin_that_raises_in_start_does_not_stop_the_worker(p, wait_for):
    p.write(
        "badplugin.py",
        """
        from nuvom.plugins.contracts import Plugin

        class Broken(Plugin):
            name = "broken"
            provides = ["hooks"]
            def start(self, settings, extras=None):
                raise RuntimeError("broken on purpose")
    """,
    )
    p.write(".nuvom_plugins.toml", '[plugins]\nhooks = ["badplugin:Broken"]\n')
    job_id = p.python("from tasks import echo\nprint(echo.delay(5).id)").stdout.strip()
    worker = p.start_worker("--workers", "1")
    wait_for(lambda: p.nuvom_json("status", job_id)["status"] == "SUCCESS", what="the job to run anyway")
    code, out = p.stop_worker(worker)
    assert code == 0 and "broken on purpose" in out


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "a/b", "x" * 80])
def test_job_id_that_is_a_path_is_refused_before_any_read(p, bad_id):
    for command in (("status", bad_id), ("inspect", "job", bad_id), ("retry", "job", bad_id)):
        _one_clean_error_line(p.nuvom(*command, check=False), "not a valid job id")


def test_unknown_job_id_is_no_such_job(p):
    proc = p.nuvom("status", "0" * 32, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", ["{not json", '{"args": [1]}', '["echo"]', '{"func_name": "echo", "args": 5}'])
def test_invalid_job_file_for_runtestworker(p, content):
    p.write("job.json", content)
    _one_clean_error_line(p.nuvom("runtestworker", "run", "--job-file", "job.json", check=False), "job.json")


def test_valid_job_file_runs_and_sets_the_exit_code(p):
    p.write("job.json", '{"func_name": "echo", "args": ["hi"]}')
    ok = p.nuvom("runtestworker", "run", "--job-file", "job.json", "--format", "json", check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout)["result"] == "hi"
    p.write("job.json", '{"func_name": "no_such_task"}')
    assert p.nuvom("runtestworker", "run", "--job-file", "job.json", check=False).returncode == 1
