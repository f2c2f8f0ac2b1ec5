"""Helpers for tests of code that uses nuvom, nuvom's own tests included."""

from __future__ import annotations

from nuvom.backends import reset_backends
from nuvom.config import reset_settings
from nuvom.hooks import clear_hooks
from nuvom.plugins.loader import reset_plugin_manager

__all__ = ["reset_process_state"]


def reset_process_state() -> None:
    """Forget everything nuvom caches per process: backends (closed), settings,
    loaded plugins (stopped) and global hooks. Call it between tests that change
    ``NUVOM_*`` variables or the working directory. Registered tasks are kept."""
    reset_backends()
    reset_settings()
    reset_plugin_manager()
    clear_hooks()
