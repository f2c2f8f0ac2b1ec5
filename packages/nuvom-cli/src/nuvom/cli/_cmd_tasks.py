"""Tasks: ``list tasks`` (from the manifest) and ``discover tasks`` (scan and update it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from nuvom.cli._help import NuvomCommand, sub_app
from nuvom.cli._output import Format

if TYPE_CHECKING:
    from nuvom.discovery import DiscoveryReport

__all__ = ["discover_app", "list_app", "task_document"]

FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", case_sensitive=False, metavar="table|json", help="table for people, json for scripts."
    ),
]
#: Trees with at least this many Python files get a progress bar (on a terminal).
PROGRESS_THRESHOLD = 200
#: At most this many added / removed / changed lines each in the table output.
DIFF_LINES = 50


def task_document(info: Any) -> dict[str, Any]:
    """The stable JSON shape of a discovered task (docs/cli.md, "Task document")."""
    return {
        "name": info.name,
        "module": info.module,
        "qualname": info.qualname,
        "file": str(info.file) if info.file is not None else None,
        "line": info.line,
        "is_async": bool(info.is_async),
        "retries": info.retries,
        "retry_delay_secs": info.retry_delay_secs,
        "timeout_secs": info.timeout_secs,
        "timeout_policy": info.timeout_policy,
        "store_result": info.store_result,
        "tags": list(info.tags or []),
        "description": info.description,
    }


def _fmt_value(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value}{unit}"


def _tasks_table(tasks: list[Any], title: str) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("module")
    table.add_column("retries", justify="right")
    table.add_column("timeout", justify="right")
    table.add_column("tags")
    table.add_column("description", overflow="fold")
    for info in sorted(tasks, key=lambda t: t.name):
        retries = _fmt_value(info.retries)
        if info.retries and info.retry_delay_secs:
            retries += f" / {_fmt_value(info.retry_delay_secs, ' s')}"
        timeout = _fmt_value(info.timeout_secs, " s")
        if info.timeout_policy:
            timeout += f" ({info.timeout_policy})"
        table.add_row(
            escape(info.name) + (" [dim](async)[/]" if info.is_async else ""),
            escape(f"{info.module}:{info.qualname}"),
            retries,
            timeout,
            escape(", ".join(info.tags or [])),
            escape(info.description or ""),
        )
    return table


# -- list tasks -----------------------------------------------------------------
list_app = sub_app("List what the project defines.")


@list_app.callback()
def _list() -> None:
    """List what the project defines."""


@list_app.command("tasks", cls=NuvomCommand)
def list_tasks(
    tag: Annotated[str | None, typer.Option("--tag", metavar="TAG", help="Only tasks with this tag.")] = None,
    format: FormatOpt = Format.table,
) -> None:
    """The project's @task functions, from the manifest: name, module, retries, timeout, tags, description.

    Example: [bold]nuvom list tasks --tag email[/]

    Without a manifest yet, the project is scanned first (as [bold]nuvom discover tasks[/] does).
    """
    from nuvom.cli._output import note
    from nuvom.cli._project import load_project_settings, setup_logging
    from nuvom.discovery import discover_tasks, load_manifest, manifest_path_for

    settings = load_project_settings()
    setup_logging(settings.log_level, quiet=True)
    root = Path.cwd()
    manifest_path = manifest_path_for(root, settings.manifest_path)
    manifest = load_manifest(manifest_path)
    if manifest is None:
        report = discover_tasks(root, manifest_path)
        note(f"no manifest yet: scanned the project and wrote {report.manifest_path}")
        tasks = list(report.tasks)
    else:
        tasks = list(manifest.tasks)
    if tag is not None:
        tasks = [t for t in tasks if tag in (t.tags or [])]
    tasks.sort(key=lambda t: t.name)
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json({"manifest": str(manifest_path), "count": len(tasks), "tasks": [task_document(t) for t in tasks]})
        return
    if not tasks:
        note(
            "no tasks found"
            + (f" with tag {tag!r}" if tag else ": decorate functions with @task, then `nuvom discover tasks`")
        )
        return
    from nuvom.cli._output import console

    console().print(_tasks_table(tasks, f"{len(tasks)} task(s)  [dim]{manifest_path}[/]"))


# -- discover tasks -------------------------------------------------------------
discover_app = sub_app("Find the project's tasks.")


@discover_app.callback()
def _discover() -> None:
    """Find the project's tasks."""


