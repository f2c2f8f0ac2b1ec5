"""The ``@task`` decorator of the default app, and :class:`Task`.

``from nuvom.task import task`` queues to the default app (settings from the
environment); ``app.task`` (:class:`nuvom.app.App`) to a given app. Both take
the same options (:class:`nuvom.job.TaskOptions`, plus ``name`` and hooks).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from nuvom._task import Task
from nuvom.app import default_app
from nuvom.job import Executor, Job, TimeoutPolicy
from nuvom.schedule import Every

__all__ = ["Task", "task"]

R = TypeVar("R")


@overload
def task(fn: Callable[..., R], /) -> Task[R]: ...
@overload
def task(
    *,
    name: str | None = ...,
    retries: int = ...,
    retry_delay_secs: float | None = ...,
    timeout_secs: float | None = ...,
    timeout_policy: TimeoutPolicy | None = ...,
    store_result: bool = ...,
    tags: Sequence[str] | str = ...,
    description: str | None = ...,
    category: str | None = ...,
    before_job: Callable[[Job], Any] | None = ...,
    after_job: Callable[[Job, Any], Any] | None = ...,
    on_error: Callable[[Job, BaseException], Any] | None = ...,
    schedule: str | Every | None = ...,
    executor: Executor | None = ...,
) -> Callable[[Callable[..., R]], Task[R]]: ...


def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make a function a task of the default app: ``@task`` or ``@task(retries=2, ...)``.

    The task follows the default app at each call, so a test that swaps it
    (:func:`nuvom.testing.isolated_app`) redirects ``.delay()`` too."""
    return (
        default_app().task(fn, _follow_default=True, **options)
        if fn is not None
        else (lambda f: default_app().task(f, _follow_default=True, **options))
    )


class _CallableModule(types.ModuleType):
    """``from nuvom import task`` binds this module (``nuvom`` is a namespace
    package, so the name resolves to the submodule); calling it as the earlier
    nuvom's users do, ``@task`` or ``@task(retries=2)``, means the decorator."""

    def __call__(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        return task(fn, **options) if fn is not None else task(**options)


sys.modules[__name__].__class__ = _CallableModule
