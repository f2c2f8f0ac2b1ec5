"""Two renderers for the read commands (``status``, ``inspect job``, ``history
recent``): rich on a terminal, plain text anywhere else.

A command builds its output once, as rows of *values* (a string, or segments
of text with a rich style each); :func:`print_grid` and :func:`print_table`
write them. Output that is not a terminal (a file, a pipe, a script calling
``nuvom status`` in a loop) is plain text written with the standard library:
every value whole, one table row per line, columns separated by two spaces,
and rich is never imported (about a tenth of the start-up of these commands,
bench/bench_cli.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nuvom.job import Job
    from rich.console import Console

__all__ = [
    "Column",
    "Value",
    "control_rows",
    "print_block",
    "print_grid",
    "print_line",
    "print_table",
    "styled",
    "text_of",
    "to_terminal",
]

#: ``(text, rich style)``; the style is ignored in plain text.
Segment = tuple[str, str]
Value = str | Sequence[Segment]


def styled(text: str, style: str) -> list[Segment]:
    return [(text, style)]


def text_of(value: Value) -> str:
    return value if isinstance(value, str) else "".join(text for text, _ in value)


def to_terminal() -> bool:
    """Whether stdout is a terminal (rich output) rather than a file or a pipe."""
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


@dataclass(frozen=True)
class Column:
    header: str
    right: bool = False  # right-aligned (numbers, durations)
    options: dict[str, Any] | None = None  # rich's add_column() options, on a terminal


def _rich_text(value: Value, **options: Any) -> Any:
    from rich.text import Text

    if isinstance(value, str):
        return Text(value, **options)
    return Text.assemble(*value, **options)


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        # A stored string with a lone surrogate, or an encoding that lacks a character.
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))


def _one_line(text: str) -> str:
    # One table row per line in plain text: a line break inside a value is shown, not made.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def print_grid(out: Console | None, rows: Sequence[tuple[str, Value]], *, fold: bool = False) -> None:
    """Label/value rows: a rich grid on ``out``, or (``out`` is ``None``) plain
    lines, the labels padded to one width and a value's later lines indented under it."""
    if out is not None:
        from rich.table import Table

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold" if fold else "ellipsis")  # rich's default: ellipsis
        for label, value in rows:
            grid.add_row(label, _rich_text(value))
        out.print(grid)
        return
    width = max((len(label) for label, _ in rows), default=0)
    indent = "\n" + " " * (width + 2)
    lines = [(label.ljust(width) + "  " + text_of(value).replace("\n", indent)).rstrip() for label, value in rows]
    _write("\n".join(lines) + "\n")


def print_table(
    out: Console | None, title: str, columns: Sequence[Column], rows: Sequence[Sequence[Value]], **table_options: Any
) -> None:
    """A titled table: rich's ``Table`` on ``out`` (with ``table_options`` and
    each column's ``options``), or plain text: the title, a header line and one
    line per row, columns padded to their widest value."""
    if out is not None:
        from rich.table import Table

        table = Table(title=title, title_justify="left", title_style="bold", **table_options)
        for col in columns:
            table.add_column(col.header, justify="right" if col.right else "left", **(col.options or {}))
        for row in rows:
            table.add_row(*(_rich_text(v) for v in row))
        out.print(table)
        return
    cells = [[col.header for col in columns]] + [[_one_line(text_of(v)) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [title]
    for line in cells:
        padded = [
            cell.rjust(w) if col.right else (cell if i == len(columns) - 1 else cell.ljust(w))
            for i, (cell, w, col) in enumerate(zip(line, widths, columns, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    _write("\n".join(lines) + "\n")


def print_block(out: Console | None, title: str, text: str, *, style: str = "") -> None:
    """A titled block of preformatted text (a traceback): a rich panel, or the
    title on a line and the text as it is."""
    if out is not None:
        from rich.panel import Panel
        from rich.text import Text

        out.print(Panel(Text(text.rstrip()), title=title, title_align="left", border_style=style, expand=True))
        return
    _write(f"{title}\n{text.rstrip()}\n")


def print_line(out: Console | None, value: Value = "") -> None:
    if out is not None:
        out.print(_rich_text(value))
        return
    _write(text_of(value) + "\n")


#: What a workflow job receives from the jobs it waits for, in words.
_RECEIVES = {
    "result": "runs once it succeeded, with its result as first argument",
    "results": "runs once they all succeeded, with their results (a list) as first argument",
    "error": "runs only if one fails for good, with its error as first argument (on_failure)",
    "nothing": "runs once they all succeeded (depends_on)",
}


# -- status / inspect job: a job's queue and workflow ------------------------------
def control_rows(job: Job, dependents: list[str]) -> list[tuple[str, Value]]:
    """The rows of ``status`` and ``inspect job`` for the job's queue, priority,
    unique key, the jobs it waits for and those waiting for it."""
    rows: list[tuple[str, Value]] = [("queue", f"{job.queue}, priority {job.priority}")]
    if job.unique_key:
        rows.append(("unique key", job.unique_key))
    flow = job.flow
    if flow is not None:
        receives = "error" if flow.run_if == "failed" else flow.receives
        rows.append(("waits for", [(", ".join(flow.parents), ""), (f"  ({_RECEIVES[receives]})", "dim")]))
    if dependents:
        rows.append(("then", [(", ".join(dependents), ""), ("  (waiting for this job)", "dim")]))
    return rows
