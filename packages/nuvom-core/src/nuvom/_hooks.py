"""Lifecycle hooks: the app-wide ones, and the set a worker calls per job.

Per-task hooks are given to ``@task(before_job=..., after_job=..., on_error=...)``;
plugins define the same methods (see :class:`nuvom.plugins.contracts.JobHooks`);
app-wide hooks are registered with ``app.hooks.register(...)`` (or
:func:`nuvom.hooks.register_hooks` for the default app). Order for an attempt:
app-wide, then plugin, then task hooks.

Hooks written for the earlier nuvom take fewer arguments (``before_job()``,
``after_job(result)``); each hook is called with as many of the documented
arguments as it accepts, counted once when the worker starts.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HOOK_NAMES", "AppHooks", "Hooks", "call_hooks", "fit_hook"]

log = logging.getLogger("nuvom.hooks")

HOOK_NAMES = ("before_job", "after_job", "on_error", "on_job_finished")


class AppHooks:
    """An app's own hooks, by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[str, list[Callable[..., Any]]] = {name: [] for name in HOOK_NAMES}

    def register(self, **hooks: Callable[..., Any]) -> None:
        """``register(before_job=fn, ...)``: add hooks by name."""
        unknown = set(hooks) - set(HOOK_NAMES)
        if unknown:
            raise ValueError(f"unknown hook(s) {sorted(unknown)}; known hooks are {list(HOOK_NAMES)}")
        with self._lock:
            for name, fn in hooks.items():
                self._hooks[name].append(fn)

    def snapshot(self) -> dict[str, list[Callable[..., Any]]]:
        """A copy; workers take it once at start-up."""
        with self._lock:
            return {name: list(fns) for name, fns in self._hooks.items()}

    def clear(self) -> None:
        with self._lock:
            for fns in self._hooks.values():
                fns.clear()


def fit_hook(fn: Callable[..., Any], arity: int) -> Callable[..., Any]:
    """``fn`` made callable with ``arity`` positional arguments: one that takes
    fewer (an earlier-nuvom hook) receives the last ones it can take, e.g.
    ``after_job(result)`` gets the result, ``before_job()`` nothing."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return fn
    takes = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if takes >= arity:
        return fn
    if takes == 0:
        return lambda *args: fn()
    return lambda *args: fn(*args[arity - takes :])


_ARITY = {"before_job": 1, "after_job": 2, "on_error": 2, "on_job_finished": 3}


@dataclass
class Hooks:
    """Hook callables per name, in call order (app-wide, plugins), fitted to
    the arguments each accepts."""

    before_job: list[Callable[..., Any]] = field(default_factory=list)
    after_job: list[Callable[..., Any]] = field(default_factory=list)
    on_error: list[Callable[..., Any]] = field(default_factory=list)
    on_job_finished: list[Callable[..., Any]] = field(default_factory=list)

    @classmethod
    def collect(cls, app_hooks: dict[str, list[Callable[..., Any]]], plugins: list[Any]) -> Hooks:
        """App-wide hooks, then each plugin's. A plugin whose ``hooks_enabled``
        is ``False`` after ``start()`` (an exporter left disabled) contributes none."""
        hooks = cls()
        for name in HOOK_NAMES:
            getattr(hooks, name).extend(fit_hook(fn, _ARITY[name]) for fn in app_hooks.get(name, ()))
        for plugin in plugins:
            if getattr(plugin, "hooks_enabled", True) is False:
                continue
            for name in HOOK_NAMES:
                fn = getattr(plugin, name, None)
                if callable(fn):
                    getattr(hooks, name).append(fit_hook(fn, _ARITY[name]))
        return hooks


def call_hooks(fns: list[Callable[..., Any]], *args: Any) -> None:
    for fn in fns:
        try:
            fn(*args)
        except Exception:
            log.exception("hook %s raised; ignored", getattr(fn, "__qualname__", fn))
