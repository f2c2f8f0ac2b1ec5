from __future__ import annotations

import sys
import textwrap

import pytest
from nuvom.app import App
from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.errors import BackendError, PluginError
from nuvom.plugins._loader import read_plugins_file
from nuvom.worker import Worker


def PluginManager(project_dir=None):
    return App(project_dir=project_dir).plugins


def write_plugin_module(directory, name="thirdparty_plugin", body=""):
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


GOOD = """
    from nuvom.plugins.contracts import Plugin
    from nuvom.plugins.registry import register_queue_backend, register_result_backend
    from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend

    EVENTS = []

    class OtherQueue(MemoryJobQueue):
        pass

    class OtherResults(MemoryResultBackend):
        pass

    class GoodPlugin(Plugin):
        name = "good"
        provides = ["queue_backend", "result_backend"]
        def start(self, settings, extras=None):
            EVENTS.append(("start", sorted(extras or {})))
            register_queue_backend("other", OtherQueue)
            register_result_backend("other", OtherResults)
        def stop(self):
            EVENTS.append(("stop", None))

    class OldVersion(Plugin):
        api_version = "0.9"
        name = "old"

    class Exploding(Plugin):
        name = "exploding"
        provides = ["hooks"]
        def start(self, settings, extras=None):
            raise RuntimeError("cannot start")

    class Watcher(Plugin):
        name = "watcher"
        provides = ["hooks"]
        def start(self, settings):          # the earlier one-argument signature
            EVENTS.append(("watcher-start", None))
        def after_job(self, job, result):
            EVENTS.append(("after", result))
"""


@pytest.fixture
def plugin_dir(isolated, monkeypatch):
    write_plugin_module(isolated, body=GOOD)
    monkeypatch.syspath_prepend(str(isolated))
    # Each test imports its own copy of the module, with fresh EVENTS.
    monkeypatch.delitem(sys.modules, "thirdparty_plugin", raising=False)
    yield isolated
    sys.modules.pop("thirdparty_plugin", None)


def test_core_backends_are_found_by_role_through_entry_points(monkeypatch):
    from importlib.metadata import entry_points

    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "memory")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "memory")
    assert type(get_queue_backend()) is MemoryJobQueue
    assert type(get_result_backend()) is MemoryResultBackend
    queues = {ep.name: ep for ep in entry_points(group="nuvom.queue_backends")}
    assert queues["memory"].value == "nuvom.backends.memory:MemoryJobQueue"
    assert queues["file"].dist.name == "nuvom-core"
    # Choosing a backend started no plugin.
    from nuvom.app import default_app

    assert all(r.state != "started" for r in default_app().plugins.records)


def test_plugins_file_loads_a_third_party_backend_chosen_by_name(plugin_dir, monkeypatch):
    (plugin_dir / ".nuvom_plugins.toml").write_text('[plugins]\nqueue_backend = ["thirdparty_plugin:GoodPlugin"]\n')
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "other")
    assert type(get_queue_backend()).__name__ == "OtherQueue"


def test_unknown_backend_name_lists_the_installed_ones(monkeypatch):
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "no-such-store")
    with pytest.raises(BackendError) as info:
        get_queue_backend()
    assert "'no-such-store'" in str(info.value) and "memory" in str(info.value)


def test_a_plugin_named_twice_loads_once(plugin_dir):
    (plugin_dir / ".nuvom_plugins.toml").write_text(
        '[plugins]\nqueue_backend = ["thirdparty_plugin:GoodPlugin"]\n'
        'result_backend = ["thirdparty_plugin:GoodPlugin"]\n'
    )
    manager = PluginManager(plugin_dir)
    assert [r.name for r in manager.discover()].count("good") == 1


def test_broken_plugins_are_reported_and_do_not_take_the_others_down(plugin_dir):
    (plugin_dir / ".nuvom_plugins.toml").write_text(
        textwrap.dedent("""
        [plugins]
        a = ["thirdparty_plugin:OldVersion", "thirdparty_plugin:Exploding", "no_such_module_q:Plugin"]
        b = ["thirdparty_plugin:GoodPlugin", "thirdparty_plugin:Watcher"]
    """)
    )
    manager = PluginManager(plugin_dir)
    from nuvom.config import get_settings

    manager.start(get_settings(), extras={"dev": False})
    by_target = {r.target: r for r in manager.records}
    assert "api_version '0.9'" in by_target["thirdparty_plugin:OldVersion"].error
    assert by_target["thirdparty_plugin:Exploding"].error == "RuntimeError: cannot start"
    assert "ModuleNotFoundError" in by_target["no_such_module_q:Plugin"].error
    assert by_target["thirdparty_plugin:GoodPlugin"].state == "started"
    assert by_target["thirdparty_plugin:Watcher"].state == "started"
    assert by_target["thirdparty_plugin:GoodPlugin"].in_plugins_file


def test_malformed_plugins_file_names_the_line(tmp_path):
    bad = tmp_path / ".nuvom_plugins.toml"
    bad.write_text('[plugins]\nqueue_backend = ["a:B"\nx = 1\n')
    with pytest.raises(PluginError, match=r"line \d"):
        read_plugins_file(bad)


def test_producer_processes_start_only_backend_plugins(plugin_dir, monkeypatch):
    import thirdparty_plugin

    (plugin_dir / ".nuvom_plugins.toml").write_text(
        '[plugins]\nall = ["thirdparty_plugin:GoodPlugin", "thirdparty_plugin:Watcher"]\n'
    )
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "other")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "other")
    get_queue_backend()
    assert ("watcher-start", None) not in thirdparty_plugin.EVENTS
    # A worker starts the rest, hands them extras, calls their hooks and stops them.
    from nuvom.task import task

    @task(name="plugin_hook_probe")
    def probe():
        return "probe-result"

    with Worker(max_workers=1):
        assert probe.delay().get(timeout=5) == "probe-result"
    assert ("watcher-start", None) in thirdparty_plugin.EVENTS
    assert ("after", "probe-result") in thirdparty_plugin.EVENTS
    good_start = next(e for e in thirdparty_plugin.EVENTS if e[0] == "start")
    assert "enabled_in_file" in good_start[1]
