"""``nuvom plugin status | test | scaffold``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from nuvom.cli._errors import EXIT_FAILED, EXIT_USAGE, CliError
from nuvom.cli._help import NuvomCommand, sub_app
from nuvom.cli._output import Format

__all__ = ["plugin_app"]

FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", case_sensitive=False, metavar="table|json", help="table for people, json for scripts."
    ),
]

plugin_app = sub_app("Inspect, test and create plugins.")


@plugin_app.callback()
def _plugin() -> None:
    """Inspect, test and create plugins."""


def display_name(record: Any) -> str:
    """The plugin's name; for one that failed before its class was read, the
    class named by its target (``mod:SlowPlugin`` -> ``SlowPlugin``)."""
    if record.name:
        return str(record.name)
    module, _, attr = str(record.target).partition(":")
    return attr.rsplit(".", 1)[-1] or module


def _record_document(record: Any) -> dict[str, Any]:
    return {
        "name": display_name(record),
        "target": record.target,
        "source": record.source,
        "provides": list(record.provides),
        "api_version": record.api_version,
        "state": record.state,
        "error": record.error,
        "settings": getattr(type(record.plugin), "settings_class", None) is not None if record.plugin else False,
        "moved_from": record.moved_from,
        "moved_hint": record.moved_hint,
    }


_BACKEND_GROUPS = {"queue": "nuvom.queue_backends", "result": "nuvom.result_backends"}


def _backend_rows(app: Any) -> list[dict[str, Any]]:
    """Installed backends by role (entry points; nothing imported), and which
    one the settings select."""
    from importlib.metadata import entry_points

    selected = {role: name for role, (name, _why) in app.backend_names().items()}
    rows = []
    for role, group in _BACKEND_GROUPS.items():
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            rows.append(
                {
                    "role": role,
                    "name": ep.name,
                    "target": ep.value,
                    "distribution": dist,
                    "selected": ep.name.lower() == selected[role].lower(),
                }
            )
    return rows


@plugin_app.command("status", cls=NuvomCommand)
def plugin_status(format: FormatOpt = Format.table) -> None:
    """Every plugin found (entry points and .nuvom_plugins.toml): source, provides, api_version, loaded or the error.

    Example: [bold]nuvom plugin status --format json[/]

    Plugins are imported; those that only register backends are also started
    (in this command only), so a failing start() shows. A malformed .nuvom_plugins.toml is
    reported with its line number (exit code 7).
    """
    from nuvom.app import App
    from nuvom.cli._extensions import extension_status
    from nuvom.cli._project import load_project_settings, project_on_path, setup_logging

    root = project_on_path()
    settings = load_project_settings()
    setup_logging(settings.log_level, quiet=True)
    import logging

    # Failures are shown in the table; the loader's log lines would say it twice.
    logging.getLogger("nuvom.plugins").setLevel(logging.CRITICAL)
    app = App(settings, project_dir=root)
    records = app.plugins.discover()
    # Plugins that only register backends (the earlier way of shipping one) are
    # started here, in this throwaway app, so a start() that fails is shown as
    # failed and never as loaded. Other plugins (exporters, hooks) only start in
    # a worker: importing them is as far as this command goes.
    app.plugins.start(settings, backends_only=True)
    backends = _backend_rows(app)
    extensions = extension_status()
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json(
            {"backends": backends, "plugins": [_record_document(r) for r in records], "cli_commands": extensions}
        )
        return
    from nuvom.cli._output import console
    from rich.markup import escape
    from rich.table import Table

    out = console()
    bt = Table(title=f"{len(backends)} backend(s)", title_justify="left", title_style="bold")
    for col in ("role", "name", "target", "distribution", "selected"):
        bt.add_column(col, overflow="fold")
    for b in backends:
        bt.add_row(
            b["role"],
            escape(b["name"]),
            escape(b["target"]),
            escape(b["distribution"]),
            "[green]yes[/]" if b["selected"] else "",
        )
    out.print(bt)
    table = Table(title=f"{len(records)} plugin(s)", title_justify="left", title_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("provides", no_wrap=True)
    table.add_column("api", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("source / error", overflow="fold")
    for r in records:
        ok = r.state in ("loaded", "started", "stopped")
        where = escape(r.source) + f"\n[dim]{escape(r.target)}[/]"
        if r.moved_hint and r.state != "failed":
            where += f"\n[yellow]{escape(r.moved_hint)}[/]"
        if r.error:
            where += f"\n[red]{escape(r.error)}[/]"
        table.add_row(
            escape(display_name(r)),
            escape("\n".join(r.provides) or "-"),
            escape(r.api_version or "-"),
            "[green]loaded[/]" if ok else f"[red]{r.state}[/]",
            where,
        )
    out.print(table)
    if extensions:
        ext = Table(title="CLI commands from plugins", title_justify="left", title_style="bold")
        for col in ("command", "target", "distribution", "state"):
            ext.add_column(col, overflow="fold")
        for e in extensions:
            state = (
                "[green]loaded[/]" if e["state"] == "loaded" else f"[red]failed[/]\n[red]{escape(e['error'] or '')}[/]"
            )
            ext.add_row(f"nuvom {escape(e['name'])}", escape(e["target"]), escape(e["distribution"]), state)
        out.print(ext)


@plugin_app.command("test", cls=NuvomCommand)
def plugin_test(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE_OR_FILE",
            help="A module (nuvom_hello.plugin), a file (./my_plugin.py), optionally :ClassName.",
        ),
    ],
    format: FormatOpt = Format.table,
) -> None:
    """Load a plugin, check it against the contract, run start() and stop() (exit 0 if every check passes, 1 if not).

    Example: [bold]nuvom plugin test nuvom_hello.plugin[/]   or   [bold]nuvom plugin test ./my_plugin.py:MyPlugin[/]

    A backend the plugin registers is exercised once with a probe job; job hooks are
    called once. Data goes to a temporary directory.
    """
    from nuvom.cli._plugin_test import run_plugin_checks
    from nuvom.cli._project import load_project_settings, project_on_path, setup_logging

    project_on_path()
    settings = load_project_settings()
    setup_logging(settings.log_level, quiet=True)
    results = run_plugin_checks(target)
    ok = all(r.ok for r in results)
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json({"target": target, "ok": ok, "plugins": [r.document() for r in results]})
    else:
        from nuvom.cli._output import console
        from rich.markup import escape

        out = console()
        for r in results:
            title = r.name or r.cls_name or r.target
            out.print(f"[bold]{escape(title)}[/]  [dim]{escape(r.target)}[/]")
            for c in r.checks:
                mark = "[green]✓[/]" if c.ok and not c.warning else "[yellow]![/]" if c.ok else "[red]✗[/]"
                out.print(f"  {mark} {escape(c.name)}" + (f"  [dim]{escape(c.detail)}[/]" if c.detail else ""))
        out.print("[bold green]all checks passed[/]" if ok else "[bold red]some checks failed[/]")
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@plugin_app.command("scaffold", cls=NuvomCommand)
def plugin_scaffold(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Plugin name: letters, digits, '-' or '_' (e.g. hello).")],
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            "--out",
            "-d",
            metavar="DIR",
            help="Where to write it (default: ./nuvom-NAME); --out is the earlier nuvom's name.",
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--kind", "-k", metavar="KIND", help="result_backend (a backend named NAME) or hooks (job hooks)."
        ),
    ] = "result_backend",
    cli: Annotated[bool, typer.Option("--cli", help="Also add a `nuvom NAME ...` sub-command.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty directory.")] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Write a ready-to-install plugin distribution: pyproject with the `nuvom` entry point, a plugin class, a test.

    Example: [bold]nuvom plugin scaffold hello --kind hooks --cli[/]   then
    [bold]pip install -e ./nuvom-hello && nuvom plugin test nuvom_hello.plugin[/]
    """
    from nuvom.cli._scaffold import KINDS, scaffold, validate_name

    if kind not in KINDS:
        raise CliError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}", EXIT_USAGE)
    try:
        normal = validate_name(name)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    target = directory or Path(f"nuvom-{normal.replace('_', '-')}")
    try:
        files = scaffold(name, target, kind=kind, cli=cli, force=force)
    except FileExistsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except OSError as exc:  # a name the file system refuses, no permission, ...
        raise CliError(f"--dir {target}: cannot be written ({exc.strerror or exc})", EXIT_USAGE) from None
    package = f"nuvom_{normal}"
    if format is Format.json:
        from nuvom.cli._output import print_json

        print_json(
            {
                "name": normal,
                "kind": kind,
                "directory": str(target),
                "package": package,
                "files": [str(f.relative_to(target)) for f in files],
            }
        )
        return
    from nuvom.cli._output import console
    from rich.markup import escape

    out = console()
    out.print(f"wrote {len(files)} files to [bold]{escape(str(target))}[/]:")
    for f in files:
        out.print(f"  {escape(str(f.relative_to(target)))}")
    out.print("next:")
    out.print(f"  pip install -e {escape(str(target))}")
    out.print(f"  nuvom plugin test {package}.plugin")
