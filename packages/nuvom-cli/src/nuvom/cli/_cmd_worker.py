"""Running jobs: ``runworker`` (the engine) and ``runtestworker run`` (one job, here and now)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from nuvom.cli._errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, CliError
from nuvom.cli._help import NuvomCommand, sub_app
from nuvom.cli._output import Format

if TYPE_CHECKING:
    from nuvom.config import Settings
    from nuvom.job import Job
    from nuvom.worker import Worker

__all__ = ["runtestworker_app", "runworker"]

log = logging.getLogger("nuvom.cli")

FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", case_sensitive=False, metavar="table|json", help="table for people, json for scripts."
    ),
]


def register_manifest_tasks(settings: Settings, root: Path, *, scan_for: str | None = None) -> int:
    """Register the manifest's tasks lazily (each imported when a job needs it)
    and return how many. When ``scan_for`` names a task the manifest lacks, the
    project is scanned first (as ``nuvom discover tasks`` does)."""
    from nuvom.discovery import discover_tasks, load_manifest, manifest_path_for
    from nuvom.registry import LazyTask, get_registry

    path = manifest_path_for(root, settings.manifest_path)
    manifest = load_manifest(path)
    tasks = list(manifest.tasks) if manifest is not None else []
    if scan_for is not None and scan_for not in {t.name for t in tasks}:
        import tempfile

        # Scan without touching the project's manifest: `discover tasks` owns it and its diff.
        with tempfile.TemporaryDirectory(prefix="nuvom-scan-") as tmp:
            tasks = list(discover_tasks(root, Path(tmp) / "manifest.json").tasks)
    registry = get_registry()
    for info in tasks:
        registry.register_lazy(
            LazyTask(name=info.name, module=info.module, qualname=info.qualname, file=str(root / info.file)),
            force=False,
        )
    return len(tasks)


# -- runworker ------------------------------------------------------------------
def runworker(
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", min=1, max=1024, metavar="N", help="Worker threads (default NUVOM_MAX_WORKERS)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", "-b", min=1, max=10_000, metavar="N", help="Jobs claimed per round trip (NUVOM_BATCH_SIZE)."
        ),
    ] = None,
    dev: Annotated[bool, typer.Option("--dev", help="Reload tasks when the code or the manifest changes.")] = False,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            metavar="thread|process",
            help="Where tasks that name no executor run: thread or process (NUVOM_EXECUTOR). "
            "async def tasks run on the worker's event loop unless this is process.",
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            max=1024,
            metavar="N",
            help="Process pool size (NUVOM_PROCESSES; default: cores).",
        ),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-q",
            metavar="NAMES",
            help="Named queues to serve, comma-separated, the first first: a job of a later queue is claimed "
            "only when the earlier ones have none due (NUVOM_QUEUES; default: default).",
        ),
    ] = None,
) -> None:
    """Run the worker engine until Ctrl+C (SIGINT) or SIGTERM, then stop gracefully (exit 0).

    Example: [bold]nuvom runworker --workers 8 --batch-size 64 --queues emails,default[/]

    The current directory is put on the import path, so the project's tasks
    import without setting PYTHONPATH; NUVOM_TASK_MODULES are imported at start.
    Running jobs get NUVOM_SHUTDOWN_GRACE_SECS to finish on stop; the others go
    back to the queue.
    """
    from nuvom.cli._project import load_project_settings, project_on_path, setup_logging

    if pool is not None and pool not in ("thread", "process"):
        raise CliError(f"--pool {pool!r} is not an executor: choose thread or process", EXIT_INVALID)
    from nuvom.cli._cmd_control import queue_names

    served = None if queues is None else queue_names(queues)
    root = project_on_path()
    settings = load_project_settings()
    setup_logging(settings.log_level, rich=True, log_format=settings.log_format)

    from nuvom.backends import get_queue_backend, get_result_backend
    from nuvom.cli._project import backend_report
    from nuvom.worker import Worker

    backends = backend_report(settings)
    queue, _ = get_queue_backend(), get_result_backend()  # fails here, clearly, if not installed
    from nuvom.app import default_app

    # NUVOM_TASK_MODULES: one that fails at import is logged and its tasks fail their jobs; the others run.
    default_app().import_task_modules()
    executor: Literal["thread", "process"] | None = "process" if pool == "process" else "thread" if pool else None
    worker = Worker(
        max_workers=workers, batch_size=batch_size, dev=dev, executor=executor, processes=processes, queues=served
    )

    # From here on SIGINT/SIGTERM only ask the worker to stop: a KeyboardInterrupt
    # raised at an arbitrary point of start-up (inside Thread.start(), a plugin's
    # start(), the banner) could leave threads or locks half set up.
    def _request_stop(signum: int, frame: Any) -> None:
        worker.request_stop()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.start()
        if settings.log_format == "json":
            _banner_line(worker, root)  # a log shipper reads stderr: no panel, one record
        else:
            _banner(worker, settings, backends, root)
        if not getattr(queue, "shared_between_processes", True):
            log.warning(
                "the queue backend %r is not shared between processes: jobs queued by other processes are not "
                "visible to this worker; set NUVOM_QUEUE_BACKEND=file (or install nuvom-sqlite) to share them",
                backends["queue"]["name"],
            )
        code = worker.run_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


def _banner(
    worker: Worker,
    settings: Settings,
    backends: dict[str, dict[str, Any]],
    root: Path,
) -> None:
    from nuvom.cli._output import err_console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for role, label in (("queue", "queue"), ("result", "results")):
        info = backends[role]
        grid.add_row(label, f"{escape(info['name'])}  [dim]({escape(info['why'])})[/]")
    grid.add_row("store", escape(worker.queue.describe()))
    order = "  [dim](in this order)[/]" if len(worker.queues) > 1 else ""
    grid.add_row("queues", escape(", ".join(worker.queues)) + order)
    grid.add_row("data", escape(str(Path(settings.data_dir).resolve())))
    names = worker.registry.names()
    shown = ", ".join(names[:8]) + (f", … ({len(names) - 8} more)" if len(names) > 8 else "")
    from nuvom.discovery import manifest_path_for

    manifest = manifest_path_for(root, settings.manifest_path)
    where = f"manifest {manifest}" if manifest.is_file() else "no manifest: run `nuvom discover tasks`"
    grid.add_row("tasks", f"{len(names)} registered  [dim]({escape(where)})[/]")
    if shown:
        grid.add_row("", escape(shown))
    grid.add_row("project", escape(str(root)))
    grid.add_row(
        "threads",
        f"{worker.max_workers}, batch size {worker.batch_size}"
        + ("  [yellow]dev mode: reloads on change[/]" if worker.dev else ""),
    )
    grid.add_row("executors", escape(_executors_line(worker)))
    started = [r.name for r in worker.app.plugins.records if r.state == "started"]
    failed = [r.name or r.target for r in worker.app.plugins.records if r.state == "failed"]
    plugins = ", ".join(started) or "none"
    if failed:
        plugins += f"  [red](failed: {escape(', '.join(failed))}; see `nuvom plugin status`)[/]"
    grid.add_row("plugins", escape(plugins) if not failed else plugins)
    err_console().print(
        Panel(grid, title=f"nuvom worker [bold]{escape(worker.worker_id)}[/]", subtitle="Ctrl+C to stop", expand=False)
    )


def _banner_line(worker: Worker, root: Path) -> None:
    """What the banner adds to the engine's own start line, as one log record."""
    records = worker.app.plugins.records
    started = ", ".join(r.name for r in records if r.state == "started") or "none"
    failed = ", ".join(r.name or r.target for r in records if r.state == "failed")
    log.info(
        "project %s; executors: %s; plugins: %s%s",
        root,
        _executors_line(worker),
        started,
        f" (failed: {failed}; see `nuvom plugin status`)" if failed else "",
    )


