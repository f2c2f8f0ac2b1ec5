"""A task module that fails at import (issue 27, item 2): the tasks it registered
before failing never run; their jobs fail with an error naming the module and
the exception, logged once at ERROR, and the worker serves every other task."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from nuvom.errors import TaskImportError, TaskNotFound
from nuvom.job import Job, JobStatus
from nuvom.registry import TaskRegistry
from nuvom.testing import isolated_app
from nuvom.worker import Worker

# Defines a task, then exits as a module guarding a missing setting does. Every
# execution of the module appends a line to RUNS, so a test counts how often
# its code ran; with API_KEY set it imports cleanly.
MAILER = """
import os
import sys

from nuvom.task import task

with open(os.environ.get("MAILER_RUNS", {runs!r}), "a") as f:
    f.write("import\\n")


@task(name={name!r})
def send(to):
    return f"sent to {{to}}"


if not os.environ.get("API_KEY"):
    sys.exit("API_KEY not set")
"""

HEALTHY = """
from nuvom.task import task


@task(name={name!r})
def double(n):
    return n * 2
"""


def write_module(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def import_lines(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_jobs_of_a_module_that_exits_at_import_fail_once_logged_and_the_worker_serves_the_rest(
    on_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = on_path / "runs.txt"
    write_module(on_path, "mailer_inproc", MAILER.format(runs=str(runs), name="send_inproc"))
    write_module(on_path, "healthy_inproc", HEALTHY.format(name="double_inproc"))
    with isolated_app() as app, caplog.at_level(logging.INFO, logger="nuvom"):
        send = [Job(func_name="send_inproc", task_path="mailer_inproc:send", args=["a"]) for _ in range(3)]
        double = [Job(func_name="double_inproc", task_path="healthy_inproc:double", args=[n]) for n in range(5)]
        with Worker(max_workers=2, app=app):
            app.queue.enqueue_many([*send, *double])
            records = {j.id: app.results.wait(j.id, timeout=20) for j in (*send, *double)}
    for job in send:
        record = records[job.id]
        assert record is not None and record.status is JobStatus.FAILED, record
        assert record.error is not None and record.error.type == "TaskImportError"
        assert "'mailer_inproc'" in record.error.message
        assert "SystemExit('API_KEY not set')" in record.error.message
    assert [records[j.id].result for j in double] == [0, 2, 4, 6, 8]  # type: ignore[union-attr]
    assert import_lines(runs) == 1  # the module's code ran once, not once per job
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "nuvom.registry"]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "mailer_inproc" in errors[0].getMessage() and "SystemExit('API_KEY not set')" in errors[0].getMessage()
    # Any other ERROR line is the runner's, one per job failed (no second report of the import).
    others = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name != "nuvom.registry"]
    assert all("failed without running" in m and any(j.id in m for j in send) for m in others), others


def test_a_module_that_fails_at_import_leaves_no_task_behind(on_path: Path) -> None:
    runs = on_path / "runs.txt"
    write_module(on_path, "mailer_unit", MAILER.format(runs=str(runs), name="send_unit"))
    write_module(on_path, "clean_dep_unit", HEALTHY.format(name="clean_unit"))
    write_module(on_path, "user_unit", "import clean_dep_unit\nimport mailer_unit\n")
    registry = TaskRegistry()
    with isolated_app() as app:
        app.registry = registry  # the modules' @task registers here
        with pytest.raises(TaskImportError, match=r"'user_unit' raised SystemExit\('API_KEY not set'\)"):
            registry.import_module("user_unit")
        assert "send_unit" not in registry  # registered half-way through, then dropped
        # A module imported cleanly on the way keeps its task.
        assert registry.resolve("clean_unit", None)(4) == 8
        with pytest.raises(TaskImportError, match="'mailer_unit' raised SystemExit") as info:
            registry.resolve("send_unit", "mailer_unit:send")
        assert isinstance(info.value, TaskNotFound) and info.value.module == "mailer_unit"
        with pytest.raises(TaskImportError):
            registry.import_module("user_unit")  # remembered: not run again
    assert import_lines(runs) == 1


def test_a_thread_that_needs_a_module_being_imported_waits_for_its_outcome(on_path: Path) -> None:
    runs = on_path / "runs.txt"
    gate = on_path / "gate_wait.py"
    gate.write_text("import threading\nentered = threading.Event()\nrelease = threading.Event()\n")
    write_module(
        on_path,
        "mailer_wait",
        "import gate_wait\n"
        + MAILER.format(runs=str(runs), name="send_wait").replace(
            "if not os.environ", "gate_wait.entered.set()\ngate_wait.release.wait(10)\nif not os.environ"
        ),
    )
    import gate_wait  # type: ignore[import-not-found]

    registry = TaskRegistry()
    outcomes: list[BaseException | str] = []

    def resolve() -> None:
        try:
            outcomes.append(repr(registry.resolve("send_wait", "mailer_wait:send")))
        except BaseException as exc:
            outcomes.append(exc)

    with isolated_app() as app:
        app.registry = registry
        first = threading.Thread(target=resolve)
        first.start()
        assert gate_wait.entered.wait(10)
        # The task is registered by now, half-way through the import: not visible.
        assert registry.get("send_wait") is None
        second = threading.Thread(target=resolve)
        second.start()
        gate_wait.release.set()
        first.join(10)
        second.join(10)
    assert len(outcomes) == 2 and all(isinstance(o, TaskImportError) for o in outcomes), outcomes
    assert import_lines(runs) == 1


def test_a_fixed_module_imports_again_once_its_task_is_unregistered(
    on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = on_path / "runs.txt"
    write_module(on_path, "mailer_fixed", MAILER.format(runs=str(runs), name="send_fixed"))
    registry = TaskRegistry()
    with isolated_app() as app:
        app.registry = registry
        with pytest.raises(TaskImportError):
            registry.resolve("send_fixed", "mailer_fixed:send")
        monkeypatch.setenv("API_KEY", "k")
        with pytest.raises(TaskImportError):
            registry.resolve("send_fixed", "mailer_fixed:send")  # still the remembered failure
        registry.unregister("send_fixed")  # what the dev watcher does when the file changed
        assert registry.resolve("send_fixed", "mailer_fixed:send")("b") == "sent to b"
    assert import_lines(runs) == 2


def test_a_module_that_does_not_exist_is_not_remembered(on_path: Path) -> None:
    registry = TaskRegistry()
    with pytest.raises(TaskNotFound, match="'not_there_yet' was not found") as info:
        registry.resolve("later", "not_there_yet:later")
    assert not isinstance(info.value, TaskImportError)
    write_module(on_path, "not_there_yet", HEALTHY.format(name="later").replace("double", "later"))
    with isolated_app() as app:
        app.registry = registry
        assert registry.resolve("later", "not_there_yet:later")(3) == 6  # deployed since: found


def test_the_app_imports_declared_modules_and_serves_the_healthy_ones(
    on_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = on_path / "runs.txt"
    write_module(on_path, "mailer_app", MAILER.format(runs=str(runs), name="send_app"))
    write_module(on_path, "healthy_app", HEALTHY.format(name="double_app"))
    with isolated_app(task_modules="mailer_app") as app, caplog.at_level(logging.ERROR, logger="nuvom"):
        app.registry = TaskRegistry()
        assert app.import_task_modules(["healthy_app"]) == ["mailer_app"]
        assert "double_app" in app.registry and "send_app" not in app.registry
        with pytest.raises(TaskNotFound, match="'nowhere_app' was not found"):
            app.import_task_modules(["nowhere_app"])
    assert [r.name for r in caplog.records] == ["nuvom.registry"]


# -- real worker processes: `python -m nuvom.worker` on the file and SQLite stores ------
def _store_env(tmp_path: Path, store: str) -> dict[str, str]:
    if store == "sqlite":
        pytest.importorskip("nuvom.sqlite", reason="nuvom-sqlite is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_") and k != "API_KEY"}
    env.update(
        NUVOM_DATA_DIR=str(tmp_path / "data"),
        NUVOM_QUEUE_BACKEND=store,
        NUVOM_RESULT_BACKEND=store,
        MAILER_RUNS=str(tmp_path / "runs.txt"),
    )
    return env


PRODUCE = """
import json
from nuvom.job import Job
from nuvom.backends import get_queue_backend, get_result_backend
send = [Job(func_name="send", task_path="mailer:send", args=["x"]) for _ in range(3)]
double = [Job(func_name="double", task_path="tasks:double", args=[21])]
get_queue_backend().enqueue_many([*send, *double])
records = [get_result_backend().wait(j.id, timeout=60) for j in (*send, *double)]
print(json.dumps([[j.id, r.status.value, r.result, r.error and r.error.type, r.error and r.error.message]
                  for j, r in zip((*send, *double), records)]))
