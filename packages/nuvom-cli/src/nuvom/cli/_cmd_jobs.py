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
    dependents = _dependents(job)
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json({**job_document(job), "dependents": dependents})
        return
    from nuvom.cli._output import fmt_duration, fmt_time, last_attempt_secs, short_repr, status_value
    from nuvom.cli._render import Value, control_rows, print_grid, styled

    out, whole = _out()
    rows: list[tuple[str, Value]] = [
        ("job", f"{job.id}  ({job.func_name})"),
        ("status", status_value(job.status.value)),
        ("attempts", f"{job.attempts} of at most {job.max_retries + 1}"),
        *control_rows(job, dependents),
    ]
    if job.finished_at is not None:
        took = fmt_duration(last_attempt_secs(job))
        rows.append(("finished", f"{fmt_time(job.finished_at)} (last attempt {took})"))
    elif job.not_before is not None:
        rows.append(("next attempt", fmt_time(job.not_before)))
    if job.status.value == "SUCCESS":
        rows.append(("result", short_repr(job.result, None if whole else 200) if job.store_result else "(not stored)"))
    if job.error is not None:
        rows.append(("error", styled(f"{job.error.type}: {job.error.message}", "red")))
        rows.append(("", styled(f"nuvom inspect job {job.id}  shows the traceback", "dim")))
    print_grid(out, rows)


def _dependents(job: Job) -> list[str]:
    """The jobs still waiting for ``job`` (workflows): the store forgets them once released."""
    from nuvom.sdk import dependents

    return dependents(job.id)


def _out() -> tuple[Any, bool]:
    """``(rich console, False)`` on a terminal; ``(None, True)`` for plain text
    with whole values (a file or a pipe), rich not imported."""
    from nuvom.cli._render import to_terminal

    if not to_terminal():
        return None, True
    from nuvom.cli._output import console, is_whole

    out = console()
    return out, is_whole(out)


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
    dependents = _dependents(job)
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json({**job_document(job), "dependents": dependents})
        return
    _print_job(job, dependents)


def _print_job(job: Job, dependents: list[str]) -> None:
    from nuvom.cli._output import attempt_secs, fmt_duration, fmt_time, last_attempt_secs, short_repr, status_value
    from nuvom.cli._render import Column, Value, control_rows, print_block, print_grid, print_line, print_table, styled

    out, whole = _out()
    rows: list[tuple[str, Value]] = [
        ("id", job.id),
        ("task", [(job.func_name, ""), ("  " + (job.task_path or ""), "dim")]),
        ("status", status_value(job.status.value)),
        ("args", short_repr(job.args, None if whole else 400)),
        ("kwargs", short_repr(job.kwargs, None if whole else 400)),
    ]
    if job.status.value == "SUCCESS":
        rows.append(("result", short_repr(job.result, None if whole else 2000) if job.store_result else "(not stored)"))
    if job.error is not None:
        rows.append(("error", styled(f"{job.error.type}: {job.error.message}", "red")))
    rows.append(
        (
            "attempts",
            f"{job.attempts} of at most {job.max_retries + 1} (retries {job.max_retries}, "
            f"delay {job.retry_delay_secs:g} s)",
        )
    )
    timeout = f"{job.timeout_secs:g} s" if job.timeout_secs else "worker default (NUVOM_JOB_TIMEOUT_SECS)"
    rows.append(("timeout", f"{timeout}, policy {job.timeout_policy or 'default'}"))
    rows += control_rows(job, dependents)
    rows.append(("created", fmt_time(job.created_at)))
    if job.not_before is not None and not job.done:
        rows.append(("not before", fmt_time(job.not_before)))
    rows.append(("started", fmt_time(job.started_at)))
    rows.append(("finished", fmt_time(job.finished_at)))
    if job.finished_at is not None and last_attempt_secs(job) is not None:
        rows.append(("duration", fmt_duration(last_attempt_secs(job)) + " (last attempt)"))
    if job.history and job.finished_at is not None:
        rows.append(("total", fmt_duration(job.finished_at - job.created_at) + " from queued to finished"))
    rows.append(("worker", job.worker_id or "-"))
    ran_in = job.history[-1].executor if job.history else None
    rows.append(
        ("executor", [(ran_in or "-", ""), (f"  (task asks for {job.executor or 'the worker default'})", "dim")])
    )
    if job.tags:
        rows.append(("tags", ", ".join(job.tags)))
    if job.retry_of:
        rows.append(("retry of", job.retry_of))
    if job.schedule_key:
        rows.append(("schedule", job.schedule_key))
    print_grid(out, rows, fold=True)
    if job.history:
        print_line(out)
        styles = {"success": "green", "error": "red", "timeout": "red", "lost": "yellow"}
        if out is not None and not whole and out.width < WIDE_TABLE:
            _print_attempts_narrow(out, job, styles)
        else:
            columns = [Column(c, options={"no_wrap": True}) for c in ("#", "outcome", "executor", "started")]
            columns += [Column("duration", options={"no_wrap": True}), Column("error", options={"no_wrap": whole})]
            attempts: list[list[Value]] = [
                [
                    str(a.number),
                    styled(a.outcome, styles.get(a.outcome, "")),
                    a.executor or "-",
                    fmt_time(a.started_at),
                    fmt_duration(attempt_secs(a)),
                    f"{a.error.type}: {a.error.message}" if a.error else "",
                ]
                for a in job.history
            ]
            print_table(out, "Attempts", columns, attempts)
    tb = job.error.traceback if job.error is not None else None
    if tb:
        print_block(out, "Traceback (last attempt)", tb, style="red")


