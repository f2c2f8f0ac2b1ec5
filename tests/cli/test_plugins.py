"""``plugin status`` and ``plugin test`` (in process); scaffolding is in test_scaffold.py."""

from __future__ import annotations

import json
import textwrap

GOOD_PLUGIN = textwrap.dedent(
    """
    from nuvom.plugins.contracts import Plugin, BaseResultBackend
    from nuvom.plugins.registry import register_result_backend
    from nuvom.backends.memory import MemoryResultBackend


    class EchoResults(MemoryResultBackend):
        pass


    class EchoPlugin(Plugin):
        api_version = "1.0"
        name = "echo"
        provides = ["result_backend"]

        def start(self, settings, extras=None):
            register_result_backend("echo", EchoResults)

        def stop(self):
            pass


    class CountingHooks(Plugin):
        api_version = "1.0"
        name = "counting"
        provides = ["hooks"]
        seen = []

        def before_job(self, job):
            self.seen.append(job.id)

        def on_job_finished(self, job, outcome, duration):
            self.seen.append(outcome)
    """
)

BAD_PLUGINS = textwrap.dedent(
    """
    from nuvom.plugins.contracts import Plugin


    class Explodes(Plugin):
        api_version = "1.0"
        name = "explodes"
        provides = ["hooks"]

        def start(self, settings, extras=None):
            raise RuntimeError("cannot reach the metrics server")


    class FromTheFuture(Plugin):
        api_version = "9.0"
        name = "future"


    class LiesAboutBackends(Plugin):
        api_version = "1.0"
        name = "liar"
        provides = ["queue_backend"]


    class BadHook(Plugin):
        api_version = "1.0"
        name = "badhook"
        provides = ["hooks"]

        def after_job(self, job):  # missing the result argument
            pass
    """
)


def checks_of(doc: dict, name: str) -> dict[str, bool]:
    plugin = next(p for p in doc["plugins"] if p["name"] == name or p["class"] == name)
    return {c["check"]: c["ok"] for c in plugin["checks"]}


# -- plugin test -----------------------------------------------------------------------
def test_plugin_test_passes_a_good_file_plugin(cli, tmp_path):
    (tmp_path / "good_plugin.py").write_text(GOOD_PLUGIN)
    out = cli("plugin", "test", "./good_plugin.py", "-f", "json")
    assert out.exit_code == 0, out.stdout
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    checks = checks_of(doc, "echo")
    assert checks["contract"] and checks["start"] and checks["stop"]
    assert checks["result backend 'echo'"]  # exercised with a probe job
    hooks = checks_of(doc, "counting")
    assert hooks["hook before_job"] and hooks["hook on_job_finished"]


def test_plugin_test_by_module_and_class(cli, tmp_path):
    (tmp_path / "good_plugin.py").write_text(GOOD_PLUGIN)
    out = cli("plugin", "test", "good_plugin:EchoPlugin")
    assert out.exit_code == 0, out.stdout
    assert "all checks passed" in out.stdout
    assert "✓ start" in out.stdout and "✓ stop" in out.stdout


def test_plugin_test_reports_each_broken_plugin(cli, tmp_path):
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    out = cli("plugin", "test", "bad_plugins.py", "-f", "json")
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    assert checks_of(doc, "Explodes")["start"] is False
    assert checks_of(doc, "FromTheFuture")["contract"] is False
    assert checks_of(doc, "LiesAboutBackends")["registers a queue backend"] is False
    assert checks_of(doc, "BadHook")["hook after_job"] is False
    explode = next(p for p in doc["plugins"] if p["class"] == "Explodes")
    start = next(c for c in explode["checks"] if c["check"] == "start")
    assert "cannot reach the metrics server" in start["detail"]
    assert checks_of(doc, "Explodes")["stop"] is True  # stop() still runs, to release a partial start


def test_plugin_test_table_marks_failures(cli, tmp_path):
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    out = cli("plugin", "test", "bad_plugins.py:Explodes")
    assert out.exit_code == 1
    assert "✗ start" in out.stdout and "some checks failed" in out.stdout


def test_plugin_test_of_something_unimportable_fails_cleanly(cli):
    out = cli("plugin", "test", "no_such_module_anywhere", "-f", "json")
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert checks_of(doc, "") == {"import": False}
    out = cli("plugin", "test", "json")  # importable, but holds no plugin
    assert out.exit_code == 1 and "no Plugin subclass" in out.stdout


def test_plugin_test_of_core_backend_classes(cli):
    # A module holding backend classes (what the backend entry points name) is
    # tested class by class, each named by its entry point.
    out = cli("plugin", "test", "nuvom.backends.memory", "-f", "json")
    assert out.exit_code == 0, out.stdout
    doc = json.loads(out.stdout)
    assert checks_of(doc, "MemoryJobQueue")["queue backend 'memory'"]
    assert checks_of(doc, "MemoryResultBackend")["result backend 'memory'"]


