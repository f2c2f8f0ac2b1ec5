"""Global lifecycle hooks, applied by every worker in this process to every job.

Per-task hooks are given to ``@task(before_job=..., after_job=..., on_error=...)``;
plugins define the same methods (see :class:`nuvom.plugins.contracts.JobHooks`).
Order for an attempt: global, then plugin, then task hooks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HOOK_NAMES", "clear_hooks", "global_hooks", "register_hooks"]

HOOK_NAMES = ("before_job", "after_job", "on_error", "on_job_finished")

_lock = threading.Lock()
_hooks: dict[str, list[Callable[..., Any]]] = {name: [] for name in HOOK_NAMES}


def register_hooks(**hooks: Callable[..., Any]) -> None:
    """``register_hooks(before_job=fn, ...)``: add global hooks by name."""
    unknown = set(hooks) - set(HOOK_NAMES)
    if unknown:
        raise ValueError(f"unknown hook(s) {sorted(unknown)}; known hooks are {list(HOOK_NAMES)}")
    with _lock:
        for name, fn in hooks.items():
            _hooks[name].append(fn)


def global_hooks() -> dict[str, list[Callable[..., Any]]]:
    """A snapshot; workers take it once at start-up."""
    with _lock:
        return {name: list(fns) for name, fns in _hooks.items()}


def clear_hooks() -> None:
    with _lock:
        for fns in _hooks.values():
            fns.clear()
