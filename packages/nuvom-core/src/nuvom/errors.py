"""Every error nuvom raises on purpose derives from :class:`NuvomError`.

Messages say what was wrong and what to do about it, because they end up on a
user's terminal through the CLI as a single line. The tree::

    NuvomError
    ├── ConfigError            a setting has a value nuvom cannot use
    ├── SerializationError     a value cannot be encoded or decoded (msgpack)
    ├── TaskNotFound           a job names a task that is not registered
    │   └── TaskImportError    the task's module raised while it was imported: it does not run
    ├── BackendError           a backend cannot be found, opened or used
    ├── PluginError            a plugin cannot be loaded, checked or started
    ├── InvalidJobId (+ValueError)  an id from outside is not a well-formed id
    ├── JobFailed              Job.get() on a job that ended FAILED
    ├── WorkerLost             a job's worker died while running it too often
    └── ChildProcessDied       the pool process running a job crashed (signal, exit, OOM kill)

Plugins derive their own errors from these (nuvom-prometheus's
``PortUnavailable`` is a ``PluginError``).
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ChildProcessDied",
    "ConfigError",
    "InvalidJobId",
    "JobFailed",
    "NuvomError",
    "PluginError",
    "SerializationError",
    "TaskImportError",
    "TaskNotFound",
    "WorkerLost",
]


class NuvomError(Exception):
    """Base class of all nuvom errors."""


class ConfigError(NuvomError):
    """A setting (environment, ``.env`` or code) has a value nuvom cannot use."""


class SerializationError(NuvomError):
    """A value could not be encoded or decoded by the serializer."""


class TaskNotFound(NuvomError):
    """A job names a task that is neither registered nor importable."""


class TaskImportError(TaskNotFound):
    """A task's module raised while it was imported (``sys.exit()`` for a
    missing setting, any exception): the tasks it registered before failing do
    not run, and their jobs fail with this error, which names the module and
    the exception. ``module`` is the module's name."""

    def __init__(self, message: str, module: str = "") -> None:
        super().__init__(message)
        self.module = module


class BackendError(NuvomError):
    """A queue or result backend cannot be found, opened or used."""


class PluginError(NuvomError):
    """A plugin could not be loaded, checked or started."""


class InvalidJobId(NuvomError, ValueError):
    """A job id from outside (CLI, SDK, file name) is not a well-formed id."""


class JobFailed(NuvomError):
    """Raised by ``Job.get()`` when the job ended in failure.

    It carries the remote exception's type name, message and formatted
    traceback, because the original exception object lives in another thread
    or process and may not be importable here.
    """

    def __init__(self, job_id: str, exc_type: str, message: str, traceback: str | None) -> None:
        super().__init__(f"job {job_id} failed: {exc_type}: {message}")
        self.job_id = job_id
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = traceback


class WorkerLost(NuvomError):
    """The job's worker stopped (was killed) while running it too many times."""


class ChildProcessDied(NuvomError):
    """The process-pool child running a job ended without an answer: a crash
    (segfault), ``os._exit()``, or a kill (the out-of-memory killer sends SIGKILL)."""
