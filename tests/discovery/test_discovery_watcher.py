"""Dev mode: a polling watcher keeps a running worker's registry in step with the source."""

from __future__ import annotations

import logging
import os
import time

import pytest
from nuvom.app import App
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.config import load_settings
from nuvom.discovery import DevWatcher, DiscoveryPlugin
from nuvom.errors import TaskNotFound
from nuvom.job import Job, JobStatus
from nuvom.registry import TaskRegistry
from nuvom.worker import Worker

DEADLINE = 10.0


def eventually(check, what: str):
    """Poll ``check`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE} s: {what}")
        time.sleep(0.02)


def result_of(registry: TaskRegistry, name: str, *args):
    task = registry.get(name)
    return None if task is None else task(*args)


@pytest.fixture
def dev_project(project, monkeypatch):
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("NUVOM_DISCOVERY_POLL_SECS", "0.05")
    project.package()
    project.task_module("{pkg}/greet.py", "@task\ndef hello(who):\n    return f'hello {who}'\n")
    return project


def start_dev(project, registry):
    plugin = DiscoveryPlugin()
    plugin.start(load_settings(), {"registry": registry, "dev": True})
    return plugin


def test_worker_in_dev_mode_runs_the_edited_code(dev_project):
    project = dev_project
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    worker = Worker(max_workers=1, queue=queue, results=results, app=App(project_dir=project.root), dev=True)

    def run(*args):
        job = Job(func_name="hello", args=list(args))
        queue.enqueue(job)
        record = results.wait(job.id, timeout=DEADLINE)
        assert record is not None and record.status is JobStatus.SUCCESS, record and record.error
        return record.result

    with worker:
        assert run("ann") == "hello ann"  # the module is now imported
        project.task_module("{pkg}/greet.py", "@task\ndef hello(who):\n    return f'HI {who}'\n")
        eventually(lambda: result_of(worker.registry, "hello", "bob") == "HI bob", "the edit is picked up")
        assert run("bob") == "HI bob"


def test_dev_mode_scans_at_start_without_a_manifest(dev_project):
    registry = TaskRegistry()
    plugin = start_dev(dev_project, registry)
    try:
        assert registry.names() == ["hello"]
        assert dev_project.manifest.is_file()
    finally:
        plugin.stop()


def test_new_task_file_is_registered(dev_project):
    project = dev_project
    registry = TaskRegistry()
    plugin = start_dev(project, registry)
    try:
        project.task_module("{pkg}/more.py", "@task\ndef later():\n    return 'late'\n")
        eventually(lambda: "later" in registry, "the new task is registered")
        assert result_of(registry, "later") == "late"
    finally:
        plugin.stop()


def test_removed_task_is_unregistered(dev_project):
    project = dev_project
    registry = TaskRegistry()
    plugin = start_dev(project, registry)
    try:
        assert result_of(registry, "hello", "x") == "hello x"
        project.write("{pkg}/greet.py", "def hello(who):\n    return 'no longer a task'\n")
        eventually(lambda: "hello" not in registry, "the task is unregistered")
    finally:
        plugin.stop()


def test_broken_edit_fails_the_task_by_name_until_fixed(dev_project, caplog):
    project = dev_project
    registry = TaskRegistry()
    plugin = start_dev(project, registry)
    try:
        assert result_of(registry, "hello", "x") == "hello x"
        with caplog.at_level(logging.ERROR, logger="nuvom.discovery"):
            project.task_module(
                "{pkg}/greet.py", "@task\ndef hello(who):\n    return undefined_name_in_module\nboom()\n"
            )
            eventually(lambda: "reloading" in caplog.text, "the failed reload is logged")

        def fails_by_name():
            try:
                registry.get("hello")
            except TaskNotFound as exc:
                return "hello" in str(exc)
            return False

        assert fails_by_name()
        project.task_module("{pkg}/greet.py", "@task\ndef hello(who):\n    return f'fixed {who}'\n")
        eventually(lambda: result_of(registry, "hello", "x") == "fixed x", "the fixed code runs")
    finally:
        plugin.stop()


def test_idle_watcher_does_not_rescan(dev_project):
    project = dev_project
    project.manifest.parent.mkdir()
    past = time.time() - 60
    for folder, _, files in os.walk(project.root):
        for name in files:
            os.utime(os.path.join(folder, name), (past, past))
        os.utime(folder, (past, past))
    watcher = DevWatcher(project.root, TaskRegistry(), project.manifest, interval=60)
    watcher.sync()
    assert watcher.poll() is None and watcher.poll() is None
    assert watcher.scans == 1


def test_stop_ends_the_watcher_thread(dev_project):
    plugin = start_dev(dev_project, TaskRegistry())
    watcher = plugin.watcher
    assert watcher is not None and watcher._thread is not None and watcher._thread.is_alive()
    thread = watcher._thread
    plugin.stop()
    assert not thread.is_alive() and plugin.watcher is None