def _print_attempts_narrow(out: Any, job: Job, styles: dict[str, str]) -> None:
    """Attempts on a terminal too narrow for a column of error text: each attempt
    on one line, its error below, wrapped at words across the whole width."""
    from nuvom.cli._output import attempt_secs, fmt_duration, fmt_time
    from rich.padding import Padding
    from rich.text import Text

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
    from nuvom.cli._output import fmt_duration, fmt_time_short, last_attempt_secs, note, short_repr, status_value
    from nuvom.cli._render import Column, Value, print_table, styled

    if not jobs:
        note("no finished jobs" + (" match these filters" if status or task else " yet"))
        return
    out, whole = _out()
    if out is not None and not whole and out.width < WIDE_TABLE:
        _print_history_narrow(out, jobs)
        return
    # On a terminal the table fits its width: the id is never shortened (it is
    # what people copy), the task name is shortened, the result/error column
    # wraps at words. In a file or a pipe every value is whole, on one line.
    columns = [
        Column("id", options={"no_wrap": True, "min_width": max(len(j.id) for j in jobs)}),
        Column(
            "task",
            options={"no_wrap": True}
            if whole
            else {"no_wrap": True, "overflow": "ellipsis", "min_width": 4, "max_width": 24},
        ),
        Column("status", options={"no_wrap": True, "min_width": 7}),
        Column("try", right=True, options={"no_wrap": True, "min_width": 3}),
        Column("finished", options={"no_wrap": True, "min_width": 8}),
        Column("took", right=True, options={"no_wrap": True, "min_width": 6}),
        Column("result / error", options={"no_wrap": whole, "overflow": "fold", "min_width": 12}),
    ]
    scheduled = any(j.schedule_key for j in jobs)
    if scheduled:
        columns.append(Column("schedule", options={"no_wrap": True, "overflow": "fold"}))
    rows: list[list[Value]] = []
    for job in jobs:
        if job.error is not None:
            outcome: Value = styled(f"{job.error.type}: {job.error.message}", "red")
        else:
            outcome = short_repr(job.result, None if whole else 60)
        cells: list[Value] = [
            job.id,
            job.func_name,
            status_value(job.status.value),
            str(job.attempts),
            fmt_time_short(job.finished_at),
            fmt_duration(last_attempt_secs(job)),
            outcome,
        ]
        if scheduled:
            cells.append(job.schedule_key or "-")
        rows.append(cells)
    print_table(
        out,
        f"Last {len(jobs)} finished job(s)",
        columns,
        rows,
        box=None,
        pad_edge=False,
        header_style="bold underline",
    )


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
    from nuvom.sdk import existing_retry
    from nuvom.sdk import retry_job as sdk_retry

    validate_job_id(job_id)  # a malformed id is refused before any backend is opened
    settings = _open()
    # The SDK's rule (nuvom.sdk.retry_job): once, unless forced; asked first here
    # to say which earlier retry stood in.
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
        new = sdk_retry(job_id, force=True)
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
