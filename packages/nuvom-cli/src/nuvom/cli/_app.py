"""The root ``nuvom`` command: its sub-commands, global options and error handling.

Start-up is kept short on purpose (``nuvom --help`` and the read commands are
measured by bench/bench_cli.py): this module and the command modules import
only typer and the standard library; settings, backends, plugins and rich are
imported by a command when it runs, and help pages are written without rich
(:mod:`nuvom.cli._help`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from nuvom.cli import _cmd_config, _cmd_control, _cmd_jobs, _cmd_plugin, _cmd_schedule, _cmd_tasks, _cmd_worker
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
        names = list(_SUBCOMMANDS)
        names += sorted(n for n in super().list_commands(ctx) if n not in _SUBCOMMANDS)
        names += sorted(n for n in extension_entry_points() if n not in names)
        return names

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _SUBCOMMANDS:
            command = _build(cmd_name)
            self.add_command(command, cmd_name)
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


def _command(name: str, panel: str, fn: Callable[..., Any]) -> Callable[[typer.Typer], None]:
    def register(holder: typer.Typer) -> None:
        holder.command(name, rich_help_panel=panel, cls=NuvomCommand)(fn)

    return register


def _group(name: str, panel: str, sub: typer.Typer) -> Callable[[typer.Typer], None]:
    def register(holder: typer.Typer) -> None:
        holder.add_typer(sub, name=name, rich_help_panel=panel)

    return register


#: The sub-commands, in the order help lists them. Each is turned into a click
#: command only when it is called (or help lists it): converting the whole tree
#: at start-up cost every command ~30 ms on a 2-core machine (bench/bench_cli.py).
_SUBCOMMANDS: dict[str, Callable[[typer.Typer], None]] = {
    "runworker": _command("runworker", _WORK, _cmd_worker.runworker),
    "runscheduler": _command("runscheduler", _WORK, _cmd_schedule.runscheduler),
    "runtestworker": _group("runtestworker", _WORK, _cmd_worker.runtestworker_app),
    "status": _command("status", _JOBS, _cmd_jobs.status),
    "inspect": _group("inspect", _JOBS, _cmd_jobs.inspect_app),
    "history": _group("history", _JOBS, _cmd_jobs.history_app),
    "retry": _group("retry", _JOBS, _cmd_jobs.retry_app),
    "cancel": _group("cancel", _JOBS, _cmd_control.cancel_app),
    "queues": _command("queues", _JOBS, _cmd_control.queues),
    "schedule": _group("schedule", _JOBS, _cmd_schedule.schedule_app),
    "list": _group("list", _TASKS, _cmd_tasks.list_app),
    "discover": _group("discover", _TASKS, _cmd_tasks.discover_app),
    "config": _command("config", _SETUP, _cmd_config.config),
    "plugin": _group("plugin", _SETUP, _cmd_plugin.plugin_app),
}


def _noop() -> None:
    """A callback, so that typer builds a group even around one command."""


def _build(name: str) -> Any:
    """The click command of sub-command ``name``, converted alone."""
    holder = typer.Typer(rich_markup_mode=None, add_completion=False)
    holder.callback()(_noop)
    _SUBCOMMANDS[name](holder)
    return typer.main.get_command(holder).commands[name]  # type: ignore[attr-defined]


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
