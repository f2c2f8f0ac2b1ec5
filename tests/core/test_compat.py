"""What the earlier nuvom's users (0.9-0.11, the seed documents) write keeps working."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
from nuvom import sdk
from nuvom.app import App
from nuvom.backends.memory import MemoryJobQueue
from nuvom.config import Settings
from nuvom.job import Job, JobStatus, TaskOptions
from nuvom.worker import Worker


def memory_app(**extra: object) -> App:
    return App(Settings(queue_backend="memory", result_backend="memory", **extra))  # type: ignore[arg-type]


def test_from_nuvom_import_task_works_as_the_decorator() -> None:
    from nuvom import task

    @task(retries=1, name="compat_bare")
    def bare(x: int) -> int:
        return x

    @task
    def compat_plain(x: int) -> int:
        return x

    assert bare.retries == 1 and bare.name == "compat_bare" and compat_plain.name == "compat_plain"


def test_a_string_is_one_tag_and_category_becomes_a_tag() -> None:
    assert TaskOptions(tags="reports").tags == ("reports",)
    app = memory_app()

    @app.task(tags="reports", category="billing")
    def report() -> None:
        return None

    assert report.tags == ["reports", "billing"]
    assert report.make_job([], {}).tags == ["reports", "billing"]


def test_retry_delay_none_means_the_apps_default() -> None:
    app = memory_app(retry_delay_secs=5)

    @app.task(retries=2, retry_delay_secs=None)
    def flaky() -> None:
        return None

    @app.task(retries=2, retry_delay_secs=1)
    def own() -> None:
        return None

    assert flaky.retry_delay_secs is None
    assert flaky.make_job([], {}).retry_delay_secs == 5.0  # NUVOM_RETRY_DELAY_SECS
    assert own.make_job([], {}).retry_delay_secs == 1.0
    assert memory_app().task(lambda: None, retries=1).make_job([], {}).retry_delay_secs == 0.0


def test_job_accepts_the_earlier_retries_name_and_refuses_unknown_fields() -> None:
    assert Job(func_name="x", retries=3).max_retries == 3
    with pytest.raises(ValueError, match="'retrys'"):
        Job(func_name="x", retrys=3)
    # A stored record may come from a newer version: unknown fields are ignored there.
    newer = Job(func_name="x").model_dump(mode="json") | {"priority": 5}
    from nuvom import serialization

    assert Job.from_bytes(serialization.dumps(newer)).func_name == "x"


def test_plugin_start_with_keyword_extras_and_hooks_with_fewer_arguments(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "old_style.py").write_text(
        textwrap.dedent(
            """
            from nuvom.plugins.contracts import Plugin

            EVENTS = []

            class OldExporter(Plugin):
                name = "old_exporter"
                provides = ["metrics"]

                def start(self, settings, **extras):      # the earlier exporter's signature
                    EVENTS.append(("start", sorted(extras)))

                def before_job(self):                     # no argument
                    EVENTS.append(("before", None))

                def after_job(self, result):              # the result only
                    EVENTS.append(("after", result))

                def stop(self):
                    EVENTS.append(("stop", None))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nmetrics = ["old_style:OldExporter"]\n')
    app = App(Settings(queue_backend="memory", result_backend="memory"), project_dir=tmp_path)

    @app.task
    def seven() -> int:
        return 7

    with Worker(app=app, max_workers=1):
        assert seven.delay().get(timeout=10) == 7
    import old_style

    events = old_style.EVENTS
    assert events[0][0] == "start" and "worker" in events[0][1] and "enabled_in_file" in events[0][1]
    assert ("before", None) in events and ("after", 7) in events and events[-1] == ("stop", None)
    sys.modules.pop("old_style", None)


def test_the_seed_plugins_file_line_for_prometheus_resolves_to_its_new_home(tmp_path: Path) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\nprometheus = ["nuvom.plugins.monitoring.prometheus:PrometheusPlugin"]\n'
    )
    old = "nuvom.plugins.monitoring.prometheus:PrometheusPlugin"
    [record] = [r for r in App(project_dir=tmp_path).plugins.discover() if r.moved_from == old]
    assert record.target == "nuvom.prometheus:PrometheusPlugin" and record.in_plugins_file
    # With only core installed the failure names the new home (tests/prometheus: it serves metrics).
    assert record.state == "loaded" or "nuvom.prometheus" in (record.error or "")


