"""Helpers for tests of code that uses nuvom (nuvom's own tests included).

``isolated_app()`` gives each test an app of its own, made the default for the
test's duration, so module-level ``@task`` functions queue to it::

    from nuvom.testing import isolated_app
    from nuvom.worker import Worker

    def test_add():
        with isolated_app() as app, Worker(app=app):      # in-memory, in-process
            assert add.delay(1, 2).get(timeout=5) == 3

    def test_add_eagerly():
        with isolated_app(eager=True):                     # run at .delay(), no worker
            assert add.delay(1, 2).get() == 3
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from nuvom._settings import Settings
from nuvom.app import App, default_app, set_default_app
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.job import Job

__all__ = ["EagerQueue", "isolated_app", "reset_process_state"]


class EagerQueue(MemoryJobQueue):
    """A queue that runs each job at once, in the caller's thread, retries
    included (their delays are waited out), and stores its outcome."""

    def __init__(self, app: App) -> None:
        super().__init__(app.settings)
        self._app = app

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        app = self._app
        for job in jobs:
            app.results.store([app.run_locally(job)])


@contextmanager
def isolated_app(settings: Settings | None = None, *, eager: bool = False, **overrides: Any) -> Iterator[App]:
    """An app for one test, made the default while the block runs; closed after.

    It shares the tasks of the current default app (module-level ``@task``
    functions keep working) but nothing else: settings (default: memory
    backends; ``overrides`` are Settings fields), hooks, plugins and backends
    are its own. ``eager=True`` runs each job when it is queued."""
    if settings is None:
        values: dict[str, Any] = {"queue_backend": "memory", "result_backend": "memory", **overrides}
        settings = Settings(**values)
    elif overrides:
        settings = settings.model_copy(update=overrides)
    app = App(settings, registry=default_app().registry)
    if eager:
        app.set_backends(EagerQueue(app), MemoryResultBackend(settings))
    previous = set_default_app(app)
    try:
        yield app
    finally:
        set_default_app(previous)
        app.close()


def reset_process_state() -> None:
    """Reset the default app: backends closed, settings read again on next use,
    plugins stopped, hooks cleared. Call it between tests that change
    ``NUVOM_*`` variables or the working directory. Registered tasks are kept."""
    app = default_app()
    app.configure(None)
    app.hooks.clear()
