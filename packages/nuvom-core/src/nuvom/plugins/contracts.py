"""The contracts between nuvom-core and every plugin: the one page a plugin author reads.

Three kinds of objects cross the boundary:

* :class:`BaseJobQueue`: where jobs wait, and how workers claim them.
* :class:`BaseResultBackend`: where finished jobs are recorded and read back.
* :class:`BaseScheduleStore`: optional, a queue that also keeps schedules
  and claims their ticks (``task.schedule(...)``).
* :class:`Plugin`: something with a lifecycle (an exporter, hooks, a task
  source), named by an entry point in the ``nuvom`` group or a
  ``module:Class`` line in ``.nuvom_plugins.toml``. Core instantiates it with
  no arguments, calls :meth:`Plugin.start` once and :meth:`Plugin.stop` at
  shutdown.

Backends are found by role: an entry point in the group
``nuvom.queue_backends`` or ``nuvom.result_backends`` whose name is the value
of ``NUVOM_QUEUE_BACKEND`` / ``NUVOM_RESULT_BACKEND`` and whose value is the
class (``sqlite = "nuvom.sqlite:SQLiteJobQueue"``). Choosing a backend loads
that one class and starts no plugin; core's own ``memory`` and ``file``
backends are found exactly that way. A plugin may still register backends
from ``start()`` with :func:`nuvom.backends.register_queue_backend` /
:func:`~nuvom.backends.register_result_backend`, as the earlier nuvom's did.
Backends are constructed as ``cls(settings)`` where ``settings`` is
:class:`nuvom.config.Settings`; a class may name its own settings class as
``settings_class`` (``nuvom config`` lists its variables).

A job's state changes only through :class:`~nuvom.job.Job`'s ``mark_*``
methods (``mark_claimed`` when a backend hands it to a worker), and a lease
is always :func:`nuvom.job.lease_secs_for` of the job's timeout.

Jobs travel as :class:`nuvom.job.Job`; a backend that persists them should use
``job.to_bytes()`` / ``Job.from_bytes()`` (msgpack) unless it stores columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from nuvom.job import Job
from nuvom.plugins._presence import GONE_KEEP_SECS, WorkerInfo
from nuvom.plugins._queue import BaseJobQueue
from nuvom.plugins._results import BaseResultBackend, Cursor
from nuvom.plugins._schedules import BaseScheduleStore

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = [
    "API_VERSION",
    "GONE_KEEP_SECS",
    "BaseJobQueue",
    "BaseResultBackend",
    "BaseScheduleStore",
    "Cursor",
    "JobHooks",
    "Plugin",
    "WorkerInfo",
]

#: The contract version this core implements. A plugin whose ``api_version``
#: has a different major number is refused with a clear message.
API_VERSION = "1.0"


class Plugin:
    """Base class (and protocol) of every plugin.

    Class attributes:

    ``api_version``
        The contract version the plugin was written for, e.g. ``"1.0"``.
    ``name``
        A short unique name; a plugin found twice (entry point and
        ``.nuvom_plugins.toml``) is loaded once.
    ``provides``
        What it contributes. Known roles: ``"queue_backend"``,
        ``"result_backend"`` (started in every process that uses backends,
        producers included), and ``"tasks"``, ``"hooks"``, ``"metrics"``,
        ``"exporter"`` (started only by a worker). A plugin that provides
        only worker roles never runs in a producer process.
    ``requires``
        Names of plugins that must be started first.

    ``start(settings, extras)`` is called once. Backend plugins register their
    classes there. Worker plugins receive ``extras``:

    ``extras["worker"]``: the running :class:`nuvom.worker.Worker`;
    ``extras["app"]``: the :class:`nuvom.app.App` the worker belongs to;
    ``extras["registry"]``: its task registry (:class:`nuvom.registry.TaskRegistry`);
    ``extras["metrics_provider"]``: a callable returning a dict with
    ``worker_count``, ``inflight_jobs``, ``queue_size``, ``started_at``;
    ``extras["dev"]``: ``True`` when the worker runs with ``--dev``;
    ``extras["enabled_in_file"]`` (every plugin): ``True`` when the plugin is
    listed in ``.nuvom_plugins.toml``, i.e. explicitly enabled by the user.

    A plugin may also define any of the :class:`JobHooks` methods; a worker
    calls them for every job. A plugin that sets ``hooks_enabled = False`` by
    the end of ``start()`` (e.g. an exporter that is installed but not enabled)
    has none of its hooks called, so it costs nothing per job. Installing a
    plugin must never open a port or start a thread by itself: do that in
    ``start()`` and only when enabled by configuration.
    """

    api_version: ClassVar[str] = API_VERSION
    name: ClassVar[str] = ""
    provides: ClassVar[list[str]] = []
    requires: ClassVar[list[str]] = []

    def start(self, settings: Settings, extras: dict[str, Any] | None = None) -> None:
        """Begin work: register backends, open servers, start threads."""

    def stop(self) -> None:
        """Release everything ``start`` acquired. Called once, at shutdown."""


@runtime_checkable
class JobHooks(Protocol):
    """Lifecycle hooks. Each is optional, on a plugin, on a task or global.

    Hooks run in the worker thread that runs the job; a hook that raises is
    logged and ignored, it never fails the job.
    """

    def before_job(self, job: Job) -> None:
        """Called right before an attempt starts."""

    def after_job(self, job: Job, result: Any) -> None:
        """Called after an attempt returned ``result``."""

    def on_error(self, job: Job, error: BaseException) -> None:
        """Called after an attempt raised (or timed out: ``TimeoutError``)."""

    def on_job_finished(self, job: Job, outcome: str, duration: float) -> None:
        """Called once per attempt when its fate is decided.

        ``outcome`` is one of ``"success"``, ``"failure"``, ``"timeout"`` or
        ``"retry"``; ``duration`` is the attempt's run time in seconds.
        Metrics exporters use this one.
        """
