"""What discovery finds and keeps: tasks, scan errors, the manifest, a scan's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nuvom.job import TaskOptions
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MANIFEST_VERSION", "DiscoveryReport", "FileRecord", "Manifest", "ScanError", "TaskInfo"]

#: Format version of ``manifest.json``. A manifest of another version is not
#: read (``nuvom discover tasks`` writes a new one).
MANIFEST_VERSION = 2

#: ``(sha256 of the content, size, mtime_ns)`` of one scanned file. ``mtime_ns``
#: is ``-1`` when the file was modified too close to the scan for its time
#: stamp to be trusted; the next scan hashes it again.
FileRecord = tuple[str, int, int]


class TaskInfo(TaskOptions):
    """One ``@task`` function as found in the source, without importing it.

    Its options are core's :class:`~nuvom.job.TaskOptions` (the one model of a
    task's options), read from the decorator's literal arguments and checked
    by that model. Only literal arguments can be read statically; the names of
    the others are listed in ``dynamic_args`` and keep the defaults.
    """

    # A manifest written by a newer version may carry fields this one lacks.
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(description="Task name: the decorator's name= argument, else the function name.")
    module: str = Field(description="Dotted module path, relative to the project root.")
    qualname: str = Field(description="Name of the function in its module.")
    file: str = Field(description="Source file, POSIX path relative to the project root.")
    line: int = Field(description="Line of the def statement.")
    is_async: bool = False
    schedule: str | None = Field(
        None, description="@task(schedule=...): the cron expression, or 'every <seconds>s' for every(seconds)."
    )
    dynamic_args: list[str] = Field(
        default_factory=list, description="Decorator arguments that are not literals and were not captured."
    )

    @property
    def path(self) -> str:
        """``module:qualname``, the import path a job carries."""
        return f"{self.module}:{self.qualname}"

    def metadata(self) -> dict[str, object]:
        """The decorator options, as handed to the registry with a lazy task."""
        return self.model_dump(exclude={"name", "module", "qualname", "file", "line"})


@dataclass(frozen=True)
class ScanError:
    """A file that could not be read or parsed, or a decorator discovery could not understand."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class Manifest(BaseModel):
    """The content of ``manifest.json``.

    ``files`` maps every scanned file to its :data:`FileRecord`, so that a
    re-scan reads only files whose size or time stamp changed and parses only
    those whose content hash changed.
    """

    model_config = ConfigDict(extra="ignore")

    version: int = MANIFEST_VERSION
    generator: str = ""
    parser_version: int = 0
    scanned_at: float = 0.0
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    tasks: list[TaskInfo] = Field(default_factory=list)
    errors: list[ScanError] = Field(default_factory=list)
    files: dict[str, FileRecord] = Field(default_factory=dict)


@dataclass
class DiscoveryReport:
    """What one :func:`~nuvom.discovery.discover_tasks` run found and changed.

    ``added`` / ``removed`` / ``changed`` compare with the manifest the run
    started from: a task is identified by its name and file, and is
    ``changed`` when any of its metadata (not its line) differs.
    """

    root: Path
    manifest_path: Path
    tasks: list[TaskInfo] = field(default_factory=list)
    added: list[TaskInfo] = field(default_factory=list)
    removed: list[TaskInfo] = field(default_factory=list)
    changed: list[TaskInfo] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    #: Task name -> every definition, for names defined in more than one place.
    duplicates: dict[str, list[TaskInfo]] = field(default_factory=dict)
    #: Python files found by the walk.
    files_scanned: int = 0
    #: Files that were new or whose content changed, and so were analysed again.
    files_parsed: int = 0
    #: Relative paths of files added, changed or removed since the previous manifest.
    files_changed: list[str] = field(default_factory=list)
    #: Whether the manifest file was (re)written; an unchanged scan leaves it alone.
    written: bool = False
    elapsed: float = 0.0

    @property
    def has_changes(self) -> bool:
        return bool(self.added or self.removed or self.changed)
