"""Dev mode: keep a running worker's registry in step with the source.

Polling, so that it works on every platform and file system (network
mounts, containers) without a native dependency. Each tick compares the
time stamps of the files and folders of the last scan, of ``.nuvomignore``
and of the manifest: a few thousand ``stat`` calls, about a millisecond per
thousand files, then sleep. Only when something moved does it re-scan (which
reads only the changed files) and update the registry:

* tasks that disappeared are unregistered;
* a changed module that is already imported is reloaded, so that the next
  job runs the new code; its tasks are registered from the reloaded module;
* tasks of modules not imported yet are registered lazily, as at start-up.

A module that fails to reload (a syntax error mid-edit) is logged and
dropped from ``sys.modules``: its tasks are registered lazily again, and a job
that needs one fails with an error naming the task until the file is fixed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from nuvom.discovery._loader import add_import_roots, lazy_task, primary_definitions
from nuvom.discovery._models import DiscoveryReport, TaskInfo
from nuvom.discovery._parser import module_name
from nuvom.discovery._scan import scan
from nuvom.discovery._walker import IGNORE_FILE, Walk
from nuvom.registry import TaskRegistry

__all__ = ["DevWatcher"]

log = logging.getLogger("nuvom.discovery")

# Entries modified this recently are re-checked at every tick, whatever their
# time stamps say: a second change within the time stamp granularity would
# otherwise go unnoticed.
_RACY_NS = 2_000_000_000

_Stamp = tuple[int, int] | None


class DevWatcher:
    """Re-scans ``root`` when files change and applies the differences to ``registry``."""

    def __init__(
        self,
        root: Path,
        registry: TaskRegistry,
        manifest_path: Path,
        *,
        interval: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the dev watcher's interval must be > 0 seconds, got {interval}")
        self.root = Path(root).resolve()
        self.registry = registry
        self.manifest_path = manifest_path
        self.interval = interval
        self.include = list(include or [])
        self.exclude = list(exclude or [])
        self.scans = 0  # how many re-scans ran (tests and logs)
        self._stamps: dict[str, _Stamp] = {}
        self._stamped_at = 0
        self._manifest_stamp: _Stamp = None
        self._tasks: dict[str, TaskInfo] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> DiscoveryReport:
        """Scan once now (the registry is up to date when this returns), then poll in a thread."""
        report = self.sync()
        self._thread = threading.Thread(target=self._run, name="nuvom-discovery-watcher", daemon=True)
        self._thread.start()
        log.info("dev mode: watching %s for task changes every %.2g s", self.root, self.interval)
        return report

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        failing = ""
        while not self._stop.wait(self.interval):
            try:
                self.poll()
                failing = ""
            except Exception as exc:
                # Said once per distinct failure, not at every tick while it lasts.
                if str(exc) != failing:
                    failing = str(exc)
                    log.exception("dev watcher: re-scan of %s failed; trying at every poll", self.root)

    # -- one tick -------------------------------------------------------------
    def poll(self) -> DiscoveryReport | None:
        """Re-scan and update the registry if anything moved; ``None`` if nothing did."""
        if not self._moved():
            return None
        return self.sync()

    def sync(self) -> DiscoveryReport:
        """Re-scan now and apply what changed to the registry."""
        ignore_stamp = _stamp(str(self.root / IGNORE_FILE))
        report, files = scan(self.root, self.manifest_path, include=self.include, exclude=self.exclude)
        self.scans += 1
        self._apply(report)
        self._remember(files, ignore_stamp)
        for error in report.errors:
            if error.file in report.files_changed:
                log.warning("dev watcher: %s", error)
        return report

    def _moved(self) -> bool:
        recent = self._stamped_at - _RACY_NS
        for path, stamp in self._stamps.items():
            current = _stamp(path)
            if current != stamp or (current is not None and current[0] >= recent):
                return True
        # The manifest only tells that someone else re-scanned; our own writes
        # make it recent, so it is compared but never treated as racy.
        return _stamp(str(self.manifest_path)) != self._manifest_stamp

    def _remember(self, files: Walk, ignore_stamp: _Stamp) -> None:
        # The walk's own stats, taken before each file was read: an edit made
        # during the scan shows as a difference at the next poll.
        stamps: dict[str, _Stamp] = dict(files.dirs)
        for _, abspath, st in files.files:
            stamps[abspath] = (st.st_mtime_ns, st.st_size)
        stamps[str(self.root / IGNORE_FILE)] = ignore_stamp
        self._stamps = stamps
        self._stamped_at = files.started_ns
        self._manifest_stamp = _stamp(str(self.manifest_path))

    # -- registry -------------------------------------------------------------
    def _apply(self, report: DiscoveryReport) -> None:
        from nuvom.task import Task

        current = primary_definitions(report.tasks)
        previous, self._tasks = self._tasks, current
        add_import_roots(self.root, current.values())
        if self.scans == 1:
            # Start-up: as without dev mode, a task the process already imported wins.
            for task in current.values():
                self.registry.register_lazy(lazy_task(task, self.root), force=False)
            return

        for name, before in previous.items():
            new = current.get(name)
            if new is None or new.path != before.path:
                # Gone, or moved: the old definition must not block the new one.
                self.registry.unregister(name)
                if new is None:
                    log.info("dev watcher: task %r is gone, unregistered", name)
        changed = set(report.files_changed)
        reloaded = self._reload(changed, {t.module for t in current.values()})
        for name, task in current.items():
            old = previous.get(name)
            if old == task and task.file not in changed:
                continue
            module = reloaded.get(task.module)
            obj = getattr(module, task.qualname, None) if module is not None else None
            if isinstance(obj, Task):
                self.registry.register(obj, force=True)
            else:
                # Not imported yet, or its reload failed: imported afresh by the next job that needs it.
                self.registry.unregister(name)
                self.registry.register_lazy(lazy_task(task, self.root))
            log.info("dev watcher: task %r %s (%s:%d)", name, "updated" if old else "added", task.file, task.line)

    def _reload(self, changed: set[str], task_modules: set[str]) -> dict[str, ModuleType]:
        """Reload the imported modules among ``changed`` files, modules without
        tasks first so that task modules pick up their helpers' new code."""
        strip_src = (self.root / "src").is_dir() and not (self.root / "src" / "__init__.py").exists()
        loaded: list[tuple[str, Path, ModuleType]] = []
        for rel in changed:
            name, path = module_name(rel, strip_src=strip_src), self.root / rel
            _drop_bytecode(path)
            module = sys.modules.get(name)
            if module is not None and _is_file_of(module, path):
                loaded.append((name, path, module))
        loaded.sort(key=lambda item: (item[0] in task_modules, item[0]))
        out: dict[str, ModuleType] = {}
        for name, path, module in loaded:
            if not path.exists():
                sys.modules.pop(name, None)  # deleted: forget it
                continue
            try:
                out[name] = importlib.reload(module)
                log.info("dev watcher: reloaded %s", name)
            except Exception as exc:
                sys.modules.pop(name, None)
                log.error(
                    "dev watcher: reloading %s failed (%s: %s); its tasks fail until the file is fixed",
                    name,
                    type(exc).__name__,
                    exc,
                )
        return out


def _drop_bytecode(path: Path) -> None:
    # A .pyc is trusted when the source's size and mtime in whole seconds match:
    # an edit of the same size within the same second would import stale code.
    try:
        os.unlink(importlib.util.cache_from_source(str(path)))
    except (OSError, ValueError, NotImplementedError):
        pass


def _is_file_of(module: ModuleType, path: Path) -> bool:
    file: str | None = getattr(module, "__file__", None)
    if not file:
        return False
    return os.path.normcase(os.path.abspath(file)) == os.path.normcase(str(path))


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
