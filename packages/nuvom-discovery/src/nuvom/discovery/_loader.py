"""From manifest to registry: every task registered lazily, imported on first use."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from nuvom.discovery._models import TaskInfo
from nuvom.registry import LazyTask, TaskRegistry

__all__ = ["add_import_roots", "lazy_task", "primary_definitions", "register_tasks"]

log = logging.getLogger("nuvom.discovery")


def primary_definitions(tasks: Iterable[TaskInfo]) -> dict[str, TaskInfo]:
    """One definition per task name: the first by file and line. A name
    defined in several places is logged with every location."""
    by_name: dict[str, list[TaskInfo]] = {}
    for task in tasks:
        by_name.setdefault(task.name, []).append(task)
    out: dict[str, TaskInfo] = {}
    for name, defs in by_name.items():
        defs.sort(key=lambda t: (t.file, t.line))
        if len(defs) > 1:
            places = ", ".join(f"{t.file}:{t.line}" for t in defs)
            log.warning(
                "task name %r is defined %d times (%s); using %s:%d. Give the others their own name= in @task",
                name,
                len(defs),
                places,
                defs[0].file,
                defs[0].line,
            )
        out[name] = defs[0]
    return out


def lazy_task(task: TaskInfo, root: Path) -> LazyTask:
    return LazyTask(
        name=task.name,
        module=task.module,
        qualname=task.qualname,
        file=os.path.join(root, *task.file.split("/")),
        metadata=task.metadata(),
    )


def register_tasks(registry: TaskRegistry, tasks: Iterable[TaskInfo], root: Path, *, replace: bool = False) -> int:
    """Register ``tasks`` lazily; returns how many.

    Core imports a lazy task by module path the first time a job needs it
    (``TaskRegistry.import_module``), loading the file directly when no module
    of that name is found, and fails that job with ``TaskNotFound`` naming the
    task when neither works; when the module's own code raises, its jobs fail
    with ``TaskImportError`` and the failure is logged once. A task already
    imported under the same name is kept unless ``replace``.
    """
    chosen = primary_definitions(tasks)
    for task in chosen.values():
        registry.register_lazy(lazy_task(task, root), force=replace)
    return len(chosen)


def add_import_roots(root: Path, tasks: Iterable[TaskInfo]) -> None:
    """Put the project root (and ``src/`` for a src layout) on ``sys.path``,
    so that module paths relative to the root import as they do in
    ``python -m`` run from there."""
    wanted = [root]
    if any(t.file.startswith("src/") and not t.module.startswith("src.") for t in tasks):
        wanted.append(root / "src")
    present = {_normalise(p) for p in sys.path}
    for path in reversed(wanted):
        if _normalise(str(path)) not in present:
            sys.path.insert(0, str(path))


def _normalise(entry: str) -> str:
    try:
        return str(Path(entry or ".").resolve())
    except OSError:
        return entry
