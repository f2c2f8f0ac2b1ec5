"""The App owns settings, tasks, hooks, plugins and backends: two apps live
side by side, a worker honours the app or settings it is given, and nothing
outside the default app holds state."""

from __future__ import annotations

import ast
from pathlib import Path

import nuvom.job
import pytest
from nuvom.app import App, default_app
from nuvom.backends.file import FileJobQueue
from nuvom.backends.memory import MemoryJobQueue
from nuvom.config import Settings
from nuvom.errors import JobFailed
from nuvom.task import task
from nuvom.testing import isolated_app
from nuvom.worker import Worker


def memory_settings(**extra: object) -> Settings:
    return Settings(queue_backend="memory", result_backend="memory", **extra)  # type: ignore[arg-type]


def test_two_apps_in_one_process_queue_and_run_side_by_side(tmp_path: Path) -> None:
    mem = App(memory_settings())
    files = App(Settings(queue_backend="file", result_backend="file", data_dir=tmp_path / "files"))

    @mem.task(name="double")
    def double_mem(x: int) -> int:
        return 2 * x

    @files.task(name="double")
    def double_file(x: int) -> str:
        return f"file:{2 * x}"

    with mem, files, Worker(app=mem, max_workers=2), Worker(app=files, max_workers=2):
        a, b = double_mem.delay(21), double_file.delay(21)
        assert a.get(timeout=10) == 42
        assert b.get(timeout=10) == "file:42"
        assert isinstance(mem.queue, MemoryJobQueue) and isinstance(files.queue, FileJobQueue)
        # Each app's store knows only its own job.
        assert mem.get_job(b.id) is None and files.get_job(a.id) is None
        assert "double" in mem.registry and "double" in files.registry
        assert mem.registry.get("double") is double_mem and files.registry.get("double") is double_file
    assert list((tmp_path / "files" / "jobs").iterdir())


def test_worker_given_settings_runs_on_them_not_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "file")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "file")
    worker = Worker(settings=memory_settings(max_workers=3))
    assert isinstance(worker.queue, MemoryJobQueue)
    assert worker.max_workers == 3
    assert worker.app is not default_app() and worker.app.registry is default_app().registry
    assert isinstance(default_app().queue, FileJobQueue)


def test_a_job_waits_on_the_app_it_was_queued_through() -> None:
    app = App(memory_settings())

    @app.task
    def fail() -> None:
        raise KeyError("nope")

    with Worker(app=app, max_workers=1):
        job = fail.delay()
        with pytest.raises(JobFailed, match="KeyError"):
            job.get(timeout=10)


def test_get_says_when_no_worker_has_claimed_the_job() -> None:
    app = App(memory_settings())

    @app.task
    def idle() -> None:
        return None

    job = idle.delay()
    with pytest.raises(TimeoutError, match="no worker has claimed it yet"):
        job.get(timeout=0.05)


@task(name="app_test_add")
def add(x: int, y: int) -> int:
    return x + y


def test_isolated_app_redirects_module_level_tasks_and_is_undone() -> None:
    before = default_app()
    with isolated_app() as app, Worker(app=app, max_workers=1):
        assert default_app() is app
        job = add.delay(2, 3)
        assert app.queue.get(job.id) is not None or app.results.get_full(job.id) is not None
        assert job.get(timeout=10) == 5
    assert default_app() is before


def test_isolated_app_eager_runs_jobs_when_queued_with_retries() -> None:
    calls: list[int] = []

    @task(name="app_test_flaky", retries=2)
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return len(calls)

    with isolated_app(eager=True):
        job = flaky.delay()
        assert job.get(timeout=0) == 3
        assert job.attempts == 3 and [a.outcome for a in job.history] == ["error", "error", "success"]


def test_backends_registered_by_a_plugin_go_to_the_app_that_starts_it() -> None:
    from nuvom.backends import register_queue_backend
    from nuvom.plugins.contracts import Plugin

    class Registers(Plugin):
        name = "registers"
        provides = ["queue_backend"]

        def start(self, settings, extras=None):  # type: ignore[no-untyped-def]
            register_queue_backend("special", MemoryJobQueue)

    one, two = App(memory_settings()), App(memory_settings())
    one.start_plugin(Registers())
    assert "special" in one.backends.registered_names("queue")
    assert "special" not in two.backends.registered_names("queue")
    assert "special" not in default_app().backends.registered_names("queue")


# -- no import cycles in core -----------------------------------------------------------
def _core_modules() -> dict[str, Path]:
    root = Path(nuvom.job.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every core module ``module`` imports when it runs, at any depth of the
    file (inside functions too), except under ``if TYPE_CHECKING:``; importing
    ``a.b.c`` also runs ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def add(name: str) -> None:
        while name:
            if name in known and name != module:
                found.add(name)
            name = name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = module.split(".")[: -node.level or None]
                base = ".".join([*pkg, node.module])
            add(base)
            for alias in node.names:
                add(f"{base}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_core_has_no_import_cycles() -> None:
    modules = _core_modules()
    graph = {m: _imports(p, m, set(modules)) for m, p in modules.items()}
    # A cycle is a strongly connected component with more than one module.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    assert len(modules) > 20 and graph["nuvom.app"]  # the graph was really built
    assert cycles == [], f"import cycles in nuvom-core: {cycles}"


def test_the_import_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from nuvom import app\n\nif TYPE_CHECKING:\n    import nuvom.worker\n")
    found = _imports(probe, "nuvom.probe", {"nuvom", "nuvom.app", "nuvom.worker"})
    assert found == {"nuvom", "nuvom.app"}