# -- plugin status -----------------------------------------------------------------------
def test_plugin_status_lists_entry_points_and_the_plugins_file(cli, tmp_path):
    (tmp_path / "good_plugin.py").write_text(GOOD_PLUGIN)
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    (tmp_path / ".nuvom_plugins.toml").write_text(
        "[plugins]\n"
        'result_backend = ["good_plugin:EchoPlugin"]\n'
        'hooks = ["bad_plugins:FromTheFuture", "missing_mod:Nope"]\n'
    )
    out = cli("plugin", "status", "--format", "json")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    by_target = {p["target"]: p for p in doc["plugins"]}
    backends = {(b["role"], b["name"]): b for b in doc["backends"]}
    memory = backends[("queue", "memory")]
    assert (memory["target"], memory["distribution"]) == ("nuvom.backends.memory:MemoryJobQueue", "nuvom-core")
    assert backends[("result", "file")]["target"] == "nuvom.backends.file:FileResultBackend"
    echo = by_target["good_plugin:EchoPlugin"]
    assert (echo["name"], echo["state"], echo["source"]) == ("echo", "started", ".nuvom_plugins.toml [result_backend]")
    future = by_target["bad_plugins:FromTheFuture"]
    assert future["state"] == "failed" and "api_version '9.0'" in future["error"]
    missing = by_target["missing_mod:Nope"]
    assert missing["state"] == "failed" and "missing_mod" in missing["error"]
    assert set(echo) == {
        "name",
        "target",
        "source",
        "provides",
        "api_version",
        "state",
        "error",
        "settings",
        "moved_from",
        "moved_hint",
    }
    assert isinstance(doc["cli_commands"], list)
    assert out.stderr == ""  # failures are in the document, not logged on top


def test_plugin_status_table(cli, tmp_path):
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nhooks = ["bad_plugins:FromTheFuture"]\n')
    out = cli("plugin", "status")
    assert out.exit_code == 0
    assert "memory" in out.stdout and "entry point" in out.stdout
    assert "failed" in out.stdout and "9.0" in out.stdout


def test_plugin_status_shows_discovery_settings_flag(cli):
    doc = json.loads(cli("plugin", "status", "-f", "json").stdout)
    discovery = [p for p in doc["plugins"] if p["name"] == "discovery"]
    assert discovery and discovery[0]["settings"] is True


def test_config_shows_plugin_settings_with_plugins_flag(cli):
    doc = json.loads(cli("config", "--plugins", "-f", "json", env={"NUVOM_DISCOVERY_POLL_SECS": "2.5"}).stdout)
    poll = doc["plugins"]["discovery"]["NUVOM_DISCOVERY_POLL_SECS"]
    assert (poll["value"], poll["source"]) == (2.5, "environment")
    # Plain `config` imports no plugin, so their settings are not listed.
    plain = json.loads(cli("config", "-f", "json", env={"NUVOM_DISCOVERY_POLL_SECS": "2.5"}).stdout)
    assert "discovery" not in plain["plugins"]


def test_bad_plugin_setting_is_one_line_naming_it(cli):
    out = cli("config", "--plugins", env={"NUVOM_DISCOVERY_POLL_SECS": "often"})
    assert out.exit_code == 5
    assert out.stderr.count("\n") == 1 and "NUVOM_DISCOVERY_POLL_SECS" in out.stderr


SEED_PLUGINS_FILE = '[plugins]\nprometheus = ["nuvom.plugins.monitoring.prometheus:PrometheusPlugin"]\n'
OLD_EXPORTER = "nuvom.plugins.monitoring.prometheus:PrometheusPlugin"


def _prometheus_installed() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("nuvom.prometheus") is not None
    except ModuleNotFoundError:
        return False


def test_plugin_status_gives_the_install_command_of_a_moved_plugin_not_installed(cli, tmp_path):
    if _prometheus_installed():
        import pytest

        pytest.skip("nuvom-prometheus is installed here (the cli environment of hatch.toml has it not)")
    (tmp_path / ".nuvom_plugins.toml").write_text(SEED_PLUGINS_FILE)
    doc = json.loads(cli("plugin", "status", "-f", "json").stdout)
    [record] = [p for p in doc["plugins"] if p["moved_from"] == OLD_EXPORTER]
    assert record["state"] == "failed"
    assert "pip install nuvom-prometheus" in record["error"] and "./packages/nuvom-prometheus" in record["error"]
    table = cli("plugin", "status")
    assert "pip install nuvom-prometheus" in " ".join(table.stdout.split())


def test_plugin_status_says_where_a_moved_plugin_went(cli, tmp_path):
    if not _prometheus_installed():
        import pytest

        pytest.skip("nuvom-prometheus is not installed here")
    (tmp_path / ".nuvom_plugins.toml").write_text(SEED_PLUGINS_FILE)
    doc = json.loads(cli("plugin", "status", "-f", "json").stdout)
    [record] = [p for p in doc["plugins"] if p["moved_from"] == OLD_EXPORTER]
    assert record["state"] == "loaded"
    assert (
        record["moved_hint"]
        == f"{OLD_EXPORTER} has moved to nuvom.prometheus:PrometheusPlugin (distribution nuvom-prometheus)"
    )
