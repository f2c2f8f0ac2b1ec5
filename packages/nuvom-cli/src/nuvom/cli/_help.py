"""Plain help pages, written without rich.

typer's rich help imports rich's markdown, tables and tracebacks (most of the
start-up time of ``nuvom --help``) and shows its own type labels (``<bool>``,
``<int range>``, ``{JOB_ID}``). These pages use click's formatter, the
metavars the commands declare, and the ``rich_help_panel`` of each sub-command
as a section heading; ``[bold]...[/]`` markup in docstrings is dropped.
"""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["NuvomCommand", "NuvomSubGroup", "format_command_help", "plain", "sub_app"]

_MARKUP = re.compile(r"\[/?[a-z][a-z ]*\]|\[/\]")


def plain(text: str) -> str:
    """``text`` without rich markup tags (``[bold]``, ``[/]``)."""
    return _MARKUP.sub("", text)


def _metavar(param: Any) -> str:
    metavar = getattr(param, "metavar", None)
    if metavar:
        return str(metavar)
    choices = getattr(getattr(param, "type_descriptor", None), "choices", None) or getattr(
        getattr(param, "type", None), "choices", None
    )
    if choices:
        return "|".join(str(getattr(c, "value", c)) for c in choices)
    return "VALUE"


def _is_flag(param: Any) -> bool:
    return bool(getattr(param, "is_flag", False) or getattr(param, "count", False))


def _option_record(param: Any) -> tuple[str, str]:
    names = ", ".join(sorted(param.opts, key=lambda o: (o.startswith("--"), o)))
    if getattr(param, "secondary_opts", None):
        names += " / " + ", ".join(param.secondary_opts)
    if not _is_flag(param):
        names += f" {_metavar(param)}"
    extra = []
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        extra.append(f"{low} to {high}")
    elif low is not None:
        extra.append(f"at least {low}")
    elif high is not None:
        extra.append(f"at most {high}")
    default = getattr(param, "default", None)
    if not _is_flag(param) and default not in (None, "", [], ()) and not callable(default):
        extra.append(f"default {getattr(default, 'value', default)}")
    if getattr(param, "required", False):
        extra.append("required")
    text = plain(param.help or "")
    if extra:
        text += f"  [{'; '.join(extra)}]"
    return names, text


def _argument_record(param: Any) -> tuple[str, str]:
    name = _metavar(param) if getattr(param, "metavar", None) else str(param.name).upper()
    return name, plain(getattr(param, "help", None) or "")


def _usage(command: Any, ctx: Any) -> str:
    pieces = ["[OPTIONS]"]
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            name = _argument_record(param)[0]
            pieces.append(name if getattr(param, "required", False) else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def format_command_help(command: Any, ctx: Any, formatter: Any) -> None:
    """Write ``command``'s help to click's ``formatter``: usage, text, arguments,
    options, and sub-commands grouped by their help panel."""
    formatter.write_usage(ctx.command_path, _usage(command, ctx))
    if command.help:
        formatter.write_paragraph()
        with formatter.indentation():
            for i, paragraph in enumerate(plain(command.help).split("\n\n")):
                if i:
                    formatter.write_paragraph()
                formatter.write_text(" ".join(paragraph.split()))
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [_argument_record(p) for p in params if getattr(p, "param_type_name", "") == "argument"]
    options = [_option_record(p) for p in params if getattr(p, "param_type_name", "") == "option"]
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    if options:
        with formatter.section("Options"):
            formatter.write_dl(options)
    if hasattr(command, "list_commands"):
        panels: dict[str, list[tuple[str, str]]] = {}
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            panel = getattr(sub, "rich_help_panel", None) or "Commands"
            short = plain(sub.get_short_help_str(limit=150))
            panels.setdefault(panel, []).append((name, short))
        for panel, rows in panels.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


class NuvomCommand(TyperCommand):
    """A command whose help is plain text (no rich, no type labels)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        format_command_help(self, ctx, formatter)


class NuvomSubGroup(TyperGroup):
    """A group of commands (``inspect``, ``history``, ...) with plain help."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        format_command_help(self, ctx, formatter)


def sub_app(help: str) -> typer.Typer:
    """A ``typer.Typer`` for a group of sub-commands, with plain help."""
    return typer.Typer(help=help, no_args_is_help=True, cls=NuvomSubGroup, rich_markup_mode=None)