def _executors_line(worker: Worker) -> str:
    import os

    processes = worker.processes or worker.settings.processes or os.cpu_count() or 1
    pool = f"process pool of {processes} (new child every {worker.settings.max_jobs_per_child} jobs)"
    loop = f"async def tasks on one event loop (up to {worker.settings.async_concurrency} at once)"
    if worker.default_executor == "process":
        return f"every task in the {pool}, unless it names another executor"
    return f"threads by default; {loop}; executor='process' tasks in a {pool}"


# -- runtestworker run ------------------------------------------------------------
runtestworker_app = sub_app("Run one job here and now, without a queue.")


@runtestworker_app.callback()
def _runtestworker() -> None:
    """Run one job here and now, without a queue."""


def _read_job_file(path: Path) -> Job:
    from nuvom.job import Job, JobStatus

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot be read ({exc.strerror})", EXIT_INVALID) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", EXIT_INVALID
        ) from None
    if not isinstance(data, dict):
        raise CliError(f'{path}: expected a JSON object like {{"func_name": "add", "args": [1, 2]}}', EXIT_INVALID)
    data = dict(data)
    # Also accept the job document of `nuvom inspect job --format json`.
    for alias, field in (("task", "func_name"), ("name", "func_name"), ("retries", "max_retries")):
        if alias in data and field not in data:
            data[field] = data.pop(alias)
    if not isinstance(data.get("func_name"), str) or not data["func_name"]:
        raise CliError(f'{path}: "func_name" (the task name) is missing', EXIT_INVALID)
    fresh = {"status": JobStatus.PENDING, "attempts": 0, "history": [], "error": None, "result": None}
    # What a run records, and `dependents` (the queue's, shown by `inspect job`), are not the job's to set.
    for key in ("started_at", "finished_at", "worker_id", "not_before", "duration_secs", "dependents"):
        data.pop(key, None)
    if isinstance(data.get("error"), dict) or data.get("error") is None:
        data.pop("error", None)
    try:
        return Job.model_validate({**data, **fresh})
    except Exception as exc:
        from nuvom.cli._errors import one_line

        raise CliError(f"{path}: not a valid job ({one_line(str(exc))})", EXIT_INVALID) from None


