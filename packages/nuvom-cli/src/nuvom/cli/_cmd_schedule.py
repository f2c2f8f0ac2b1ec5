"""Schedules: ``schedule list|show|pause|resume|cancel|run-now`` and ``runscheduler``."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer
from nuvom.cli._errors import NotFound
from nuvom.cli._output import Format

if TYPE_CHECKING:
    from nuvom.schedule import Schedule

__all__ = ["runscheduler", "schedule_app"]

log = logging.getLogger("nuvom.cli")

Key = Annotated[str, typer.Argument(metavar="KEY", help="The schedule's key (`nuvom schedule list` shows them).")]
FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", case_sensitive=False, help="table for people, json for scripts.")
]

schedule_app = typer.Typer(
    help="List and steer schedules (task.schedule(), @task(schedule=...)).", no_args_is_help=True
)


@schedule_app.callback()
def _schedule() -> None:
    """List and steer schedules (task.schedule(), @task(schedule=...))."""


def _open() -> None:
    from nuvom.cli._project import load_project_settings, setup_logging

    setup_logging(load_project_settings().log_level, quiet=True)


def schedule_document(s: Schedule) -> dict[str, Any]:
    """A schedule as ``--format json`` prints it."""
    return {
        "key": s.key,
        "task": s.task,
        "task_path": s.task_path,
        "args": s.args,
        "kwargs": s.kwargs,
        "kind": s.kind,
        "timing": s.timing(),
        "at": s.at,
        "interval": s.interval,
        "cron": s.cron,
        "timezone_name": s.timezone_name,
        "misfire": s.misfire,
        "overlap": s.overlap,
        "paused": s.paused,
        "next_run_at": s.next_run_at,
        "last_run_at": s.last_run_at,
        "last_job_id": s.last_job_id,
        "declared": s.declared,
        "created_at": s.created_at,
    }


def _get(key: str) -> Schedule:
    from nuvom.sdk import get_schedule

    found = get_schedule(key)
    if found is None:
        raise NotFound(f"no schedule with key {key!r}; `nuvom schedule list` shows the keys")
    return found


def _state(s: Schedule) -> str:
    if s.paused:
        return "[yellow]paused[/]"
    return "[dim]done[/]" if s.next_run_at is None else "[green]active[/]"


@schedule_app.command("list")
def schedule_list(format: FormatOpt = Format.table) -> None:
    """Every schedule, with its timing and next run.

    Example: [bold]nuvom schedule list --format json[/]
    """
    from nuvom.sdk import list_schedules

    _open()
    schedules = list_schedules()
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json({"count": len(schedules), "schedules": [schedule_document(s) for s in schedules]})
        return
    from nuvom.cli._output import console, fmt_time_short, note
    from rich.markup import escape
    from rich.table import Table

    if not schedules:
        note("no schedules: task.schedule(...) or @task(schedule=...) makes one")
        return
    table = Table(box=None, pad_edge=False, header_style="bold underline")
    # UTC, as the timing of one-off schedules: ticks are wall-clock instants that
    # every host must read alike (docs/scheduling.md).
    for col in ("key", "task", "timing", "state", "next run (UTC)", "last job"):
        table.add_column(col, overflow="fold")
    for s in schedules:
        table.add_row(
            escape(s.key),
            escape(s.task),
            escape(s.timing()),
            _state(s),
            fmt_time_short(s.next_run_at, utc=True),
            s.last_job_id or "-",
        )
    console().print(table)


def _print(s: Schedule) -> None:
    from nuvom.cli._output import console, fmt_time, short_repr
    from rich.markup import escape
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("key", escape(s.key))
    grid.add_row("task", f"{escape(s.task)}  [dim]{escape(s.task_path or '')}[/]")
    grid.add_row("args", escape(short_repr(s.args, 400)))
    grid.add_row("kwargs", escape(short_repr(s.kwargs, 400)))
    grid.add_row("timing", escape(s.timing()) + ("  [dim](declared in @task)[/]" if s.declared else ""))
    grid.add_row("misfire", f"{s.misfire}, overlap {'allowed' if s.overlap else 'skipped'}")
    grid.add_row("state", _state(s))
    grid.add_row("next run", fmt_time(s.next_run_at, utc=True))
    grid.add_row("last run", fmt_time(s.last_run_at, utc=True))
    grid.add_row("last job", s.last_job_id or "-")
    console().print(grid)


@schedule_app.command("show")
def schedule_show(key: Key, format: FormatOpt = Format.table) -> None:
    """One schedule in detail: arguments, timing, policies, next and last run.

    Example: [bold]nuvom schedule show report:3fa2c9d01b7e[/]
    """
    _open()
    s = _get(key)
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json(schedule_document(s))
        return
    _print(s)


def _steer(key: str, action: str, format: Format) -> None:
    from nuvom import sdk
    from rich.markup import escape

    _open()
    if action == "cancel":
        s = _get(key)
        sdk.cancel_schedule(key)
        doc: dict[str, Any] = {"cancelled": key, "schedule": schedule_document(s)}
        text = f"cancelled schedule [bold]{escape(key)}[/] (jobs it queued stay queued)"
    else:
        changed = sdk.pause_schedule(key) if action == "pause" else sdk.resume_schedule(key)
        if changed is None:
            raise NotFound(f"no schedule with key {key!r}; `nuvom schedule list` shows the keys")
        doc = {action + "d": key, "schedule": schedule_document(changed)}
        text = f"{action}d schedule [bold]{escape(key)}[/]"
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json(doc)
        return
    from nuvom.cli._output import console

    console().print(text)


@schedule_app.command("pause")
def schedule_pause(key: Key, format: FormatOpt = Format.table) -> None:
    """Stop firing a schedule until it is resumed.

    Example: [bold]nuvom schedule pause report:3fa2c9d01b7e[/]
    """
    _steer(key, "pause", format)


@schedule_app.command("resume")
def schedule_resume(key: Key, format: FormatOpt = Format.table) -> None:
    """Fire a paused schedule again; ticks missed meanwhile follow its misfire policy.

    Example: [bold]nuvom schedule resume report:3fa2c9d01b7e[/]
    """
    _steer(key, "resume", format)


@schedule_app.command("cancel")
def schedule_cancel(key: Key, format: FormatOpt = Format.table) -> None:
    """Delete a schedule; jobs it already queued stay queued.

    Example: [bold]nuvom schedule cancel report:3fa2c9d01b7e[/]
    """
    _steer(key, "cancel", format)


@schedule_app.command("run-now")
def schedule_run_now(key: Key, format: FormatOpt = Format.table) -> None:
    """Queue one job of a schedule now, besides its ticks; prints the job id.

    Example: [bold]nuvom schedule run-now report:3fa2c9d01b7e[/]
    """
    from nuvom.sdk import run_schedule_now

    _open()
    job = run_schedule_now(key)
    if job is None:
        raise NotFound(f"no schedule with key {key!r}; `nuvom schedule list` shows the keys")
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json({"schedule": key, "job": job_document(job)})
        return
    from nuvom.cli._output import console

    console().print(f"queued [bold]{job.id}[/] (schedule {key}, task {job.func_name})")


# -- runscheduler ---------------------------------------------------------------
def runscheduler() -> None:
    """Fire due schedules until Ctrl+C (SIGINT) or SIGTERM; run no jobs.

    Example: [bold]nuvom runscheduler[/]

    Every worker already fires schedules: this is for a process that only does
    that. Any number may run beside workers; each tick still becomes one job.
    """
    import importlib

    from nuvom.app import default_app
    from nuvom.cli._cmd_worker import register_manifest_tasks
    from nuvom.cli._project import load_project_settings, project_on_path, setup_logging

    root = project_on_path()
    settings = load_project_settings()
    setup_logging(settings.log_level, rich=True, log_format=settings.log_format)
    from nuvom._scheduler import SchedulerLoop, register_declared

    app = default_app()
    # The project's tasks (manifest, NUVOM_TASK_MODULES): their declared schedules are stored.
    for module in settings.task_module_list():
        importlib.import_module(module)
    register_manifest_tasks(settings, root)
    stop_flag: list[int] = []

    def _request_stop(signum: int, frame: Any) -> None:
        stop_flag.append(signum)  # no lock in a signal handler: the loop below polls

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    loop = None
    try:
        register_declared(app, app.registry)
        loop = SchedulerLoop(app).start()
        log.info("scheduler started: queue %s, data dir %s", type(app.queue).__name__, settings.data_dir)
        idle = threading.Event()
        while not stop_flag:
            idle.wait(0.1)
        log.info("scheduler stopping")
    finally:
        if loop is not None:
            loop.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(0)
