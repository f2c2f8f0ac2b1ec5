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
from types import ModuleType
from typing import Any

from nuvom._task import Task
from nuvom.errors import TaskImportError, TaskNotFound

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
        # Modules whose import raised, with what it raised (repr): they are not
        # imported again, which would run their code and log the failure once per job.
        self._failed: dict[str, str] = {}
        # Task name -> the module whose failed import it belongs to: its jobs fail.
        self._broken: dict[str, str] = {}
        # One lock per module being imported here, so that a second thread waits
        # for the first import's outcome instead of running the module again.
        self._module_locks: dict[str, threading.RLock] = {}
        # The tasks registered by imports running in this thread (import_module):
        # kept apart until the import succeeds, so that no thread can run a task
        # of a module that is still importing or whose import fails.
        self._staging = threading.local()

    def register(
        self,
        task: Task[Any] | str,
        fn: Callable[..., Any] | None = None,
        *,
        force: bool = False,
        silent: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Add ``task`` under ``task.name``.

        A name already taken by another task is an error unless ``force``
        (replace) or ``silent`` (keep the first, say nothing). Re-registering
        the same function (a module imported again, a dev reload) replaces it.

        The earlier form ``register(name, fn, force=..., silent=..., metadata=...)``
        registers a plain function (or a task) as the task ``name``; ``metadata``'s
        ``tags``, ``description`` and ``category`` become its options.
        """
        if isinstance(task, str):
            from nuvom._compat import task_from_function  # the earlier form only

            task = task_from_function(task, fn, metadata)
        elif fn is not None or metadata is not None:
            raise TypeError("register(task) takes a Task; register(name, fn) takes a task name and a function")
        with self._lock:
            staged: dict[str, Task[Any]] | None = getattr(self._staging, "tasks", None)
            old = self._tasks.get(task.name)
            if staged is not None and task.name in staged:
                old = staged[task.name]
            if old is not None and old is not task and not _same_origin(old, task):
                if silent:
                    return
                if not force:
                    raise ValueError(
                        f"task name {task.name!r} is already used by {old.path}; pass name='...' to @task in "
                        f"{task.path} to tell them apart (or force=True to register it in its place)"
                    )
            if staged is not None:
                staged[task.name] = task
                return
            self._publish(task)

    def _publish(self, task: Task[Any]) -> None:
        self._tasks[task.name] = task
        self._lazy.pop(task.name, None)
        self._broken.pop(task.name, None)

    def register_lazy(self, entry: LazyTask, *, force: bool = False) -> None:
        """Add a task known by module path. An already imported task of that name
        (or one whose module failed to import) wins unless ``force`` (then the
        lazy entry replaces it)."""
        with self._lock:
            if (entry.name in self._tasks or entry.name in self._broken) and not force:
                return
            if entry.name in self._tasks and self._tasks[entry.name].path == entry.path:
                return
            self._tasks.pop(entry.name, None)
            self._lazy[entry.name] = entry

    def unregister(self, name: str) -> None:
        """Forget the task ``name``, and the failed import of its module if it
        had one (the dev watcher calls this when the file changed)."""
        with self._lock:
            self._tasks.pop(name, None)
            self._lazy.pop(name, None)
            module = self._broken.pop(name, None)
            if module is not None:
                # Its file changed: the module is imported afresh by the next job that needs it.
                self._failed.pop(module, None)
                for other in [n for n, m in self._broken.items() if m == module]:
                    del self._broken[other]

    def get(self, name: str) -> Task[Any] | None:
        """The task called ``name``, importing a lazy entry if needed; ``None`` if
        unknown. A task whose module failed to import raises :class:`TaskImportError`."""
        task = self._tasks.get(name)
        if task is not None:
            return task
        module = self._broken.get(name)
        if module is not None:
            raise self._import_error(name, module)
        entry = self._lazy.get(name)
        if entry is None:
            return None
        task = self._task_at(entry.path, name, file=entry.file)
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
        only whoever can write the store vouches for is refused. A task whose
        module failed to import raises :class:`TaskImportError`."""
        task = self.get(name)
        if task is not None:
            return task
        if path:
            module = path.partition(":")[0]
            refused = may_import(module) if may_import is not None else None
            if refused is not None:
                raise TaskNotFound(f"task {name!r}: refusing to import {path!r}: {refused}")
            task = self._task_at(path, name)
            if task.name != name:
                # The function is a task under another name: honour the job's name.
                with self._lock:
                    self._tasks.setdefault(name, task)
            return task
        raise TaskNotFound(
            f"no task named {name!r} is registered and the job carries no import path; "
            "run `nuvom discover tasks` or import the module that defines it before starting the worker"
        )

    # -- importing task modules ---------------------------------------------------
    def import_module(self, module: str, *, file: str | None = None) -> ModuleType:
        """Import the task module ``module`` (loading ``file`` directly when no
        module of that name is found): the one way a worker imports task code.

        The tasks the module registers become visible only once it imported
        cleanly. When the import raises anything (``sys.exit()`` included), the
        failure is logged once at ERROR with its traceback and remembered: the
        tasks it registered on the way, and any later job naming the module,
        fail with :class:`TaskImportError` naming the module and the exception,
        and the module is not run again until :meth:`unregister` forgets it (dev
        reload) or the worker restarts. A module that does not exist raises
        :class:`TaskNotFound` and is not remembered (it may be deployed later).
        """
        if module in self._failed:
            raise self._import_error(None, module)
        with self._module_lock(module):
            if module in self._failed:  # failed in another thread while this one waited
                raise self._import_error(None, module)
            outer = getattr(self._staging, "tasks", None)
            staged: dict[str, Task[Any]] = {}
            self._staging.tasks = staged
            try:
                loaded = _load_module(module, file)
            except _NotFound as missing:
                self._staging.tasks = outer
                with self._lock:
                    for task in staged.values():
                        self._publish(task)
                raise TaskNotFound(str(missing)) from None
            except BaseException as exc:
                self._staging.tasks = outer
                self._fail(module, exc, staged)
                raise self._import_error(None, module) from None
            self._staging.tasks = outer
            with self._lock:
                for task in staged.values():
                    self._publish(task)
            return loaded

    def _module_lock(self, module: str) -> threading.RLock:
        with self._lock:
            lock = self._module_locks.get(module)
            if lock is None:
                lock = self._module_locks[module] = threading.RLock()
            return lock

    def _fail(self, module: str, exc: BaseException, staged: dict[str, Task[Any]]) -> None:
        """Remember that ``module`` failed to import, publish the tasks of modules
        that did import cleanly on the way, and break the others."""
        what = _describe(exc)
        broken = []
        with self._lock:
            self._failed[module] = what
            for name, task in staged.items():
                owner = task.fn.__module__
                if owner != module and owner in sys.modules:
                    self._publish(task)  # a module imported along the way, cleanly
                    continue
                # This module's task, or one of a module that failed with it (imported by it).
                self._failed.setdefault(owner, what)
                self._broken[name] = owner
                broken.append(name)
            # A lazy entry of this module that registered nothing before the failure.
            for name, entry in list(self._lazy.items()):
                if entry.module == module:
                    self._broken[name] = module
                    broken.append(name)
            for name in broken:
                self._tasks.pop(name, None)
                self._lazy.pop(name, None)
        log.error(
            "task module %r failed to import: %s; %s until it is fixed and the worker restarted",
            module,
            what,
            f"the tasks it registered ({', '.join(sorted(set(broken)))}) fail their jobs"
            if broken
            else "jobs naming it fail",
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def _import_error(self, name: str | None, module: str) -> TaskImportError:
        what = self._failed.get(module, "an error")
        subject = f"task {name!r} cannot run: importing its module" if name else "importing task module"
        return TaskImportError(
            f"{subject} {module!r} raised {what}; fix the module (a task module must not exit or raise at "
            "import) and restart the worker",
            module=module,
        )

    def _task_at(self, path: str, name: str, *, file: str | None = None) -> Task[Any]:
        module_name, qualname = _split_path(path, name)
        try:
            module = self.import_module(module_name, file=file)
        except TaskImportError as exc:
            with self._lock:
                owner = self._broken.setdefault(name, exc.module)
            raise self._import_error(name, owner) from None
        except TaskNotFound as exc:
            raise TaskNotFound(f"task {name!r}: {exc}") from None
        return _task_in(module, module_name, qualname, name)

    # -- reading --------------------------------------------------------------
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
            self._failed.clear()
            self._broken.clear()


def _same_origin(a: Task[Any], b: Task[Any]) -> bool:
    # A script's tasks are registered as __main__ and again under their module
    # name when imported: both are the same task.
    if a.path == b.path:
        return True
    return a.fn.__qualname__ == b.fn.__qualname__ and "__main__" in (a.fn.__module__, b.fn.__module__)


def _describe(exc: BaseException) -> str:
    """``SystemExit('API_KEY not set')``: the exception as a person reads it."""
    try:
        return repr(exc)
    except Exception:
        return f"{type(exc).__name__}(<repr failed>)"


class _NotFound(Exception):
    """No module of that name (nothing was run)."""


def _split_path(path: str, label: str) -> tuple[str, str]:
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise TaskNotFound(f"task {label!r}: {path!r} is not a 'module:function' path")
    return module_name, qualname


def _load_module(module_name: str, file: str | None) -> ModuleType:
    """Import ``module_name``, or load ``file`` under that name when no such
    module is found. Raises :class:`_NotFound` when neither exists; anything
    the module's code raises propagates."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise  # the module exists and imports something that does not
        if file is None:
            raise _NotFound(f"module {module_name!r} was not found ({exc}); is the project root on the path?") from None
    spec = importlib.util.spec_from_file_location(module_name, Path(file))
    if spec is None or spec.loader is None or not Path(file).is_file():
        raise _NotFound(f"module {module_name!r} was not found, nor its file {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _task_in(module: ModuleType, module_name: str, qualname: str, label: str) -> Task[Any]:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise TaskNotFound(f"task {label!r}: module {module_name!r} has no attribute {qualname!r}")
    if not isinstance(obj, Task):
        raise TaskNotFound(f"task {label!r}: {module_name}:{qualname} is not decorated with @task")
    return obj


def import_task(path: str, *, file: str | None = None, name: str | None = None) -> Task[Any]:
    """Import ``module:qualname`` and return the task object found there, with
    no registry (a process-pool child); a worker imports through
    :meth:`TaskRegistry.import_module`, which remembers modules that fail.

    When the module is not importable by name and ``file`` is given, the file
    is loaded directly (tasks outside any package on ``sys.path``).
    """
    label = name or path
    module_name, qualname = _split_path(path, label)
    try:
        module = _load_module(module_name, file)
    except _NotFound as exc:
        raise TaskNotFound(f"task {label!r}: {exc}") from None
    except BaseException as exc:
        # A module that calls sys.exit() at import (a missing API key, say) is
        # an import failure like any other: it must never end the caller's thread.
        raise TaskImportError(
            f"task {label!r} cannot run: importing its module {module_name!r} raised {_describe(exc)}; fix the "
            "module (a task module must not exit or raise at import)",
            module=module_name,
        ) from (exc if isinstance(exc, Exception) else None)
    return _task_in(module, module_name, qualname, label)


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
