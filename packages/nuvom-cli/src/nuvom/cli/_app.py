"""The root ``nuvom`` command: its sub-commands, global options and error handling.

Start-up is kept short on purpose (``nuvom --help`` and the read commands are
measured by bench/bench_cli.py): this module and the command modules import
only typer and the standard library; settings, backends, plugins and rich are
imported by a command when it runs, and help pages are written without rich
(:mod:`nuvom.cli._help`).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from nuvom.cli import _cmd_config, _cmd_jobs, _cmd_plugin, _cmd_schedule, _cmd_tasks, _cmd_worker
from nuvom.cli._errors import EXIT_INTERNAL, EXIT_USAGE, CliError, options, report, report_usage
from nuvom.cli._extensions import extension_entry_points, load_extension
from nuvom.cli._help import NuvomCommand, format_command_help
from nuvom.cli._output import Format
from typer.core import TyperGroup

__all__ = ["NuvomGroup", "app", "main", "not_utf8", "versions"]


def _is_control_flow(exc: BaseException) -> bool:
    # typer/click signal usage errors, --help and exits with exceptions of
    # their own (which moved from click to typer over versions): let them through.
    module = type(exc).__module__ or ""
    return module.startswith(("typer", "click"))


def _is_usage_error(exc: BaseException) -> bool:
    return _is_control_flow(exc) and hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def not_utf8(argv: list[str]) -> str | None:
    """The first argument that is not UTF-8 text (Python hands such bytes over
    as lone surrogates), shown with its bad bytes escaped; ``None`` if all are."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


class NuvomGroup(TyperGroup):
    """Adds plugin commands (entry point group ``nuvom.cli``) on demand and
    turns every error into one line on stderr and an exit code."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        format_command_help(self, ctx, formatter)

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

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line: usage errors (and arguments that are not UTF-8
        text) become one ``error:`` line and exit 2, like every other error."""
        argv = list(sys.argv[1:] if args is None else args)
        code = self._run(argv, prog_name, complete_var, extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, argv: list[str], prog_name: str | None, complete_var: str | None, extra: dict[str, Any]) -> int:
        bad = not_utf8(argv)
        if bad is not None:
            return report(
                CliError(
                    f"argument '{bad}' is not UTF-8 text; nuvom takes job ids, task names and paths as UTF-8",
                    EXIT_USAGE,
                ),
                debug=False,
            )
        try:
            rv = super().main(
                args=argv, prog_name=prog_name or "nuvom", complete_var=complete_var, standalone_mode=False, **extra
            )
        except Exception as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.stderr.write(str(exc.format_message()).rstrip("\n") + "\n")  # type: ignore[attr-defined]
                return EXIT_USAGE
            if _is_usage_error(exc):
                return report_usage(exc)
            if type(exc).__name__ == "Abort":
                return report(KeyboardInterrupt(), debug=False)
            raise
        return rv if isinstance(rv, int) else 0


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


def versions() -> dict[str, str]:
    """``{distribution: version}`` of nuvom-cli and every installed ``nuvom-*`` distribution."""
    from importlib.metadata import PackageNotFoundError, distributions, version

    found: dict[str, str] = {}
    try:
        found["nuvom-cli"] = version("nuvom-cli")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        found["nuvom-cli"] = "(not installed)"
    for d in distributions():
        name = d.metadata["Name"] or ""
        if name.lower().startswith("nuvom") and name.lower() != "nuvom-cli":
            found.setdefault(name, d.version)
    return dict(sorted(found.items()))


def _print_version(format: Format) -> None:
    found = versions()
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json({"version": found["nuvom-cli"], "packages": found})
        return
    typer.echo("\n".join(f"{name} {ver}" for name, ver in found.items()))


app = typer.Typer(
    name="nuvom",
    cls=NuvomGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    help=(
        "nuvom: a broker-less task queue. Run workers, inspect and retry jobs, "
        "discover tasks, check configuration and plugins.\n\n"
        "Example: nuvom runworker --workers 8   then   nuvom history recent --status FAILED\n\n"
        "Every command that prints data takes --format table|json. Errors are one line on stderr "
        "and a non-zero exit code (docs/cli.md); --debug shows the traceback."
    ),
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback when a command fails.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the versions of the nuvom packages and exit.")
    ] = False,
    format: Annotated[
        Format,
        typer.Option(
            "--format", "-f", case_sensitive=False, metavar="table|json", help="With --version: table or json."
        ),
    ] = Format.table,
) -> None:
    options.debug = debug
    if version:
        _print_version(format)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        sys.stderr.write(ctx.get_help().rstrip("\n") + "\n")
        raise typer.Exit(EXIT_USAGE)


_WORK, _JOBS, _TASKS, _SETUP = "Worker", "Jobs", "Tasks", "Configuration and plugins"

app.command("runworker", rich_help_panel=_WORK, cls=NuvomCommand)(_cmd_worker.runworker)
app.command("runscheduler", rich_help_panel=_WORK, cls=NuvomCommand)(_cmd_schedule.runscheduler)
app.add_typer(_cmd_worker.runtestworker_app, name="runtestworker", rich_help_panel=_WORK)
app.command("status", rich_help_panel=_JOBS, cls=NuvomCommand)(_cmd_jobs.status)
app.add_typer(_cmd_jobs.inspect_app, name="inspect", rich_help_panel=_JOBS)
app.add_typer(_cmd_jobs.history_app, name="history", rich_help_panel=_JOBS)
app.add_typer(_cmd_jobs.retry_app, name="retry", rich_help_panel=_JOBS)
app.add_typer(_cmd_schedule.schedule_app, name="schedule", rich_help_panel=_JOBS)
app.add_typer(_cmd_tasks.list_app, name="list", rich_help_panel=_TASKS)
app.add_typer(_cmd_tasks.discover_app, name="discover", rich_help_panel=_TASKS)
app.command("config", rich_help_panel=_SETUP, cls=NuvomCommand)(_cmd_config.config)
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
