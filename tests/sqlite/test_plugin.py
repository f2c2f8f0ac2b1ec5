"""Registration through the ``nuvom`` entry point group, defaults and paths."""

from __future__ import annotations

from importlib.metadata import entry_points

from nuvom.backends import get_queue_backend, get_result_backend, resolve_backend_names
from nuvom.config import get_settings
from nuvom.sdk import get_job, list_jobs
from nuvom.sqlite import SQLiteJobQueue, SQLiteResultBackend, SQLiteSettings
from nuvom.task import task
from nuvom.worker import Worker


@task(name="sqlite_add")
def add(x, y):
    return x + y


@task(name="sqlite_boom")
def boom():
    raise ValueError("no good")


def test_the_backends_are_entry_points_named_sqlite_and_start_no_plugin():
    queues = {ep.name: ep for ep in entry_points(group="nuvom.queue_backends")}
    results = {ep.name: ep for ep in entry_points(group="nuvom.result_backends")}
    assert queues["sqlite"].load() is SQLiteJobQueue
    assert results["sqlite"].load() is SQLiteResultBackend
    assert "sqlite" not in {ep.name for ep in entry_points(group="nuvom")}
    assert SQLiteJobQueue.settings_class is SQLiteResultBackend.settings_class is SQLiteSettings


def test_sqlite_is_the_default_for_both_backends_when_nothing_is_configured(tmp_path):
    names = resolve_backend_names(get_settings())
    assert names["queue"][0] == "sqlite" and names["result"][0] == "sqlite"
    queue, results = get_queue_backend(), get_result_backend()
    assert isinstance(queue, SQLiteJobQueue) and isinstance(results, SQLiteResultBackend)
    assert queue.path == results.path == tmp_path / "data" / "nuvom.db"


def test_named_backends_and_paths_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "sqlite")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "SQLite")
    monkeypatch.setenv("NUVOM_SQLITE_QUEUE_PATH", str(tmp_path / "q" / "queue.db"))
    monkeypatch.setenv("NUVOM_SQLITE_DB_PATH", str(tmp_path / "r" / "results.db"))
    assert get_queue_backend().path == tmp_path / "q" / "queue.db"
    assert get_result_backend().path == tmp_path / "r" / "results.db"
    add.delay(1, 2)
    assert (tmp_path / "q" / "queue.db").is_file()


def test_an_embedded_worker_runs_jobs_through_sqlite_end_to_end():
    with Worker(max_workers=2):
        assert add.delay(2, 3).get(timeout=10) == 5
        jobs = add.map([(i, i) for i in range(100)])
        assert [j.get(timeout=10) for j in jobs] == [2 * i for i in range(100)]
        failed = boom.delay()
        try:
            failed.get(timeout=10)
        except Exception as exc:
            assert "ValueError" in str(exc)
    record = get_job(failed.id)
    assert record.status.value == "FAILED"
    assert record.error.type == "ValueError" and "no good" in record.error.traceback
    assert [j.id for j in list_jobs(status="FAILED")] == [failed.id]
    assert get_queue_backend().qsize() == 0


def test_a_worker_given_memory_settings_runs_on_memory_though_sqlite_is_installed():
    from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
    from nuvom.config import Settings
    from nuvom.worker import Worker

    worker = Worker(settings=Settings(queue_backend="memory", result_backend="memory"))
    assert isinstance(worker.queue, MemoryJobQueue) and isinstance(worker.results, MemoryResultBackend)
    assert isinstance(get_queue_backend(), SQLiteJobQueue)  # the default app still uses the default


def test_a_memory_app_and_a_sqlite_app_run_side_by_side(tmp_path):
    from nuvom.app import App
    from nuvom.config import Settings
    from nuvom.worker import Worker

    mem = App(Settings(queue_backend="memory", result_backend="memory"))
    disk = App(Settings(data_dir=tmp_path / "other"))

    @mem.task(name="where")
    def where_mem():
        return "memory"

    @disk.task(name="where")
    def where_disk():
        return "sqlite"

    with mem, disk, Worker(app=mem, max_workers=1), Worker(app=disk, max_workers=1):
        a, b = where_mem.delay(), where_disk.delay()
        assert (a.get(timeout=10), b.get(timeout=10)) == ("memory", "sqlite")
        assert isinstance(disk.queue, SQLiteJobQueue) and disk.queue.path == tmp_path / "other" / "nuvom.db"
        assert disk.get_job(a.id) is None and mem.get_job(b.id) is None
