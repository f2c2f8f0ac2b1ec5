"""A scan: walk the project, analyse new and changed files, write the manifest."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from nuvom.discovery._manifest import DiscoveryError, ManifestError, load_manifest, manifest_path_for, write_manifest
from nuvom.discovery._models import DiscoveryReport, FileRecord, Manifest, ScanError, TaskInfo
from nuvom.discovery._parser import PARSER_VERSION, module_name, parse_tasks
from nuvom.discovery._walker import PathFilter, Walk, walk

__all__ = ["discover_tasks", "scan"]

log = logging.getLogger("nuvom.discovery")

# A file modified less than this before a scan may be modified again within
# the file system's time stamp granularity without its (size, mtime) changing;
# its time stamp is not trusted and the next scan hashes it again. Git does the same
# ("racy git").
_RACY_NS = 2_000_000_000
# Progress is reported at most this often (seconds), plus once at the end.
_PROGRESS_EVERY = 0.05


def _generator() -> str:
    try:
        from importlib.metadata import version

        return f"nuvom-discovery {version('nuvom-discovery')}"
    except Exception:
        return "nuvom-discovery"


def discover_tasks(
    root: Path | str,
    manifest_path: Path | str | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DiscoveryReport:
    """Find every task under ``root`` and bring the manifest up to date.

    ``manifest_path`` defaults to ``NUVOM_MANIFEST_PATH`` (``.nuvom/manifest.json``),
    relative to ``root`` when relative. Files whose size and time stamp match
    the manifest are not read; files whose content hash matches are not
    parsed. ``include`` / ``exclude`` are gitignore-style patterns relative to
    ``root``, on top of ``.nuvomignore``. ``progress(done, total)`` is called
    as files are processed (at most 20 times a second, and once at the end).

    Nothing is imported. Unreadable files and syntax errors are reported in
    :attr:`DiscoveryReport.errors` and the scan goes on. The manifest is
    written atomically, and only when something changed. A ``root`` that is
    not a folder, or a manifest that cannot be written, raise
    :class:`DiscoveryError` (a :class:`~nuvom.errors.NuvomError`).
    """
    return scan(root, manifest_path, include=include, exclude=exclude, progress=progress)[0]


def scan(
    root: Path | str,
    manifest_path: Path | str | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DiscoveryReport, Walk]:
    """:func:`discover_tasks`, also returning the walk (for the dev watcher)."""
    started = time.perf_counter()
    root = Path(root).resolve()
    if not root.is_dir():
        raise DiscoveryError(f"cannot scan {root}: not a folder")
    path = manifest_path_for(root, manifest_path)
    old = _previous(path)
    files = walk(root, PathFilter(root, include, exclude))
    report = DiscoveryReport(root=root, manifest_path=path, files_scanned=len(files.files))

    cached: dict[str, FileRecord] = {}
    old_tasks: dict[str, list[TaskInfo]] = defaultdict(list)
    old_errors: dict[str, list[ScanError]] = defaultdict(list)
    if old is not None:
        for task in old.tasks:
            old_tasks[task.file].append(task)
        for error in old.errors:
            old_errors[error.file].append(error)
        if old.parser_version == PARSER_VERSION:
            cached = old.files

    strip_src = (root / "src").is_dir() and not (root / "src" / "__init__.py").exists()
    trusted_before = time.time_ns() - _RACY_NS
    records: dict[str, FileRecord] = {}
    tasks: list[TaskInfo] = []
    errors: list[ScanError] = []
    changed_files: list[str] = []  # new, changed, unreadable, removed, or moved to another module path
    dirty = old is None or old.parser_version != PARSER_VERSION  # the manifest must be written
    total = len(files.files)
    tick = _Progress(progress, total)

    for done, (rel, abspath, st) in enumerate(files.files, 1):
        record = cached.get(rel)
        if record is not None and record[1] == st.st_size and record[2] == st.st_mtime_ns:
            records[rel] = record
            if _keep(tasks, errors, old_tasks.get(rel), old_errors.get(rel), rel, strip_src):
                dirty = True
                changed_files.append(rel)
            tick(done)
            continue
        try:
            with open(abspath, "rb") as fh:
                source = fh.read()
        except OSError as exc:
            errors.append(ScanError(rel, None, f"cannot be read ({exc.strerror})"))
            changed_files.append(rel)
            dirty = True
            tick(done)
            continue
        digest = hashlib.sha256(source).hexdigest()
        trusted = st.st_mtime_ns < trusted_before and st.st_size == len(source)
        records[rel] = new_record = (digest, len(source), st.st_mtime_ns if trusted else -1)
        dirty |= new_record != record
        if record is not None and record[0] == digest:
            # Touched, not changed: the time stamp moved, the content did not.
            if _keep(tasks, errors, old_tasks.get(rel), old_errors.get(rel), rel, strip_src):
                dirty = True
                changed_files.append(rel)
        else:
            parsed = parse_tasks(source, rel, module_name(rel, strip_src=strip_src))
            tasks.extend(parsed.tasks)
            errors.extend(parsed.errors)
            report.files_parsed += 1
            changed_files.append(rel)
        tick(done)
    tick.finish()

    if old is not None:
        gone = [rel for rel in old.files if rel not in records]
        changed_files.extend(gone)
        dirty |= bool(gone) or old.include != list(include or []) or old.exclude != list(exclude or [])
    report.files_changed = sorted(set(changed_files))
    report.tasks, report.errors = tasks, errors
    # Unchanged files kept their task objects: only tasks of changed files can differ.
    changed = set(report.files_changed)
    before = [t for t in old.tasks if t.file in changed] if old is not None else []
    _compare(report, before, [t for t in tasks if t.file in changed])
    report.duplicates = _duplicates(tasks)

    manifest = Manifest(
        generator=_generator(),
        parser_version=PARSER_VERSION,
        scanned_at=time.time(),
        include=list(include or []),
        exclude=list(exclude or []),
        tasks=tasks,
        errors=errors,
        files=records,
    )
    if dirty:
        write_manifest(path, manifest)
        report.written = True
    report.elapsed = time.perf_counter() - started
    log.debug(
        "scanned %d files (%d parsed) under %s in %.3f s: %d tasks, %d errors",
        report.files_scanned,
        report.files_parsed,
        root,
        report.elapsed,
        len(tasks),
        len(errors),
    )
    return report, files


def _previous(path: Path) -> Manifest | None:
    try:
        return load_manifest(path)
    except ManifestError as exc:
        log.warning("%s; scanning every file again", exc)
        return None


def _keep(
    tasks: list[TaskInfo],
    errors: list[ScanError],
    old_tasks: list[TaskInfo] | None,
    old_errors: list[ScanError] | None,
    rel: str,
    strip_src: bool,
) -> bool:
    """Carry an unchanged file's tasks and errors over; True if they had to change."""
    if old_errors:
        errors.extend(old_errors)
    if not old_tasks:
        return False
    # The module path of an unchanged file can still change (a src/__init__.py appeared).
    module = module_name(rel, strip_src=strip_src)
    if old_tasks[0].module == module:
        tasks.extend(old_tasks)
        return False
    tasks.extend(t.model_copy(update={"module": module}) for t in old_tasks)
    return True