"""


@pytest.mark.parametrize("store", ["file", "sqlite"])
@pytest.mark.parametrize("named", [["tasks"], ["mailer", "tasks"]], ids=["by-path", "named-on-the-command-line"])
def test_python_m_nuvom_worker_fails_the_jobs_of_a_module_that_exits_at_import(
    tmp_path: Path, store: str, named: list[str]
) -> None:
    import json

    env = _store_env(tmp_path, store)
    write_module(tmp_path, "mailer", MAILER.format(runs="unused", name="send"))
    write_module(tmp_path, "tasks", HEALTHY.format(name="double"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", *named, "--threads", "2"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        produced = subprocess.run(
            [sys.executable, "-c", PRODUCE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
        )
        assert produced.returncode == 0, produced.stderr
        rows = json.loads(produced.stdout)
    finally:
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    for _id, status, _result, error_type, message in rows[:3]:
        assert (status, error_type) == ("FAILED", "TaskImportError")
        assert "'mailer'" in message and "SystemExit('API_KEY not set')" in message
    assert rows[3][1:3] == ["SUCCESS", 42]
    assert import_lines(tmp_path / "runs.txt") == 1
    errors = [line for line in err.splitlines() if " ERROR " in line]
    import_errors = [line for line in errors if "failed to import" in line]
    assert len(import_errors) == 1 and "'mailer'" in import_errors[0], err
    # The other ERROR lines are the runner's, one per failed job.
    assert all("failed without running" in line for line in errors if line not in import_errors), err
