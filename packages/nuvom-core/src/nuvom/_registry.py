"""The task registry: a thread-safe map from task name to :class:`~nuvom.task.Task`.
Each :class:`~nuvom.app.App` owns one (``app.registry``).

Tasks arrive three ways: the ``@task`` decorator at import time, a task
plugin (nuvom-discovery registers *lazy* entries from its manifest, imported
on first use), and the worker's fallback import of a job's ``task_path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nuvom._task import Task
from nuvom.errors import TaskNotFound

__all__ = ["LazyTask", "TaskRegistry", "import_task", "project_import_policy"]

log = logging.getLogger("nuvom.registry")


@dataclass(frozen=True)
class LazyTask:
    """A task known by location only; imported the first time a job needs it."""

    name: str
    module: str
    qualname: str
    file: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return f"{self.module}:{self.qualname}"


class TaskRegistry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tasks: dict[str, Task[Any]] = {}
        self._lazy: dict[str, LazyTask] = {}
        self._listeners: list[Callable[[], None]] = []

    def register(self, task: Task[Any], *, force: bool = False, silent: bool = False) -> None:
        """Add ``task`` under ``task.name``.

        A name already taken by another task is an error unless ``force``
        (replace) or ``silent`` (keep the first, say nothing). Re-registering
        the same function (a module imported again, a dev reload) replaces it.
        """
        with self._lock:
            old = self._tasks.get(task.name)
            if old is not None and old is not task and not _same_origin(old, task):
                if silent:
                    return
                if not force:
                    raise ValueError(
                        f"task name {task.name!r} is already used by {old.path}; "
                        f"pass name='...' to @task in {task.path} to tell them apart"
                    )
            self._tasks[task.name] = task
            self._lazy.pop(task.name, None)

    def register_lazy(self, entry: LazyTask, *, force: bool = False) -> None:
        """Add a task known by module path. An already imported task of that name
        wins unless ``force`` (then the lazy entry replaces it)."""
        with self._lock:
            if entry.name in self._tasks and not force:
                return
            if entry.name in self._tasks and self._tasks[entry.name].path == entry.path:
                return
            self._tasks.pop(entry.name, None)
            self._lazy[entry.name] = entry

    def unregister(self, name: str) -> None:
        with self._lock:
            self._tasks.pop(name, None)
            self._lazy.pop(name, None)

    def get(self, name: str) -> Task[Any] | None:
        """The task called ``name``, importing a lazy entry if needed; ``None`` if unknown."""
        task = self._tasks.get(name)
        if task is not None:
            return task
        entry = self._lazy.get(name)
        if entry is None:
            return None
        task = import_task(entry.path, file=entry.file, name=name)
        with self._lock:
            self._tasks.setdefault(name, task)
            self._lazy.pop(name, None)
        return task

    def resolve(
        self, name: str, path: str | None, *, may_import: Callable[[str], str | None] | None = None
    ) -> Task[Any]:
        """Find the task of a job: by name (registered, or a lazy entry from the
        manifest), then by its import path if ``may_import(module)`` allows it
        (it returns ``None``, or why not). Importing runs code, so a path that
        only whoever can write the store vouches for is refused."""
        task = self.get(name)
        if task is not None:
            return task
        if path:
            module = path.partition(":")[0]
            refused = may_import(module) if may_import is not None else None
            if refused is not None:
                raise TaskNotFound(f"task {name!r}: refusing to import {path!r}: {refused}")
            task = import_task(path, name=name)
            if task.name != name:
                # The function is a task under another name: honour the job's name.
                with self._lock:
                    self._tasks.setdefault(name, task)
            return task
        raise TaskNotFound(
            f"no task named {name!r} is registered and the job carries no import path; "
            "run `nuvom discover tasks` or import the module that defines it before starting the worker"
        )

    def names(self) -> list[str]:
        with self._lock:
            return sorted({*self._tasks, *self._lazy})

    def entries(self) -> dict[str, Task[Any] | LazyTask]:
        with self._lock:
            return {**self._lazy, **self._tasks}

    def __contains__(self, name: object) -> bool:
        return name in self._tasks or name in self._lazy

    def __len__(self) -> int:
        with self._lock:
            return len({*self._tasks, *self._lazy})

    def clear(self) -> None:
        with self._lock:
            self._tasks.clear()
            self._lazy.clear()


def _same_origin(a: Task[Any], b: Task[Any]) -> bool:
    # A script's tasks are registered as __main__ and again under their module
    # name when imported: both are the same task.
    if a.path == b.path:
        return True
    return a.fn.__qualname__ == b.fn.__qualname__ and "__main__" in (a.fn.__module__, b.fn.__module__)


def import_task(path: str, *, file: str | None = None, name: str | None = None) -> Task[Any]:
    """Import ``module:qualname`` and return the task object found there.

    When the module is not importable by name and ``file`` is given, the file
    is loaded directly (tasks outside any package on ``sys.path``).
    """
    label = name or path
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise TaskNotFound(f"task {label!r}: {path!r} is not a 'module:function' path")
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        # A module that calls sys.exit() at import (a missing API key, say) is
        # an import failure like any other: it must never end the caller's thread.
        if not isinstance(exc, Exception):
            raise TaskNotFound(
                f"importing task {label!r} raised {type(exc).__name__}({exc}); a task module must not exit "
                "or raise at import"
            ) from None
        if file is None:
            raise TaskNotFound(
                f"task {label!r}: importing module {module_name!r} failed "
                f"({type(exc).__name__}: {exc}); is the project root on the path?"
            ) from exc
        module = _import_file(module_name, file, label)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise TaskNotFound(f"task {label!r}: module {module_name!r} has no attribute {qualname!r}")
    if not isinstance(obj, Task):
        raise TaskNotFound(f"task {label!r}: {path} is not decorated with @task")
    return obj


def _import_file(module_name: str, file: str, label: str) -> Any:

    spec = importlib.util.spec_from_file_location(module_name, Path(file))
    if spec is None or spec.loader is None:
        raise TaskNotFound(f"task {label!r}: cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        raise TaskNotFound(f"task {label!r}: loading {file} failed ({type(exc).__name__}: {exc})") from exc
    return module


def project_import_policy(root: Path, declared: list[str]) -> Callable[[str], str | None]:
    """The worker's rule for a job's import path: modules already imported,
    modules listed in ``NUVOM_TASK_MODULES`` (and their submodules), and modules
    whose top-level package lives under the project folder ``root`` (not in a
    virtualenv inside it). Checked without importing anything."""
    root = root.resolve()

    def may_import(module: str) -> str | None:
        if module in sys.modules:
            return None
        if any(module == d or module.startswith(d + ".") for d in declared):
            return None
        top = module.partition(".")[0]
        try:
            spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
        except (ImportError, ValueError):
            spec = None
        origins = []
        if spec is not None:
            if spec.origin and spec.origin not in ("built-in", "frozen"):
                origins.append(spec.origin)
            origins.extend(spec.submodule_search_locations or [])
        for origin in origins:
            path = Path(origin).resolve()
            if path.is_relative_to(root) and not _in_environment(path):
                return None
        return (
            f"{module!r} is neither a task module of the project ({root}) nor listed in NUVOM_TASK_MODULES; "
            "run `nuvom discover tasks` or add it to NUVOM_TASK_MODULES"
        )

    return may_import


def _in_environment(path: Path) -> bool:
    parts = set(path.parts)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return any(path.is_relative_to(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix})