def _key(task: TaskInfo) -> tuple[str, str]:
    return task.name, task.file


def _compare(report: DiscoveryReport, before: list[TaskInfo], after: list[TaskInfo]) -> None:
    old = {_key(t): t for t in before}
    new = {_key(t): t for t in after}
    report.added = [t for k, t in new.items() if k not in old]
    report.removed = [t for k, t in old.items() if k not in new]
    report.changed = [t for k, t in new.items() if k in old and _meta(old[k]) != _meta(t)]


def _meta(task: TaskInfo) -> dict[str, object]:
    return task.model_dump(exclude={"line"})


def _duplicates(tasks: list[TaskInfo]) -> dict[str, list[TaskInfo]]:
    first: dict[str, TaskInfo] = {}
    repeated: set[str] = set()
    for task in tasks:
        if first.setdefault(task.name, task) is not task:
            repeated.add(task.name)
    if not repeated:
        return {}
    groups: dict[str, list[TaskInfo]] = {name: [] for name in sorted(repeated)}
    for task in tasks:
        if task.name in groups:
            groups[task.name].append(task)
    return groups


class _Progress:
    __slots__ = ("callback", "last", "total")

    def __init__(self, callback: Callable[[int, int], None] | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.last = time.perf_counter()
        if callback is not None:
            callback(0, total)

    def __call__(self, done: int) -> None:
        if self.callback is None:
            return
        now = time.perf_counter()
        if now - self.last >= _PROGRESS_EVERY:
            self.last = now
            self.callback(done, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.total, self.total)
