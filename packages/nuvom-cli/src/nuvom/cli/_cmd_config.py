"""``nuvom config``: every setting, its value, and where the value came from."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from nuvom.cli._output import Format

__all__ = ["config", "plugin_settings"]

FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", case_sensitive=False, metavar="table|json", help="table for people, json for scripts."
    ),
]


def _load_plugin_settings(cls: type, plugin: str) -> Any:
    from nuvom.config import read_settings
    from nuvom.errors import ConfigError

    try:
        return read_settings(cls)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (a setting of plugin {plugin!r})") from None


def plugin_settings(*, plugins: bool = True) -> list[tuple[str, Any]]:
    """``(name, settings instance)`` for the selected backends and, when
    ``plugins``, every loaded plugin that declare a ``settings_class`` (each
    class once). Backends come from entry points; plugins are imported, so
    ``nuvom config`` asks for them only with ``--plugins``."""
    from nuvom.app import default_app

    app = default_app()
    seen: set[type] = set()
    out = []
    for role, (name, _why) in app.backend_names().items():
        try:
            backend = app.backends.find(role, name)
        except Exception:
            continue  # reported by the backend lines of `nuvom config`
        cls = getattr(backend, "settings_class", None)
        if cls is not None and cls not in seen:
            seen.add(cls)
            out.append((name, _load_plugin_settings(cls, name)))
    if not plugins:
        return out
    for record in app.plugins.discover():
        cls = getattr(type(record.plugin), "settings_class", None) if record.plugin is not None else None
        if cls is not None and cls not in seen:
            seen.add(cls)
            out.append((record.name, _load_plugin_settings(cls, record.name)))
    return out


def _describe(settings: Any) -> list[dict[str, Any]]:
    from nuvom.config import env_prefix_of, setting_sources

    fields = type(settings).model_fields
    sources = setting_sources(settings)
    prefix = env_prefix_of(type(settings))
    rows = []
    for field, info in fields.items():
        var = (prefix + field).upper()
        value, source = sources.get(var, (getattr(settings, field), "default"))
        rows.append({"variable": var, "value": value, "source": source, "description": info.description or ""})
    return rows


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config(
    plugins: Annotated[
        bool,
        typer.Option(
            "--plugins", help="Also the settings of the plugins of .nuvom_plugins.toml and entry points (imports them)."
        ),
    ] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Every setting (core, backends; plugins with --plugins), its value and source: environment, .env or default.

    Example: [bold]NUVOM_MAX_WORKERS=8 nuvom config[/]   or   [bold]nuvom config --plugins[/]

    Also shows which queue and result backends are in use and why. A bad
    value is reported as one line naming the variable (exit code 5). Without
    --plugins no plugin is imported, so a broken plugin cannot stop it.
    """
    from nuvom.cli._project import backend_report, load_project_settings, setup_logging

    settings = load_project_settings()
    setup_logging(settings.log_level, quiet=True)
    core = _describe(settings)
    sections = [(name, _describe(s)) for name, s in plugin_settings(plugins=plugins)]
    backends = backend_report(settings)
    if format is Format.json:
        from nuvom.cli._output import print_json

        def section(rows: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                r["variable"]: {"value": _jsonable(r["value"]), "source": r["source"], "description": r["description"]}
                for r in rows
            }

        print_json(
            {
                "settings": section(core),
                "plugins": {name: section(rows) for name, rows in sections},
                "backends": backends,
            }
        )
        return
    from nuvom.cli._output import console
    from rich.markup import escape
    from rich.table import Table

    out = console()
    source_style = {"environment": "bold cyan", ".env": "bold magenta", "default": "dim"}
    for title, rows in [("Settings", core), *((f"Plugin {name}", r) for name, r in sections)]:
        table = Table(title=title, title_justify="left", title_style="bold")
        table.add_column("variable", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("source", no_wrap=True)
        table.add_column("description", overflow="fold")
        for r in rows:
            value = "(unset)" if r["value"] is None else str(r["value"])
            style = source_style.get(r["source"], "")
            table.add_row(r["variable"], escape(value), f"[{style}]{r['source']}[/]", escape(r["description"]))
        out.print(table)
    for role, label in (("queue", "queue backend"), ("result", "result backend")):
        info = backends[role]
        missing = "" if info["installed"] else "  [red](not installed)[/]"
        out.print(f"[bold]{label}[/]: {escape(info['name'])}  [dim]({escape(info['why'])})[/]{missing}")
