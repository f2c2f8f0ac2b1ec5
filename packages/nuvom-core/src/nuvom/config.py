"""Settings: ``NUVOM_*`` environment variables, then ``.env`` in the working
directory, then defaults (:class:`EnvSettings`).

An :class:`~nuvom.app.App` owns its :class:`Settings`; :func:`get_settings`
and :func:`reset_settings` read and replace the default app's.

Plugins that need settings of their own declare them on an
:class:`EnvSettings` subclass (the same ``NUVOM_`` prefix and ``.env``) and
expose it as ``settings_class`` on their plugin or backend class; ``nuvom
config`` shows those too.
"""

from __future__ import annotations

from nuvom._settings import (
    ENV_PREFIX,
    EnvSettings,
    Settings,
    env_prefix_of,
    load_settings,
    read_settings,
    setting_sources,
)
from nuvom.app import default_app

__all__ = [
    "ENV_PREFIX",
    "EnvSettings",
    "Settings",
    "env_prefix_of",
    "get_settings",
    "load_settings",
    "read_settings",
    "reset_settings",
    "setting_sources",
]


def get_settings() -> Settings:
    """The default app's settings (read from the environment once)."""
    return default_app().settings


def reset_settings(settings: Settings | None = None) -> None:
    """Give the default app new settings (``None``: read the environment again on
    next use). Backends it already built are kept (``nuvom.backends.reset_backends()``
    rebuilds them); its tasks and hooks are kept."""
    default_app().configure(settings, rebuild=False)
