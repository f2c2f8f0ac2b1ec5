"""The task registry (name -> :class:`~nuvom.task.Task`). Each app owns one
(``app.registry``); :func:`get_registry` is the default app's."""

from __future__ import annotations

from nuvom._registry import LazyTask, TaskRegistry, import_task, project_import_policy
from nuvom.app import default_app

__all__ = ["LazyTask", "TaskRegistry", "get_registry", "import_task", "project_import_policy"]


def get_registry() -> TaskRegistry:
    """The default app's task registry (where ``@task`` registers)."""
    return default_app().registry
