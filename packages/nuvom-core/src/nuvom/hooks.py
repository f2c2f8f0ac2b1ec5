"""App-wide lifecycle hooks of the default app, applied by its workers to every job.

``register_hooks(before_job=fn, ...)`` is ``default_app().hooks.register(...)``;
see :mod:`nuvom.plugins.contracts` (``JobHooks``) for the hooks and their arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nuvom._hooks import HOOK_NAMES
from nuvom.app import default_app

__all__ = ["HOOK_NAMES", "clear_hooks", "global_hooks", "register_hooks"]


def register_hooks(**hooks: Callable[..., Any]) -> None:
    """``register_hooks(before_job=fn, ...)``: add hooks to the default app."""
    default_app().hooks.register(**hooks)


def global_hooks() -> dict[str, list[Callable[..., Any]]]:
    """A snapshot of the default app's hooks."""
    return default_app().hooks.snapshot()


def clear_hooks() -> None:
    default_app().hooks.clear()
