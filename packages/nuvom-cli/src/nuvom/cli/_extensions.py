"""Sub-commands contributed by other distributions.

A distribution adds commands to ``nuvom`` with an entry point in the
``nuvom.cli`` group whose value is a ``typer.Typer`` app (or a click command)::

    [project.entry-points."nuvom.cli"]
    prometheus = "nuvom.prometheus.cli:app"

which makes ``nuvom prometheus ...`` run that app. Entry points are read by
name only at start-up; an app's module is imported when its command is run or
when ``nuvom --help`` lists it. One that fails to load is reported on stderr
and left out; it never breaks the other commands.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["CLI_ENTRY_POINT_GROUP", "ExtensionInfo", "extension_entry_points", "extension_status", "load_extension"]

CLI_ENTRY_POINT_GROUP = "nuvom.cli"
PANEL = "Plugin commands"


@lru_cache(maxsize=1)
def extension_entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points

    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=CLI_ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


_loaded: dict[str, Any] = {}
_errors: dict[str, str] = {}


def _to_command(obj: Any, name: str) -> Any:
    import typer

    if isinstance(obj, typer.Typer):
        command = typer.main.get_command(obj)
    elif callable(getattr(obj, "main", None)) and callable(getattr(obj, "invoke", None)):
        command = obj  # already a click-style command
    else:
        raise TypeError(f"{type(obj).__name__} is neither a typer.Typer app nor a click command")
    command.name = name
    if getattr(command, "rich_help_panel", None) is None:
        # Listed under its own heading in `nuvom --help`.
        setattr(command, "rich_help_panel", PANEL)  # noqa: B010
    return command


def load_extension(name: str, *, quiet: bool = False) -> Any | None:
    """The command for entry point ``name`` (imported once), or ``None`` when
    there is no such entry point or it fails to load (reported on stderr)."""
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    ep = extension_entry_points().get(name)
    if ep is None:
        return None
    try:
        command = _to_command(ep.load(), name)
    except Exception as exc:
        _errors[name] = f"{type(exc).__name__}: {exc}"
        if not quiet:
            sys.stderr.write(
                f"warning: the `nuvom {name}` command from {_dist_name(ep)} ({ep.value}) "
                f"could not be loaded: {_errors[name]}\n"
            )
        return None
    _loaded[name] = command
    return command


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "an unknown distribution"


class ExtensionInfo(dict):  # type: ignore[type-arg]
    """``{"name", "target", "distribution", "state", "error"}`` for ``plugin status``."""


def extension_status() -> list[ExtensionInfo]:
    out = []
    for name, ep in sorted(extension_entry_points().items()):
        command = load_extension(name, quiet=True)
        out.append(
            ExtensionInfo(
                name=name,
                target=ep.value,
                distribution=_dist_name(ep),
                state="loaded" if command is not None else "failed",
                error=_errors.get(name),
            )
        )
    return out