@runtestworker_app.command("run", cls=NuvomCommand)
def runtestworker_run(
    job_path: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE", help="The job file, as the earlier nuvom took it (or --job-file).", show_default=False
        ),
    ] = None,
    job_file: Annotated[
        Path | None,
        typer.Option(
            "--job-file", "-j", metavar="FILE", help='JSON file: {"func_name": ..., "args": [...], "kwargs": {...}}.'
        ),
    ] = None,
    retries: Annotated[bool, typer.Option("--retries/--no-retries", help="Run the task's retries too.")] = True,
    format: FormatOpt = Format.table,
) -> None:
    """Run one job synchronously in this process and print the outcome (exit 0 on success, 1 on failure).

    Example: [bold]nuvom runtestworker run --job-file job.json[/] (or [bold]run job.json[/]) with job.json:
    [bold]{"func_name": "add", "args": [1, 2]}[/]

    The job document of [bold]nuvom inspect job ID --format json[/] is accepted too,
    to re-run a failed job under a debugger. Nothing is read from or written to the backends.
    """
    from nuvom.cli._project import load_project_settings, project_on_path, setup_logging

    if job_path is not None and job_file is not None and job_path != job_file:
        raise CliError(f"two job files given ({job_path} and --job-file {job_file}): give one", EXIT_USAGE)
    job_file = job_file or job_path
    if job_file is None:
        raise CliError(
            "no job file: nuvom runtestworker run job.json (or --job-file job.json), "
            'with job.json holding {"func_name": "add", "args": [1, 2]}',
            EXIT_USAGE,
        )
    root = project_on_path()
    settings = load_project_settings()
    setup_logging(settings.log_level, quiet=True)
    # The outcome printed below says it all; the runner's own log line would repeat it.
    logging.getLogger("nuvom.runner").setLevel(logging.CRITICAL)
    job = _read_job_file(job_file)
    from nuvom.app import default_app

    app = default_app()
    if job.func_name not in app.registry and not job.task_path:
        register_manifest_tasks(settings, root, scan_for=job.func_name)
    app.run_locally(job, retries=retries)
    code = EXIT_OK if job.status.value == "SUCCESS" else EXIT_FAILED
    if format is Format.json:
        from nuvom.cli._output import job_document, print_json

        print_json(job_document(job))
    else:
        _print_outcome(job)
    raise typer.Exit(code)


def _print_outcome(job: Job) -> None:
    from nuvom.cli._output import console, fmt_duration, last_attempt_secs, short_repr, styled_status
    from rich.markup import escape
    from rich.panel import Panel
    from rich.text import Text

    out = console()
    took = fmt_duration(last_attempt_secs(job))
    out.print(f"{escape(job.func_name)}  {styled_status(job.status.value)}  attempts {job.attempts}  took {took}")
    if job.status.value == "SUCCESS":
        out.print(f"result: {escape(short_repr(job.result, 2000))}")
    elif job.error is not None:
        out.print(f"[red]error: {escape(job.error.type)}: {escape(job.error.message)}[/]")
        if job.error.traceback:
            out.print(
                Panel(Text(job.error.traceback.rstrip()), title="Traceback", title_align="left", border_style="red")
            )