SEED_BACKEND = """
from nuvom.plugins.contracts import Plugin

STORE = {}

class MyResultBackend:                      # the seeds' interface, no base class
    def set_result(self, job_id, func_name, result):
        STORE[job_id] = ("ok", func_name, result)

    def get_result(self, job_id):
        entry = STORE.get(job_id)
        return entry[2] if entry and entry[0] == "ok" else None

    def set_error(self, job_id, func_name, exc):
        STORE[job_id] = ("error", func_name, exc)

    def get_error(self, job_id):
        entry = STORE.get(job_id)
        return entry[2] if entry and entry[0] == "error" else None

class MyPlugin(Plugin):
    api_version = "1.0"
    name = "my_plugin"
    provides = ["result_backend"]

    def start(self, settings):
        from nuvom.plugins.registry import register_result_backend
        register_result_backend("my_backend", MyResultBackend)

    def stop(self):
        pass
"""


def test_a_result_backend_written_to_the_seeds_interface_works(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_plugin.py").write_text(SEED_BACKEND)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nresult_backend = ["my_plugin:MyPlugin"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    app = App(Settings(queue_backend="memory", result_backend="my_backend"), project_dir=tmp_path)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def boom() -> None:
        raise ValueError("seed error")

    with Worker(app=app, max_workers=1):
        assert add.delay(2, 3).get(timeout=10) == 5
        failed = boom.delay()
        with pytest.raises(Exception, match="seed error"):
            failed.get(timeout=10)
    import my_plugin

    assert ("ok", "add", 5) in my_plugin.STORE.values()
    assert sdk.get_job_status(failed.id, app=app) is JobStatus.FAILED
    record = app.results.get_full(failed.id)
    assert record is not None and record.error is not None and record.error.message == "seed error"
    sys.modules.pop("my_plugin", None)


def test_register_with_override_and_dequeue_waits_a_second_by_default() -> None:
    from nuvom.backends import register_queue_backend

    app = memory_app()
    app.start_plugin(_Registers())
    assert app.backends.lookup("queue", "custom") is MemoryJobQueue
    register_queue_backend("custom2", MemoryJobQueue, override=True)
    queue = MemoryJobQueue()
    t0 = time.monotonic()
    assert queue.dequeue() is None
    assert 0.8 <= time.monotonic() - t0 < 5


class _Registers:
    name = "registers"
    provides = ["queue_backend"]

    def start(self, settings, extras=None):  # type: ignore[no-untyped-def]
        from nuvom.plugins.registry import register_queue_backend

        register_queue_backend("custom", MemoryJobQueue, override=True)

    def stop(self) -> None:
        pass


# -- TaskRegistry.register(name, fn, force=...), as the earlier registry took it ----------
def _sample() -> str:
    return "hello"


def _another() -> str:
    return "world"


def test_register_by_name_registers_a_plain_function_that_a_worker_runs() -> None:
    app = memory_app()
    app.registry.register("sample_by_name", _sample)
    task = app.registry.get("sample_by_name")
    assert task is not None and task.fn is _sample and task() == "hello"
    with Worker(app=app, max_workers=1):
        job = Job(func_name="sample_by_name").bind(app)
        app.queue.enqueue(job)
        assert job.get(timeout=10) == "hello"


def test_register_by_name_refuses_a_duplicate_unless_forced_or_silent() -> None:
    app = memory_app()
    registry = app.registry
    registry.register("dup_by_name", _sample)
    with pytest.raises(ValueError, match=r"'dup_by_name' is already used by .*_sample.*force=True"):
        registry.register("dup_by_name", _another)
    registry.register("dup_by_name", _another, silent=True)
    assert registry.get("dup_by_name")() == "hello"  # type: ignore[misc]
    registry.register("dup_by_name", _another, force=True)
    assert registry.get("dup_by_name")() == "world"  # type: ignore[misc]


def test_register_by_name_takes_the_earlier_metadata_and_a_task_under_a_second_name() -> None:
    app = memory_app()

    @app.task(retries=2, name="original_name")
    def original() -> str:
        return "original"

    app.registry.register(
        "second_name", original, metadata={"tags": ["mail"], "description": "Sends", "category": "ops"}
    )
    alias = app.registry.get("second_name")
    assert alias is not None and alias.fn is original.fn and alias.retries == 2
    assert alias.tags == ["mail", "ops"] and alias.description == "Sends"
    assert app.registry.get("original_name") is original  # today's form, unchanged
    with pytest.raises(TypeError, match="fn must be a function"):
        app.registry.register("not_callable", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="register\\(task\\) takes a Task"):
        app.registry.register(original, _sample)


def test_from_dict_of_to_dict_keeps_the_queue_and_priority() -> None:
    from nuvom.job import Job

    job = Job(func_name="add", args=[1, 2], queue="emails", priority=7)
    back = Job.from_dict(job.to_dict())
    assert (back.id, back.queue, back.priority) == (job.id, "emails", 7)
    # the earlier nuvom's non-integer priority is dropped, as before
    assert Job.from_dict({**job.to_dict(), "priority": "high"}).priority == 0
