"""Reading and steering jobs: ``status``, ``inspect job``, ``history recent``, ``retry job``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from nuvom.cli._errors import EXIT_INVALID, EXIT_USAGE, CliError, NotFound
from nuvom.cli._help import NuvomCommand, sub_app
from nuvom.cli._output import Format

if TYPE_CHECKING:
    from nuvom.job import Job

__all__ = ["MAX_LIMIT", "history_app", "inspect_app", "retry_app", "status"]

#: Terminals narrower than this get the stacked layout of history and attempts:
#: a column of error text would be a few characters wide and cut words.
WIDE_TABLE = 100

#: The most jobs `history recent` prints at once (larger numbers are a usage error, not a backend overflow).
MAX_LIMIT = 10_000

JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The id printed by .delay() or `nuvom history recent`.")]
FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", case_sensitive=False, metavar="table|json", help="table for people, json for scripts."
    ),
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
    from nuvom.cli._output import (
        console,
        fmt_duration,
        fmt_time,
        is_whole,
        last_attempt_secs,
        short_repr,
        styled_status,
    )
    from rich.markup import escape
    from rich.table import Table

    out = console()
    whole = is_whole(out)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("job", f"{job.id}  ({escape(job.func_name)})")
    grid.add_row("status", styled_status(job.status.value))
    grid.add_row("attempts", f"{job.attempts} of at most {job.max_retries + 1}")
    if job.finished_at is not None:
        took = fmt_duration(last_attempt_secs(job))
        grid.add_row("finished", f"{fmt_time(job.finished_at)} (last attempt {took})")
    elif job.not_before is not None:
        grid.add_row("next attempt", fmt_time(job.not_before))
    if job.status.value == "SUCCESS":
        result = short_repr(job.result, None if whole else 200)
        grid.add_row("result", escape(result) if job.store_result else "(not stored)")
    if job.error is not None:
        grid.add_row("error", f"[red]{escape(job.error.type)}: {escape(job.error.message)}[/]")
        grid.add_row("", f"[dim]nuvom inspect job {job.id}  shows the traceback[/]")
    out.print(grid)


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
    from nuvom.cli._output import (
        attempt_secs,
        console,
        fmt_duration,
        fmt_time,
        is_whole,
        last_attempt_secs,
        short_repr,
        styled_status,
    )
    from rich.markup import escape
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    out = console()
    whole = is_whole(out)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("id", Text(job.id, no_wrap=True))
    grid.add_row("task", f"{escape(job.func_name)}  [dim]{escape(job.task_path or '')}[/]")
    grid.add_row("status", styled_status(job.status.value))
    grid.add_row("args", escape(short_repr(job.args, None if whole else 400)))
    grid.add_row("kwargs", escape(short_repr(job.kwargs, None if whole else 400)))
    if job.status.value == "SUCCESS":
        result = short_repr(job.result, None if whole else 2000)
        grid.add_row("result", escape(result) if job.store_result else "(not stored)")
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
    if job.finished_at is not None and last_attempt_secs(job) is not None:
        grid.add_row("duration", fmt_duration(last_attempt_secs(job)) + " (last attempt)")
    if job.history and job.finished_at is not None:
        grid.add_row("total", fmt_duration(job.finished_at - job.created_at) + " from queued to finished")
    grid.add_row("worker", escape(job.worker_id or "-"))
    ran_in = job.history[-1].executor if job.history else None
    grid.add_row("executor", f"{ran_in or '-'}  [dim](task asks for {job.executor or 'the worker default'})[/]")
    if job.tags:
        grid.add_row("tags", escape(", ".join(job.tags)))
    if job.retry_of:
        grid.add_row("retry of", Text(job.retry_of, no_wrap=True))
    if job.schedule_key:
        grid.add_row("schedule", Text(job.schedule_key, no_wrap=True))
    out.print(grid)
    if job.history:
        out.print()
        styles = {"success": "green", "error": "red", "timeout": "red", "lost": "yellow"}
        if not whole and out.width < WIDE_TABLE:
            # Too narrow for a column of error text: each attempt on one line,
            # its error below, wrapped at words across the whole width.
            out.print("[bold]Attempts[/]")
            for a in job.history:
                style = styles.get(a.outcome, "")
                line = (
                    f"#{a.number}  [{style}]{a.outcome}[/]  {a.executor or '-'}  {fmt_time(a.started_at)}  "
                    f"{fmt_duration(attempt_secs(a))}"
                )
                out.print(line, no_wrap=True, overflow="ellipsis")
                if a.error:
                    out.print(Padding(Text(f"{a.error.type}: {a.error.message}", style="red"), (0, 0, 0, 2)))
        else:
            table = Table(title="Attempts", title_justify="left", title_style="bold")
            for col in ("#", "outcome", "executor", "started", "duration"):
                table.add_column(col, no_wrap=True)
            table.add_column("error", no_wrap=whole)
            for a in job.history:
                err = f"{a.error.type}: {a.error.message}" if a.error else ""
                style = styles.get(a.outcome, "")
                table.add_row(
                    str(a.number),
                    f"[{style}]{a.outcome}[/]",
                    a.executor or "-",
                    fmt_time(a.started_at),
                    fmt_duration(attempt_secs(a)),
                    escape(err),
                )
            out.print(table)
    tb = job.error.traceback if job.error is not None else None
    if tb:
        out.print(
            Panel(
                Text(tb.rstrip()),
                title="Traceback (last attempt)",
                title_align="left",
                border_style="red",
                expand=not whole,
            )
        )


# -- history recent -------------------------------------------------------------
history_app = sub_app("Browse finished jobs.")


@history_app.callback()
def _history() -> None:
    """Browse finished jobs."""


@history_app.command("recent", cls=NuvomCommand)
def history_recent(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=MAX_LIMIT, metavar="N", help="How many jobs to show.")
    ] = 20,
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
    from nuvom.cli._output import (
        console,
        fmt_duration,
        fmt_time_short,
        is_whole,
        last_attempt_secs,
        note,
        short_repr,
        styled_status,
    )
    from rich.markup import escape
    from rich.table import Table

    if not jobs:
        note("no finished jobs" + (" match these filters" if status or task else " yet"))
        return
    out = console()
    whole = is_whole(out)
    if not whole and out.width < WIDE_TABLE:
        _print_history_narrow(out, jobs)
        return
    # On a terminal the table fits its width: the id is never shortened (it is
    # what people copy), the task name is shortened, the result/error column
    # wraps at words. In a file or a pipe every value is whole, on one line.
    table = Table(
        title=f"Last {len(jobs)} finished job(s)",
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        header_style="bold underline",
    )
    table.add_column("id", no_wrap=True, min_width=max(len(j.id) for j in jobs))
    if whole:
        table.add_column("task", no_wrap=True)
    else:
        table.add_column("task", no_wrap=True, overflow="ellipsis", min_width=4, max_width=24)
    table.add_column("status", no_wrap=True, min_width=7)
    table.add_column("try", justify="right", no_wrap=True, min_width=3)
    table.add_column("finished", no_wrap=True, min_width=8)
    table.add_column("took", justify="right", no_wrap=True, min_width=6)
    table.add_column("result / error", no_wrap=whole, overflow="fold", min_width=12)
    scheduled = any(j.schedule_key for j in jobs)
    if scheduled:
        table.add_column("schedule", no_wrap=True, overflow="fold")
    for job in jobs:
        if job.error is not None:
            outcome = f"[red]{escape(job.error.type)}: {escape(job.error.message)}[/]"
        else:
            outcome = escape(short_repr(job.result, None if whole else 60))
        cells = [
            job.id,
            escape(job.func_name),
            styled_status(job.status.value),
            str(job.attempts),
            fmt_time_short(job.finished_at),
            fmt_duration(last_attempt_secs(job)),
            outcome,
        ]
        if scheduled:
            cells.append(escape(job.schedule_key or "-"))
        table.add_row(*cells)
    out.print(table)


def _print_history_narrow(out: Any, jobs: list[Job]) -> None:
    """``history recent`` on a terminal narrower than :data:`WIDE_TABLE`: one
    line per job (id whole), then its task and its result or error, indented
    and wrapped at words."""
    from nuvom.cli._output import fmt_duration, fmt_time_short, last_attempt_secs, short_repr, styled_status
    from rich.padding import Padding
    from rich.text import Text

    out.print(f"[bold]Last {len(jobs)} finished job(s)[/]")
    for job in jobs:
        took = fmt_duration(last_attempt_secs(job))
        when = fmt_time_short(job.finished_at)
        out.print(
            f"{job.id}  {styled_status(job.status.value)}  try {job.attempts}  {when}  {took}",
            no_wrap=True,
            overflow="ellipsis",
        )
        if job.error is not None:
            outcome = Text(f"{job.error.type}: {job.error.message}", style="red")
        else:
            outcome = Text(short_repr(job.result, 200))
        out.print(Padding(Text(job.func_name, style="dim"), (0, 0, 0, 2)))
        out.print(Padding(outcome, (0, 0, 0, 2)))


# -- retry job ------------------------------------------------------------------
retry_app = sub_app("Queue failed jobs again.")


@retry_app.callback()
def _retry() -> None:
    """Queue failed jobs again."""


#: Waiting jobs read to find an earlier retry (the queue may hold more; see existing_retry).
RETRY_PEEK_LIMIT = 10_000
_RETRY_PAGE = 200


def existing_retry(job_id: str) -> Job | None:
    """A job an earlier ``retry job`` made of ``job_id``, waiting in the queue or
    finished; ``None`` if there is none (or the failed job is unknown).

    Built on the SDK's readers: waiting jobs through ``queued_jobs`` (the queue's
    ``peek``), finished ones through ``query_jobs`` (same task, finished after the
    failed job). A retry a worker is running right now is not visible to either.
    """
    from nuvom.app import default_app
    from nuvom.sdk import query_jobs, queued_jobs

    record = default_app().results.get_full(job_id)
    if record is None:
        return None
    for job in queued_jobs(limit=RETRY_PEEK_LIMIT):
        if job.retry_of == job_id:
            return job
    before: tuple[float, str] | None = None
    while True:
        page = query_jobs(task=record.func_name, since=record.finished_at, before=before, limit=_RETRY_PAGE)
        for job in page:
            if job.retry_of == job_id:
                return job
        if len(page) < _RETRY_PAGE or page[-1].finished_at is None:
            return None
        before = (page[-1].finished_at, page[-1].id)


@retry_app.command("job", cls=NuvomCommand)
def retry_job(
    job_id: JobId,
    force: Annotated[
        bool, typer.Option("--force", help="Queue another retry even if the job was retried already.")
    ] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Queue a FAILED job again, as a new job with a fresh set of retries.

    Example: [bold]nuvom retry job 3f2c9a0d8e6b4c1fa2b7d9e0c4a1b2f3[/]

    The new job's id is printed; [bold]nuvom status <new id>[/] follows it. A job
    retried already is not queued twice: the earlier retry is reported (exit 0)
    unless [bold]--force[/].
    """
    from nuvom.backends import get_queue_backend
    from nuvom.job import validate_job_id
    from nuvom.sdk import retry_job as sdk_retry

    validate_job_id(job_id)  # a malformed id is refused before any backend is opened
    settings = _open()
    earlier = None if force else existing_retry(job_id)
    if earlier is not None:
        if format is Format.json:
            from nuvom.cli._output import job_document, print_json

            print_json({"retried": job_id, "already_retried": True, "job": job_document(earlier)})
            return
        from nuvom.cli._output import console

        console().print(
            f"already retried as [bold]{earlier.id}[/] ({earlier.status.value}); "
            f"nothing queued (--force queues another)"
        )
        return
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

        print_json({"retried": job_id, "already_retried": False, "job": job_document(new)})
        return
    from nuvom.cli._output import console

    console().print(f"queued [bold]{new.id}[/] (retry of {job_id}, task {new.func_name})")
