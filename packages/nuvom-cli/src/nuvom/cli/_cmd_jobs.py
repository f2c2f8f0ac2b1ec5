"""Reading and steering jobs: ``status``, ``inspect job``, ``history recent``, ``retry job``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from nuvom.cli._help import NuvomCommand, sub_app
from nuvom.cli._errors import EXIT_INVALID, EXIT_USAGE, CliError, NotFound
from nuvom.cli._output import Format

if TYPE_CHECKING:
    from nuvom.job import Job

__all__ = ["MAX_LIMIT", "history_app", "inspect_app", "retry_app", "status"]

#: The most jobs `history recent` prints at once (larger numbers are a usage error, not a backend overflow).
MAX_LIMIT = 10_000

JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The id printed by .delay() or `nuvom history recent`.")]
FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", case_sensitive=False, metavar="table|json", help="table for people, json for scripts.")
]


def _open() -> Any:
    from nuvom.cli._project import load_project_settings, setup_logging

    settings = load_project_settings()
    setup_logging(settings.log_level, quiet=True)
    return settings


def _where(settings: Any) -> str:
    from nuvom.backends import get_queue_backend, get_result_backend

    queue, results = get_queue_backend(), get_result_backend()
    text = f"queue {type(queue).__name__}, results {type(results).__name__}, data dir {settings.data_dir}"
    if not getattr(queue, "shared_between_processes", True):
        text += "; the memory backend only sees jobs of this process: set NUVOM_QUEUE_BACKEND=file"
    return text


def _find(job_id: str) -> Job:
    from nuvom.sdk import get_job

    settings = _open()
    job = get_job(job_id)  # a malformed id raises InvalidJobId
    if job is None:
        raise NotFound(f"no job with id {job_id!r} ({_where(settings)})")
    return job


# -- status -------------------------------------------------------------------
def status(job_id: JobId, format: FormatOpt = Format.table) -> None:
    """Show a job's status and its result or error.

    Example: [bold]nuvom status 3f2c9a0d8e6b4c1fa2b7d9e0c4a1b2f3[/]

    Exit code 0 whenever the job is found, whatever its status (read
    [bold]status[/] in [bold]--format json[/]); 3 when no backend knows the id.
    """
    job = _find(job_id)
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json(job_document(job))
        return
    from nuvom.cli._output import console, fmt_duration, fmt_time, short_repr, styled_status
    from rich.markup import escape
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("job", f"{job.id}  ({escape(job.func_name)})")
    grid.add_row("status", styled_status(job.status.value))
    grid.add_row("attempts", f"{job.attempts} of at most {job.max_retries + 1}")
    if job.finished_at is not None:
        took = fmt_duration(job.finished_at - job.started_at) if job.started_at else "-"
        grid.add_row("finished", f"{fmt_time(job.finished_at)} (last attempt {took})")
    elif job.not_before is not None:
        grid.add_row("next attempt", fmt_time(job.not_before))
    if job.status.value == "SUCCESS":
        grid.add_row("result", escape(short_repr(job.result, 200)) if job.store_result else "(not stored)")
    if job.error is not None:
        grid.add_row("error", f"[red]{escape(job.error.type)}: {escape(job.error.message)}[/]")
        grid.add_row("", f"[dim]nuvom inspect job {job.id}  shows the traceback[/]")
    console().print(grid)


# -- inspect job --------------------------------------------------------------
inspect_app = sub_app("Inspect a job in detail.")


@inspect_app.callback()
def _inspect() -> None:
    """Inspect a job in detail."""


@inspect_app.command("job", cls=NuvomCommand)
def inspect_job(job_id: JobId, format: FormatOpt = Format.table) -> None:
    """Everything recorded about a job: arguments, result, error, traceback, attempts, timings.

    Example: [bold]nuvom inspect job 3f2c9a0d8e6b4c1fa2b7d9e0c4a1b2f3 --format json[/]
    """
    job = _find(job_id)
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json(job_document(job))
        return
    _print_job(job)


def _print_job(job: Job) -> None:
    from nuvom.cli._output import console, fmt_duration, fmt_time, short_repr, styled_status
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("id", job.id)
    grid.add_row("task", f"{escape(job.func_name)}  [dim]{escape(job.task_path or '')}[/]")
    grid.add_row("status", styled_status(job.status.value))
    grid.add_row("args", escape(short_repr(job.args, 400)))
    grid.add_row("kwargs", escape(short_repr(job.kwargs, 400)))
    if job.status.value == "SUCCESS":
        grid.add_row("result", escape(short_repr(job.result, 2000)) if job.store_result else "(not stored)")
    if job.error is not None:
        grid.add_row("error", f"[red]{escape(job.error.type)}: {escape(job.error.message)}[/]")
    grid.add_row(
        "attempts",
        f"{job.attempts} of at most {job.max_retries + 1} (retries {job.max_retries}, "
        f"delay {job.retry_delay_secs:g} s)",
    )
    timeout = f"{job.timeout_secs:g} s" if job.timeout_secs else "worker default (NUVOM_JOB_TIMEOUT_SECS)"
    grid.add_row("timeout", f"{timeout}, policy {job.timeout_policy or 'default'}")
    grid.add_row("created", fmt_time(job.created_at))
    if job.not_before is not None and not job.done:
        grid.add_row("not before", fmt_time(job.not_before))
    grid.add_row("started", fmt_time(job.started_at))
    grid.add_row("finished", fmt_time(job.finished_at))
    if job.started_at is not None and job.finished_at is not None:
        grid.add_row("duration", fmt_duration(job.finished_at - job.started_at) + " (last attempt)")
    if job.history and job.finished_at is not None:
        grid.add_row("total", fmt_duration(job.finished_at - job.created_at) + " from queued to finished")
    grid.add_row("worker", escape(job.worker_id or "-"))
    if job.tags:
        grid.add_row("tags", escape(", ".join(job.tags)))
    if job.retry_of:
        grid.add_row("retry of", job.retry_of)
    out.print(grid)
    if job.history:
        out.print()
        table = Table(title="Attempts", title_justify="left", title_style="bold")
        for col in ("#", "outcome", "started", "duration", "error"):
            table.add_column(col, overflow="fold")
        for a in job.history:
            took = fmt_duration(a.finished_at - a.started_at) if a.finished_at else "-"
            err = f"{a.error.type}: {a.error.message}" if a.error else ""
            style = {"success": "green", "error": "red", "timeout": "red", "lost": "yellow"}.get(a.outcome, "")
            table.add_row(str(a.number), f"[{style}]{a.outcome}[/]", fmt_time(a.started_at), took, escape(err))
        out.print(table)
    tb = job.error.traceback if job.error is not None else None
    if tb:
        out.print(Panel(Text(tb.rstrip()), title="Traceback (last attempt)", title_align="left", border_style="red"))


# -- history recent -------------------------------------------------------------
history_app = sub_app("Browse finished jobs.")


@history_app.callback()
def _history() -> None:
    """Browse finished jobs."""


@history_app.command("recent", cls=NuvomCommand)
def history_recent(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=MAX_LIMIT, metavar="N", help="How many jobs to show.")] = 20,
    status: Annotated[str | None, typer.Option("--status", "-s", metavar="STATUS", help="SUCCESS or FAILED.")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", metavar="NAME", help="Only jobs of this task.")] = None,
    format: FormatOpt = Format.table,
) -> None:
    """The most recently finished jobs, newest first.

    Example: [bold]nuvom history recent --limit 10 --status FAILED --task send_email[/]
    """
    from nuvom.sdk import list_jobs

    _open()
    if status is not None and status.upper() not in ("SUCCESS", "FAILED"):
        raise CliError(
            f"--status {status!r}: history holds finished jobs, SUCCESS or FAILED; "
            "a queued or running job is read with `nuvom status <id>`",
            EXIT_USAGE,
        )
    jobs = list_jobs(status=status.upper() if status else None, limit=limit, task=task)
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json(
            {
                "filters": {"limit": limit, "status": status.upper() if status else None, "task": task},
                "count": len(jobs),
                "jobs": [job_document(j) for j in jobs],
            }
        )
        return
    from nuvom.cli._output import console, fmt_duration, fmt_time_short, note, short_repr, styled_status
    from rich.markup import escape
    from rich.table import Table

    if not jobs:
        note("no finished jobs" + (" match these filters" if status or task else " yet"))
        return
    # Laid out for 80 columns: the id is never shortened (it is what people copy),
    # the result/error column gives way first.
    table = Table(
        title=f"Last {len(jobs)} finished job(s)",
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        header_style="bold underline",
    )
    table.add_column("id", no_wrap=True, min_width=max(len(j.id) for j in jobs))
    table.add_column("task", no_wrap=True, overflow="ellipsis", min_width=4, max_width=24)
    table.add_column("status", no_wrap=True, min_width=7)
    table.add_column("try", justify="right", no_wrap=True, min_width=3)
    table.add_column("finished", no_wrap=True, min_width=8)
    table.add_column("took", justify="right", no_wrap=True, min_width=6)
    table.add_column("result / error", overflow="ellipsis", no_wrap=True, min_width=6, max_width=60)
    for job in jobs:
        took = fmt_duration(job.finished_at - job.started_at) if job.started_at and job.finished_at else "-"
        if job.error is not None:
            outcome = f"[red]{escape(job.error.type)}: {escape(job.error.message)}[/]"
        else:
            outcome = escape(short_repr(job.result, 60))
        table.add_row(
            job.id,
            escape(job.func_name),
            styled_status(job.status.value),
            str(job.attempts),
            fmt_time_short(job.finished_at),
            took,
            outcome,
        )
    console().print(table)


# -- retry job ------------------------------------------------------------------
retry_app = sub_app("Queue failed jobs again.")


@retry_app.callback()
def _retry() -> None:
    """Queue failed jobs again."""


@retry_app.command("job", cls=NuvomCommand)
def retry_job(job_id: JobId, format: FormatOpt = Format.table) -> None:
    """Queue a FAILED job again, as a new job with a fresh set of retries.

    Example: [bold]nuvom retry job 3f2c9a0d8e6b4c1fa2b7d9e0c4a1b2f3[/]

    The new job's id is printed; [bold]nuvom status <new id>[/] follows it.
    """
    from nuvom.backends import get_queue_backend
    from nuvom.sdk import retry_job as sdk_retry

    settings = _open()
    try:
        new = sdk_retry(job_id)
    except ValueError as exc:
        if type(exc) is not ValueError:  # InvalidJobId: reported by its own class
            raise
        raise CliError(str(exc), EXIT_INVALID) from None
    if new is None:
        raise NotFound(f"no finished job with id {job_id!r} ({_where(settings)})")
    if not getattr(get_queue_backend(), "shared_between_processes", True):
        from nuvom.cli._output import note

        note("warning: the memory queue is not shared: no worker in another process will see this job")
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json({"retried": job_id, "job": job_document(new)})
        return
    from nuvom.cli._output import console

    console().print(f"queued [bold]{new.id}[/] (retry of {job_id}, task {new.func_name})")
