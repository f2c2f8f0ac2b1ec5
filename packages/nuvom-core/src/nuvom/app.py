"""The :class:`App`: one object that owns what nuvom keeps per configuration.

An app holds its settings, its task registry, its hooks, its plugins and its
queue and result backends. Two apps in one process (say memory, and SQLite in
a temporary folder) never touch each other::

    app = App(Settings(queue_backend="memory", result_backend="memory"))

    @app.task(retries=2)
    def add(x, y):
        return x + y

    with Worker(app=app):
        assert add.delay(1, 2).get(timeout=5) == 3

The module-level API (``from nuvom.task import task``, ``nuvom.sdk``,
``Worker()``, ``nuvom runworker``) uses the *default app*, built on first use
from the environment (:func:`default_app`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom import _default
from nuvom._backends import BackendTable, Role, registering_into
from nuvom._gather import Gather, reads_in_batches
from nuvom._hooks import AppHooks
from nuvom._registry import TaskRegistry, project_import_policy
from nuvom._settings import Settings, load_settings
from nuvom._task import Task
from nuvom.errors import TaskImportError
from nuvom.job import Job, JobStatus
from nuvom.plugins._loader import PluginManager, call_start
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend, Plugin

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["App", "default_app", "set_default_app"]

log = logging.getLogger("nuvom.app")


class App:
    """Settings, tasks, hooks, plugins and backends of one nuvom configuration.

    ``settings``: the :class:`~nuvom.config.Settings` to use (default: read
    from the environment and ``.env`` on first use). ``queue`` / ``results``:
    backend instances to use instead of building them from the settings.
    ``registry`` / ``hooks``: share another app's tasks or hooks.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        queue: BaseJobQueue | None = None,
        results: BaseResultBackend | None = None,
        registry: TaskRegistry | None = None,
        hooks: AppHooks | None = None,
        project_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self.registry = registry if registry is not None else TaskRegistry()
        self.hooks = hooks if hooks is not None else AppHooks()
        self.project_dir = project_dir
        self.backends = BackendTable()
        self.plugins = PluginManager(project_dir, self.backends)
        self._queue = queue
        self._results = results
        self._lock = threading.RLock()
        # Reads results ahead for job.get() (nuvom._gather), if the result backend
        # reads many in one call; decided once per result backend.
        self._gather: Gather | None = None
        self._gather_known = False

    def __repr__(self) -> str:
        return f"<nuvom App queue={type(self._queue).__name__ if self._queue else '?'}>"

    # -- settings -------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        settings = self._settings
        if settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = load_settings()
                settings = self._settings
        return settings

    def configure(self, settings: Settings | None = None, *, rebuild: bool = True) -> None:
        """Use new settings (``None``: read the environment again on next use).
        With ``rebuild`` (the default) backends are closed and plugins stopped,
        to be rebuilt from them; without, only the settings change. Tasks and
        hooks are kept."""
        with self._lock:
            if not rebuild:
                self._settings = settings
                return
            self._close_backends()
            self.plugins.stop()
            self.backends = BackendTable()
            self.plugins = PluginManager(self.project_dir, self.backends)
            self._settings = settings

    # -- tasks ----------------------------------------------------------------
    def task(self, fn: Callable[..., Any] | None = None, /, *, _follow_default: bool = False, **options: Any) -> Any:
        """Make a function a task of this app: ``@app.task`` or ``@app.task(retries=2, ...)``."""

        def wrap(f: Callable[..., Any]) -> Task[Any]:
            getter = default_app if _follow_default else (lambda: self)
            t: Task[Any] = Task(f, app=getter, **options)
            self.registry.register(t)
            return t

        return wrap(fn) if fn is not None else wrap

    def import_task_modules(self, modules: Iterable[str] = ()) -> list[str]:
        """Import ``NUVOM_TASK_MODULES`` and ``modules`` so that their tasks
        register (``python -m nuvom.worker MODULE``, ``nuvom runworker``), each
        through :meth:`TaskRegistry.import_module
        <nuvom.registry.TaskRegistry.import_module>`. A module that raises while
        importing (``sys.exit()`` included) is logged once at ERROR and its tasks
        fail their jobs with ``TaskImportError``, while the others are served;
        returns the names of those modules. A module that does not exist raises
        ``TaskNotFound``."""
        failed = []
        for module in dict.fromkeys([*self.settings.task_module_list(), *modules]):
            try:
                self.registry.import_module(module)
            except TaskImportError:
                failed.append(module)  # logged by the registry; its jobs fail with the reason
        return failed

    # -- backends -------------------------------------------------------------
    def backend_names(self) -> dict[Role, tuple[str, str]]:
        """``{"queue": (name, why), "result": (name, why)}``; ``why`` names the
        variable that chose it, or why the default is what it is."""
        settings = self.settings
        default = self.backends.default_name()
        return {
            "queue": (settings.queue_backend, "NUVOM_QUEUE_BACKEND") if settings.queue_backend else default,
            "result": (settings.result_backend, "NUVOM_RESULT_BACKEND") if settings.result_backend else default,
        }

    def backend_class(self, role: Role, name: str) -> type[Any]:
        """The class of backend ``name``: from this app's registrations or its
        entry point; failing both, from backend plugins that register it in
        ``start()`` (the earlier way), which are started only then."""
        cls = self.backends.find(role, name)
        if cls is None:
            self.plugins.start(self.settings, backends_only=True)
        return self.backends.lookup(role, name)

    @property
    def queue(self) -> BaseJobQueue:
        queue = self._queue
        if queue is None:
            with self._lock:
                if self._queue is None:
                    name = self.backend_names()["queue"][0]
                    self._queue = self.backend_class("queue", name)(self.settings)
                queue = self._queue
        return queue

    @property
    def results(self) -> BaseResultBackend:
        results = self._results
        if results is None:
            with self._lock:
                if self._results is None:
                    name = self.backend_names()["result"][0]
                    self._results = self.backend_class("result", name)(self.settings)
                results = self._results
        return results

    def set_backends(self, queue: BaseJobQueue | None = None, results: BaseResultBackend | None = None) -> None:
        """Use these backend instances (embedding and tests)."""
        with self._lock:
            if queue is not None:
                self._queue = queue
            if results is not None:
                self._results = results
                self._gather, self._gather_known = None, False

    def _read_ahead(self) -> Gather | None:
        """What reads this app's results in batches for ``job.get()``
        (:mod:`nuvom._gather`); ``None`` when the result backend reads one
        record a call. Decided from the backend's class: queueing a job does
        not create the result backend."""
        if not self._gather_known:
            with self._lock:
                if not self._gather_known:
                    try:
                        results = self._results
                        if results is not None:
                            cls: type[Any] = type(results)
                        else:
                            cls = self.backend_class("result", self.backend_names()["result"][0])
                        batches = reads_in_batches(cls)
                    except Exception:
                        batches = False  # a backend that cannot load says so when a result is read
                    self._gather = Gather(lambda: self.results) if batches else None
                    self._gather_known = True
        return self._gather

    def _close_backends(self) -> None:
        for backend in (self._queue, self._results):
            if backend is not None:
                try:
                    backend.close()
                except Exception:
                    log.exception("closing %r failed", backend)
        self._queue = self._results = None
        self._gather, self._gather_known = None, False

    # -- jobs -----------------------------------------------------------------
    def get_job(self, job_id: str) -> Job | None:
        """The job's record: from the results if it finished, else from the queue."""
        record = self.results.get_full(job_id)
        if record is None:
            record = self.queue.get(job_id)
        if record is None:
            # Finished between the two reads: it left the queue only after its
            # outcome was stored, so the results have it now.
            record = self.results.get_full(job_id)
        return None if record is None else record.bind(self)

    def no_outcome_message(self, job: Job, timeout: float | None) -> str:
        """Why ``job.get(timeout)`` found no outcome, saying whether a worker has it."""
        try:
            queued = self.queue.get(job.id)
        except Exception:
            queued = None
        if queued is not None and queued.status is JobStatus.PENDING:
            where = "no worker has claimed it yet: start one with `nuvom runworker` (or `python -m nuvom.worker`)"
            if not self.queue.shared_between_processes:
                where += "; the memory queue is seen only by workers in this process (use Worker(app=...))"
        elif queued is not None:
            where = f"it is {queued.status.value} (attempt {queued.attempts}) on worker {queued.worker_id or '?'}"
        else:
            where = "no backend of this app knows it"
        return f"job {job.id} has no outcome after {timeout} s: {where}"

    def run_locally(self, job: Job, *, retries: bool = True) -> Job:
        """Run ``job`` in this thread with this app's tasks and hooks, retries
        included, and return it finished; no backend is read or written
        (``nuvom runtestworker``, eager test apps)."""
        from nuvom._hooks import Hooks
        from nuvom._runner import run_job  # the engine: not needed to queue or read jobs

        hooks = Hooks.collect(self.hooks.snapshot(), [])
        return run_job(
            job,
            registry=self.registry,
            settings=self.settings,
            hooks=hooks,
            retries=retries,
            may_import=self.import_policy(),
        )

    def import_policy(self) -> Callable[[str], str | None]:
        """Which modules a job's import path may name when its task is not
        registered (see :func:`nuvom.registry.project_import_policy`): the
        project folder's and ``NUVOM_TASK_MODULES``."""
        return project_import_policy(self.project_dir or Path.cwd(), self.settings.task_module_list())

    # -- lifecycle ------------------------------------------------------------
    def start_plugin(self, plugin: Plugin, extras: dict[str, Any] | None = None) -> None:
        """Start one plugin for this app, outside its manager (``nuvom plugin
        test``): backends it registers go to this app, ``start`` is called the
        way it is declared."""
        with registering_into(self.backends):
            call_start(plugin, self.settings, {"app": self, **(extras or {})})

    def close(self) -> None:
        """Close the backends and stop the plugins; the app can be used again
        (they are rebuilt on next use)."""
        with self._lock:
            self._close_backends()
            self.plugins.stop()
            self.plugins = PluginManager(self.project_dir, self.backends)

    def __enter__(self) -> App:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def derive(self, settings: Settings) -> App:
        """An app with other settings that shares this one's tasks and hooks
        (``Worker(settings=...)`` runs on one)."""
        return App(settings, registry=self.registry, hooks=self.hooks, project_dir=self.project_dir)


def default_app() -> App:
    """The app behind the module-level API, built from the environment on first use."""
    return _default.get_or_create(App)


def set_default_app(app: App | None) -> App | None:
    """Make ``app`` the default app (``None``: a fresh one on next use); returns the
    previous one, which is not closed. :func:`nuvom.testing.isolated_app` uses it."""
    return _default.replace(app)
