from __future__ import annotations

import sys

import pytest
from nuvom.errors import TaskNotFound
from nuvom.registry import LazyTask, TaskRegistry
from nuvom.task import Task


def _task(name, fn=None):
    def f():
        return name

    f.__qualname__ = f"fn_{name}"
    return Task(fn or f, name=name)


def test_duplicate_name_is_refused_unless_forced_or_silent():
    reg = TaskRegistry()
    first, second = _task("a"), _task("b")
    second.name = "a"
    second.path = "elsewhere:fn"
    reg.register(first)
    with pytest.raises(ValueError):
        reg.register(second)
    reg.register(second, silent=True)
    assert reg.get("a") is first
    reg.register(second, force=True)
    assert reg.get("a") is second


def test_lazy_entry_is_imported_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "lazy_mod_for_registry.py").write_text(
        "from nuvom.task import task\n@task(name='lazy_one')\ndef lazy_one():\n    return 41\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = TaskRegistry()
    reg.register_lazy(LazyTask("lazy_one", "lazy_mod_for_registry", "lazy_one"))
    assert "lazy_mod_for_registry" not in sys.modules
    assert reg.get("lazy_one")() == 41
    assert "lazy_mod_for_registry" in sys.modules


def test_lazy_entry_falls_back_to_the_file_path(tmp_path):
    file = tmp_path / "not_on_path_mod.py"
    file.write_text("from nuvom.task import task\n@task(name='by_file')\ndef by_file():\n    return 'ok'\n")
    reg = TaskRegistry()
    reg.register_lazy(LazyTask("by_file", "pkg_that_does_not_exist.not_on_path_mod", "by_file", file=str(file)))
    assert reg.get("by_file")() == "ok"


def test_failing_import_names_the_task():
    reg = TaskRegistry()
    reg.register_lazy(LazyTask("ghost", "module_that_does_not_exist_xyz", "ghost"))
    with pytest.raises(TaskNotFound, match="ghost"):
        reg.get("ghost")


def test_resolve_falls_back_to_the_import_path_and_explains_when_it_cannot(tmp_path, monkeypatch):
    (tmp_path / "resolve_mod.py").write_text("from nuvom.task import task\n@task\ndef plain2(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = TaskRegistry()
    assert reg.resolve("plain2", "resolve_mod:plain2")(4) == 8
    with pytest.raises(TaskNotFound, match="nuvom discover tasks"):
        reg.resolve("nowhere", None)
    with pytest.raises(TaskNotFound, match="not decorated with @task"):
        reg.resolve("json_dumps", "json:dumps")
