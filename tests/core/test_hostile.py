"""What a job row or a config value can make nuvom do (issue: hostile inputs)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from nuvom.app import App
from nuvom.config import Settings, load_settings
from nuvom.errors import ConfigError
from nuvom.job import Job, JobStatus
from nuvom.worker import Worker


def run_row(app: App, job: Job) -> Job:
    """Put a job row in the store as whoever can write it would, and let a worker have it."""
    app.queue.enqueue(job)
    with Worker(app=app, max_workers=1):
        record = app.results.wait(job.id, timeout=10)
    assert record is not None
    return record


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(Settings(queue_backend="memory", result_backend="memory"), project_dir=tmp_path)


@pytest.mark.parametrize("path", ["this:x", "venv.__main__:main", "antigravity:fly"])
def test_a_job_row_cannot_make_the_worker_import_a_module_outside_the_project(app, path, capfd) -> None:
    module = path.partition(":")[0]
    was_loaded = module in sys.modules
    record = run_row(app, Job(func_name="innocent", task_path=path))
    assert record.status is JobStatus.FAILED
    assert record.error is not None and "refusing to import" in record.error.message
    assert "NUVOM_TASK_MODULES" in record.error.message
    assert (module in sys.modules) == was_loaded  # nothing was imported
    assert "Beautiful is better than ugly" not in capfd.readouterr().out


def test_a_task_module_in_the_project_folder_is_imported(app, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "proj_tasks_a.py").write_text(
        "from nuvom.task import task\n\n@task(name='proj_a')\ndef proj_a():\n    return 'ran'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    record = run_row(app, Job(func_name="proj_a", task_path="proj_tasks_a:proj_a"))
    assert record.status is JobStatus.SUCCESS and record.result == "ran"


def test_a_module_outside_the_project_runs_when_declared(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "declared_tasks_b.py").write_text(
        "from nuvom.task import task\n\n@task(name='decl_b')\ndef decl_b():\n    return 'declared'\n"
    )
    monkeypatch.syspath_prepend(str(elsewhere))
    project = tmp_path / "project"
    project.mkdir()
    refused = App(Settings(queue_backend="memory", result_backend="memory"), project_dir=project)
    assert run_row(refused, Job(func_name="decl_b", task_path="declared_tasks_b:decl_b")).status is JobStatus.FAILED
    assert "declared_tasks_b" not in sys.modules
    allowed = App(
        Settings(queue_backend="memory", result_backend="memory", task_modules="declared_tasks_b"),
        project_dir=project,
    )
    assert run_row(allowed, Job(func_name="decl_b", task_path="declared_tasks_b:decl_b")).result == "declared"


def test_a_virtualenv_inside_the_project_is_not_the_project(tmp_path: Path, monkeypatch) -> None:
    site = tmp_path / ".venv" / "lib" / "python3" / "site-packages"
    site.mkdir(parents=True)
    (site / "vendored_mod_c.py").write_text("print('side effect')\nx = 1\n")
    monkeypatch.syspath_prepend(str(site))
    app = App(Settings(queue_backend="memory", result_backend="memory"), project_dir=tmp_path)
    record = run_row(app, Job(func_name="c", task_path="vendored_mod_c:x"))
    assert record.status is JobStatus.FAILED and "vendored_mod_c" not in sys.modules


@pytest.mark.parametrize("var", ["NUVOM_SHUTDOWN_GRACE_SECS", "NUVOM_LEASE_SECS", "NUVOM_JOB_TIMEOUT_SECS"])
@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "-inf"])
def test_durations_are_finite_and_bounded(monkeypatch, var, value) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings()


def test_task_durations_are_finite_and_bounded() -> None:
    app = App(Settings(queue_backend="memory", result_backend="memory"))
    for options in ({"timeout_secs": float("inf")}, {"retry_delay_secs": 1e300}, {"timeout_secs": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(options))):
            app.task(lambda: None, **options)


def test_the_worker_entry_point_reports_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    import subprocess

    env = {**os.environ, "NUVOM_LEASE_SECS": "inf", "NUVOM_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "nuvom.worker"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 5
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NUVOM_LEASE_SECS" in lines[0] and "Traceback" not in proc.stderr


def test_python_m_nuvom_worker_runs_jobs_and_logs_start_and_stop(tmp_path: Path) -> None:
    import signal
    import subprocess

    (tmp_path / "mtasks.py").write_text(
        textwrap.dedent(
            """
            from nuvom.task import task

            @task
            def mul(x, y):
                return x * y
            """
        )
    )
    env = {**os.environ, "NUVOM_DATA_DIR": str(tmp_path / "data"), "NUVOM_QUEUE_BACKEND": "file"}
    env["NUVOM_RESULT_BACKEND"] = "file"
    worker = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", "mtasks"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        producer = subprocess.run(
            [sys.executable, "-c", "from mtasks import mul; print(mul.delay(6, 7).get(timeout=30))"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert producer.stdout.strip() == "42", producer.stderr
    finally:
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert "started" in err and f"store file {tmp_path / 'data'}" in err and "mul" in err and "queues: default" in err
    assert "stopped" in err


def test_a_dotenv_that_is_not_utf8_is_one_config_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"NUVOM_LOG_LEVEL=INFO\nNUVOM_DATA_DIR=caf\xe9\n")
    with pytest.raises(ConfigError, match=r"\.env: byte 0xe9 at line 2, column 19 is not UTF-8 text"):
        load_settings()
