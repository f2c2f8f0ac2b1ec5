"""The root ``nuvom`` command: its sub-commands, global options and error handling.

Start-up is kept short on purpose (``nuvom --help`` is measured by
bench/bench_cli.py): this module and the command modules import only typer
and the standard library; settings, backends, plugins and rich are imported by
a command when it runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from nuvom.cli import _cmd_config, _cmd_jobs, _cmd_plugin, _cmd_schedule, _cmd_tasks, _cmd_worker
from nuvom.cli._errors import EXIT_INTERNAL, CliError, options, report
from nuvom.cli._extensions import extension_entry_points, load_extension
from typer.core import TyperGroup

__all__ = ["app", "main"]


def _is_control_flow(exc: BaseException) -> bool:
    # typer/click signal usage errors, --help and exits with exceptions of
    # their own (which moved from click to typer over versions): let them through.
    module = type(exc).__module__ or ""
    return module.startswith(("typer", "click"))


class NuvomGroup(TyperGroup):
    """Adds plugin commands (entry point group ``nuvom.cli``) on demand and
    turns every nuvom error into one line on stderr and an exit code."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = sorted(super().list_commands(ctx), key=lambda n: _ORDER.get(n, len(_ORDER)))
        names += sorted(n for n in extension_entry_points() if n not in names)
        return names

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in extension_entry_points():
            command = load_extension(cmd_name)
        return command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (SystemExit, GeneratorExit, BrokenPipeError):
            raise  # typer turns a closed pipe (`nuvom ... | head`) into a quiet exit
        except KeyboardInterrupt as exc:
            raise typer.Exit(report(exc, debug=options.debug)) from None
        except Exception as exc:
            if _is_control_flow(exc):
                raise
            raise typer.Exit(report(exc, debug=options.debug)) from None


# Help lists commands in this order (typer would put all groups after all commands).
_ORDER = {
    name: i
    for i, name in enumerate(
        [
            "runworker",
            "runscheduler",
            "runtestworker",
            "status",
            "inspect",
            "history",
            "retry",
            "schedule",
            "list",
            "discover",
            "config",
            "plugin",
        ]
    )
}


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, distributions, version

    lines = []
    try:
        lines.append(f"nuvom-cli {version('nuvom-cli')}")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        lines.append("nuvom-cli (not installed)")
    others = sorted(
        {
            (d.metadata["Name"], d.version)
            for d in distributions()
            if (d.metadata["Name"] or "").lower().startswith("nuvom-") and d.metadata["Name"].lower() != "nuvom-cli"
        }
    )
    lines += [f"{name} {ver}" for name, ver in others]
    typer.echo("\n".join(lines))
    raise typer.Exit()


app = typer.Typer(
    name="nuvom",
    cls=NuvomGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    help=(
        "nuvom: a broker-less task queue. Run workers, inspect and retry jobs, "
        "discover tasks, check configuration and plugins.\n\n"
        "Example: [bold]nuvom runworker --workers 8[/]   then   [bold]nuvom history recent --status FAILED[/]\n\n"
        "Every command that prints data takes [bold]--format table|json[/]. Errors are one line on stderr "
        "and a non-zero exit code (docs/cli.md); [bold]--debug[/] shows the traceback."
    ),
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback when a command fails.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the versions of the nuvom packages and exit."
        ),
    ] = False,
) -> None:
    options.debug = debug


_WORK, _JOBS, _TASKS, _SETUP = "Worker", "Jobs", "Tasks", "Configuration and plugins"

app.command("runworker", rich_help_panel=_WORK)(_cmd_worker.runworker)
app.command("runscheduler", rich_help_panel=_WORK)(_cmd_schedule.runscheduler)
app.add_typer(_cmd_worker.runtestworker_app, name="runtestworker", rich_help_panel=_WORK)
app.command("status", rich_help_panel=_JOBS)(_cmd_jobs.status)
app.add_typer(_cmd_jobs.inspect_app, name="inspect", rich_help_panel=_JOBS)
app.add_typer(_cmd_jobs.history_app, name="history", rich_help_panel=_JOBS)
app.add_typer(_cmd_jobs.retry_app, name="retry", rich_help_panel=_JOBS)
app.add_typer(_cmd_schedule.schedule_app, name="schedule", rich_help_panel=_JOBS)
app.add_typer(_cmd_tasks.list_app, name="list", rich_help_panel=_TASKS)
app.add_typer(_cmd_tasks.discover_app, name="discover", rich_help_panel=_TASKS)
app.command("config", rich_help_panel=_SETUP)(_cmd_config.config)
app.add_typer(_cmd_plugin.plugin_app, name="plugin", rich_help_panel=_SETUP)


def main(argv: list[str] | None = None) -> int:
    """The ``nuvom`` console script. Returns (and exits with) the exit code."""
    try:
        app(args=argv, prog_name="nuvom")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        typer.echo(str(code), err=True)
        return 1
    except CliError as exc:  # raised outside a command (e.g. by a plugin app's callback)
        return report(exc, debug=options.debug)
    except Exception as exc:
        return report(exc, debug=options.debug) or EXIT_INTERNAL
    return 0
