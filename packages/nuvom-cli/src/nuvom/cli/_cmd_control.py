"""Named queues and cancelling: ``queues`` and ``cancel job`` (the rows
``status`` and ``inspect job`` add for a job's queue and workflow are
:func:`nuvom.cli._render.control_rows`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from nuvom.cli._errors import EXIT_BACKEND, EXIT_INVALID, EXIT_USAGE, CliError, NotFound
from nuvom.cli._help import NuvomCommand, sub_app
from nuvom.cli._output import Format

if TYPE_CHECKING:
    from nuvom.cli._render import Value

__all__ = ["cancel_app", "queue_names", "queues"]

JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The id printed by .delay() or `nuvom history recent`.")]
FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", case_sensitive=False, metavar="table|json", help="table for people, json for scripts."
    ),
]


def queue_names(value: str, option: str = "--queues") -> list[str]:
    """``emails,default`` as queue names (duplicates dropped, order kept), each
    checked as ``@task(queue=...)`` checks it; a bad one is a usage error."""
    from nuvom.job import TaskOptions

    names = list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if not names:
        raise CliError(f"{option} {value!r}: give one or more queue names, e.g. {option} emails,default", EXIT_USAGE)
    for name in names:
        try:
            TaskOptions.model_validate({"queue": name})
        except ValueError:
            raise CliError(
                f"{option}: {name!r} is not a queue name: 1-64 letters, digits, '_', '.', ':' or '-'", EXIT_USAGE
            ) from None
    return names


# -- queues -----------------------------------------------------------------------
def queues(format: FormatOpt = Format.table) -> None:
    """Every named queue with its depth: jobs queued, retrying and running, and the live workers serving it.

    Example: [bold]nuvom queues --format json[/]

    Jobs waiting for other jobs of a workflow (WAITING) count as queued. A
    column the store cannot tell shows a dash (null in JSON); workers are counted
    from their presence records (null when the store keeps none).
    """
    from nuvom import sdk
    from nuvom.cli._cmd_jobs import _open

    _open()
    counts = sdk.queue_counts()
    workers = sdk.list_workers()
    from nuvom.app import default_app

    store = default_app().queue
    serving: dict[str, int] | None = None
    if workers is not None:
        serving = {}
        for info in workers:
            if info.is_live():
                for name in info.queues:
                    serving[name] = serving.get(name, 0) + 1
    names = sorted(set(counts) | set(serving or ()))
    rows = [
        {
            "name": name,
            "queued": counts.get(name, {}).get("queued", 0 if name not in counts else None),
            "retrying": counts.get(name, {}).get("retrying", 0 if name not in counts else None),
            "running": counts.get(name, {}).get("running", 0 if name not in counts else None),
            "workers": None if serving is None else serving.get(name, 0),
        }
        for name in names
    ]
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json({"store": store.describe(), "named_queues": store.supports_queues, "queues": rows})
        return
    from nuvom.cli._cmd_jobs import _out
    from nuvom.cli._output import note
    from nuvom.cli._render import Column, print_table

    out, _ = _out()
    columns = [Column("queue", options={"no_wrap": True})]
    columns += [Column(key, right=True, options={"no_wrap": True}) for key in ("queued", "retrying", "running")]
    columns.append(Column("workers", right=True, options={"no_wrap": True}))
    cells: list[list[Value]] = [
        [str(row["name"]), *("\u2013" if row[key] is None else str(row[key]) for key in list(row)[1:])] for row in rows
    ]
    print_table(out, f"Queues of {store.describe()}", columns, cells)
    if not store.supports_queues:
        name = type(store).__name__
        note(f"the {name} store has one queue, default: @task(queue=...) needs a store with named queues")


# -- cancel job -------------------------------------------------------------------
cancel_app = sub_app("Cancel a waiting or running job.")


@cancel_app.callback()
def _cancel() -> None:
    """Cancel a waiting or running job."""


@cancel_app.command("job", cls=NuvomCommand)
def cancel_job(job_id: JobId, format: FormatOpt = Format.table) -> None:
    """Cancel a job: a waiting one is taken out of the queue, a running one is asked to stop.

    Example: [bold]nuvom cancel job 3f2c9a0d8e6b4c1fa2b7d9e0c4a1b2f3[/]

    Either way its record ends FAILED with error type Cancelled, never retried.
    A running job stops at its next await (async def tasks), is killed (process
    pool) or sees current_job().cancelled (threads: it returns when it looks).
    Exit 3 for an unknown job, 4 for a finished one, 6 when the store cannot
    cancel running jobs.
    """
    from nuvom import sdk
    from nuvom.cli._cmd_jobs import _open, _where
    from nuvom.job import validate_job_id

    validate_job_id(job_id)  # a malformed id is refused before any backend is opened
    settings = _open()
    record = sdk.get_job(job_id)
    if record is None:
        raise NotFound(f"no job with id {job_id!r} ({_where(settings)})")
    if record.done:
        raise CliError(
            f"job {job_id} is {record.status.value} already: only waiting or running jobs are cancelled", EXIT_INVALID
        )
    done = sdk.cancel_job(job_id)
    if done is None:
        raise _not_cancelled(job_id)
    running = not done.done
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        how = "asked to stop" if running else "taken out of the queue"
        print_json({"cancelled": job_id, "how": how, "job": job_document(done)})
        return
    from nuvom.cli._output import console
    from rich.markup import escape

    task = escape(done.func_name)
    if running:
        console().print(
            f"asked the worker running job [bold]{job_id}[/] ({task}) to stop; its record ends "
            f"FAILED (Cancelled): [bold]nuvom status {job_id}[/] follows it"
        )
    else:
        console().print(
            f"cancelled job [bold]{job_id}[/] ({task}): taken out of the queue, recorded FAILED (Cancelled)"
        )


def _not_cancelled(job_id: str) -> CliError:
    """Why :func:`nuvom.sdk.cancel_job` cancelled nothing, as the error to report."""
    from nuvom import sdk
    from nuvom.app import default_app

    record = sdk.get_job(job_id)
    if record is None:
        return NotFound(f"no job with id {job_id!r}: it left the store while being cancelled")
    if record.done:
        return CliError(
            f"job {job_id} finished ({record.status.value}) before it could be cancelled: nothing to cancel",
            EXIT_INVALID,
        )
    if not sdk.cancels_running_jobs():
        store = type(default_app().queue).__name__
        return CliError(
            f"job {job_id} is {record.status.value}: a worker holds it, and the {store} store cannot cancel "
            "running jobs; let it finish, or use a store that can (docs/workflows.md)",
            EXIT_BACKEND,
        )
    return CliError(f"job {job_id} is {record.status.value} and could not be cancelled; try again", EXIT_INVALID)