class _Progress:
    """A rich progress bar on stderr, opened only once the tree proves large."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_THRESHOLD:
            return
        if self.bar is None:
            from nuvom.cli._output import err_console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("scanning"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("scan", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def discovery_document(report: DiscoveryReport) -> dict[str, Any]:
    """The stable JSON shape of ``discover tasks`` (docs/cli.md)."""
    return {
        "manifest": str(report.manifest_path) if report.manifest_path else None,
        "files_scanned": report.files_scanned,
        "files_parsed": report.files_parsed,
        "elapsed_secs": round(report.elapsed, 6),
        "count": len(report.tasks),
        "tasks": [task_document(t) for t in sorted(report.tasks, key=lambda t: t.name)],
        "added": sorted(t.name for t in report.added),
        "removed": sorted(t.name for t in report.removed),
        "changed": sorted(t.name for t in report.changed),
        "errors": [{"file": str(e.file), "line": e.line, "message": e.message} for e in report.errors],
        "duplicates": {
            name: [f"{t.file}:{t.line}" for t in infos] for name, infos in sorted(report.duplicates.items())
        },
    }


@discover_app.command("tasks", cls=NuvomCommand)
def discover_tasks_cmd(
    root: Annotated[
        Path | None, typer.Option("--root", metavar="DIR", help="Directory to scan (default: the current directory).")
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", "-i", metavar="PATTERN", help="Only paths matching this gitignore-style pattern (repeatable)."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            "-e",
            metavar="PATTERN",
            help="Skip paths matching this pattern (repeatable), on top of .nuvomignore.",
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress bar on large trees (default: when stderr is a terminal)."
        ),
    ] = None,
    format: FormatOpt = Format.table,
) -> None:
    """Scan the project for @task functions (without importing it) and update the manifest.

    Example: [bold]nuvom discover tasks --exclude 'scripts/**'[/]

    Shows which tasks were added, removed or changed since the last scan; files
    that do not parse are reported and skipped.
    """
    from nuvom.cli._output import note
    from nuvom.cli._project import load_project_settings, setup_logging
    from nuvom.discovery import discover_tasks

    settings = load_project_settings()
    setup_logging(settings.log_level, quiet=True)
    from nuvom.cli._errors import EXIT_USAGE, CliError

    scan_root = (root or Path.cwd()).resolve()
    try:
        is_dir = scan_root.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise CliError(f"--root {root}: {exc.strerror or exc}", EXIT_USAGE) from None
    if not is_dir:
        raise CliError(f"--root {root}: not a directory", EXIT_USAGE)
    bar = _Progress(progress)
    try:
        report = discover_tasks(
            scan_root, settings.manifest_path, include=include or None, exclude=exclude or None, progress=bar
        )
    finally:
        bar.close()
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json(discovery_document(report))
        return
    for err in report.errors:
        note(f"warning: {err}")
    for name, infos in sorted(report.duplicates.items()):
        where = ", ".join(f"{t.file}:{t.line}" for t in infos)
        note(f"warning: task name {name!r} is defined more than once ({where}); pass name='...' to @task")
    _print_report(report)


def _print_report(report: DiscoveryReport) -> None:
    from nuvom.cli._output import console
    from rich.markup import escape

    out = console()
    summary = (
        f"[bold]{len(report.tasks)}[/] task(s) in {report.files_parsed} parsed of {report.files_scanned} "
        f"file(s), {report.elapsed * 1000:.0f} ms"
    )
    if report.manifest_path:
        summary += f"  [dim]manifest {escape(str(report.manifest_path))}[/]"
    out.print(summary)
    if not (report.added or report.removed or report.changed):
        out.print("[dim]no changes since the last scan[/]")
    for label, style, sign, infos in (
        ("added", "green", "+", report.added),
        ("removed", "red", "-", report.removed),
        ("changed", "yellow", "~", report.changed),
    ):
        ordered = sorted(infos, key=lambda t: t.name)
        for info in ordered[:DIFF_LINES]:
            where = escape(f"{info.module}:{info.qualname}")
            out.print(f"  [{style}]{sign} {escape(info.name)}[/]  [dim]{where} ({label})[/]")
        if len(ordered) > DIFF_LINES:
            out.print(
                f"  [{style}]{sign} … {len(ordered) - DIFF_LINES} more {label}[/] [dim](--format json lists all)[/]"
            )
    if report.added or report.changed:
        out.print("[dim]nuvom list tasks  shows every task with its options[/]")
