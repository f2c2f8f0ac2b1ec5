"""The one piece of module-level state in nuvom-core: the default app.

Everything else (settings, tasks, hooks, plugins, backends) lives in an
:class:`nuvom.app.App`. The module-level API (``@task``, ``nuvom.sdk``,
``Worker()``, ``nuvom runworker``) uses the default app, which
:func:`nuvom.app.default_app` builds on first use. This module sits below
every other one so that low-level modules (``job``) can reach the default app
without importing :mod:`nuvom.app` (which imports them).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from nuvom.errors import NuvomError

if TYPE_CHECKING:
    from nuvom.app import App

__all__ = ["current", "get_or_create", "replace"]


def _refuse_a_mixed_install() -> None:
    # `nuvom` is a namespace package shared by nuvom-core and its siblings. The
    # earlier single `nuvom` distribution (0.11) ships nuvom/__init__.py and
    # files at the same paths as ours: installed together, its __init__ runs
    # first and a later `pip uninstall nuvom` deletes files these packages own.
    package = sys.modules.get("nuvom")
    if package is not None and getattr(package, "__file__", None):
        raise ImportError(
            f"an earlier nuvom (0.11) is installed over nuvom-core ({package.__file__}); run "
            "`pip uninstall -y nuvom` and then `pip install --force-reinstall nuvom-core nuvom-cli` "
            "(plus the other nuvom-* packages you use); see docs/migrating.md"
        )


_refuse_a_mixed_install()

_lock = threading.Lock()
_app: App | None = None


def current() -> App:
    """The default app; an error if none was made yet (nothing in this process
    used nuvom's module-level API)."""
    app = _app
    if app is None:
        raise NuvomError(
            "no nuvom app in this process yet: queue jobs with a task (`@task` from nuvom.task) "
            "or build one with nuvom.app.App()"
        )
    return app


def get_or_create(factory: Callable[[], App]) -> App:
    global _app
    app = _app
    if app is None:
        with _lock:
            if _app is None:
                _app = factory()
            app = _app
    return app


def replace(app: App | None) -> App | None:
    """Make ``app`` the default (``None``: build a fresh one on next use); returns the previous."""
    global _app
    with _lock:
        previous, _app = _app, app
    return previous
