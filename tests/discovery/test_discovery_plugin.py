"""The worker side: the plugin registers the manifest's tasks, a real worker runs them."""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points

import pytest
from nuvom.app import App
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.config import load_settings
from nuvom.discovery import DiscoveryPlugin, discover_tasks
from nuvom.errors import TaskNotFound
from nuvom.job import Job, JobStatus
from nuvom.registry import LazyTask, TaskRegistry
from nuvom.worker import Worker


def start_plugin(project, registry, **extras):
    plugin = DiscoveryPlugin()
    plugin.start(load_settings(), {"registry": registry, **extras})
    return plugin


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project.root)
    return project


def test_plugin_is_registered_as_an_entry_point():
    (ep,) = [ep for ep in entry_points(group="nuvom") if ep.name == "discovery"]
    cls = ep.load()
    assert cls is DiscoveryPlugin
    assert cls.name == "discovery" and cls.provides == ["tasks"]


def test_manifest_tasks_are_registered_lazily(in_project):
    project = in_project
    project.package()
    project.task_module("{pkg}/jobs.py", "@task(retries=2)\ndef double(x):\n    return 2 * x\n")
    discover_tasks(project.root)
    registry = TaskRegistry()
    plugin = start_plugin(project, registry)
    entry = registry.entries()["double"]
    assert isinstance(entry, LazyTask)
    assert entry.path == f"{project.pkg}.jobs:double"
    assert entry.file == str(project.root / project.pkg / "jobs.py")
    assert entry.metadata is not None and entry.metadata["retries"] == 2
    assert f"{project.pkg}.jobs" not in sys.modules  # nothing imported at start-up
    assert registry.get("double")(21) == 42
    assert plugin.registered == 1


def test_without_a_manifest_nothing_is_registered_and_a_hint_is_logged(in_project, caplog):
    registry = TaskRegistry()
    with caplog.at_level(logging.INFO, logger="nuvom.discovery"):
        start_plugin(in_project, registry)
    assert registry.names() == []
    assert "nuvom discover tasks" in caplog.text


def test_damaged_manifest_is_logged_not_raised(in_project, caplog):
    in_project.manifest.parent.mkdir()
    in_project.manifest.write_text("{")
    registry = TaskRegistry()
    with caplog.at_level(logging.WARNING, logger="nuvom.discovery"):
        start_plugin(in_project, registry)
    assert registry.names() == []
    assert "not valid JSON" in caplog.text


def test_module_not_importable_by_name_is_loaded_from_its_file(in_project):
    project = in_project
    # "my-scripts" is no valid package name: only the file path can load it.
    project.task_module("my-scripts/{pkg}_job.py", "@task\ndef hyphen_job():\n    return 'ok'\n")
    discover_tasks(project.root)
    registry = TaskRegistry()
    start_plugin(project, registry)
    try:
        assert registry.get("hyphen_job")() == "ok"
    finally:
        sys.modules.pop(f"my-scripts.{project.pkg}_job", None)


def test_failing_import_names_the_task_when_it_is_needed(in_project):
    project = in_project
    project.package()
    project.task_module("{pkg}/broken.py", "import no_such_module_here\n\n@task\ndef fragile(): ...\n")
    discover_tasks(project.root)
    registry = TaskRegistry()
    start_plugin(project, registry)  # start-up is fine: nothing imported yet
    assert "fragile" in registry
    with pytest.raises(TaskNotFound, match="fragile"):
        registry.get("fragile")


def test_an_already_imported_task_wins_over_the_manifest(in_project):
    from nuvom.task import task

    project = in_project
    project.task_module("{pkg}_mod.py", "@task\ndef clash(): ...\n")
    discover_tasks(project.root)

    @task(name="clash")
    def local():
        return "local"

    registry = TaskRegistry()
    registry.register(local)
    start_plugin(project, registry)
    assert registry.get("clash") is local


def test_first_definition_of_a_duplicate_name_is_registered(in_project, caplog):
    project = in_project
    project.task_module("{pkg}_a.py", "@task(name='dup_name')\ndef one():\n    return 1\n")
    project.task_module("{pkg}_b.py", "@task(name='dup_name')\ndef two():\n    return 2\n")
    discover_tasks(project.root)
    registry = TaskRegistry()
    with caplog.at_level(logging.WARNING, logger="nuvom.discovery"):
        start_plugin(project, registry)
    assert registry.entries()["dup_name"].qualname == "one"
    assert "defined 2 times" in caplog.text


def test_worker_runs_a_job_of_a_task_registered_from_the_manifest(in_project):
    project = in_project
    project.package()
    project.task_module(
        "{pkg}/billing.py",
        """
        @task(retries=1)
        def invoice(customer, amount):
            return f"{customer}: {amount * 2}"
        """,
    )
    discover_tasks(project.root)
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    # No task_path: only the registry (filled from the manifest) can tell where the task is.
    job = Job(func_name="invoice", args=["acme", 21])
    worker = Worker(
        max_workers=2,
        queue=queue,
        results=results,
        app=App(project_dir=project.root),
    )
    with worker:
        assert isinstance(worker.registry.entries()["invoice"], LazyTask)
        queue.enqueue(job)
        record = results.wait(job.id, timeout=10)
    assert record is not None
    assert record.status is JobStatus.SUCCESS, record.error
    assert record.result == "acme: 42"
