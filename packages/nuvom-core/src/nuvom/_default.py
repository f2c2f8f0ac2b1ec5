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


class _MixedInstall(ImportError):
    """The earlier single ``nuvom`` distribution is installed beside nuvom-core."""


def _refuse_a_mixed_install() -> None:
    # `nuvom` is a namespace package shared by nuvom-core and its siblings. The
    # earlier single `nuvom` distribution (0.11) ships nuvom/__init__.py and
    # files at the same paths as ours: installed together, its __init__ runs
    # first and a later `pip uninstall nuvom` deletes files these packages own.
    package = sys.modules.get("nuvom")
    if package is not None and getattr(package, "__file__", None):
        # Uncaught (`python -c "import nuvom.app"`, the `nuvom` script), the refusal
        # is its one line, not a traceback through 0.11's __init__; it stays an
        # ImportError for code that catches one.
        sys.excepthook = _one_line_for_mixed_install(sys.excepthook)
        raise _MixedInstall(
            f"an earlier nuvom (0.11) is installed over nuvom-core ({package.__file__}); run "
            "`pip uninstall -y nuvom`, then reinstall the nuvom-* packages you use with "
            "`pip install --force-reinstall` (from a clone: ./packages/nuvom-core ./packages/nuvom-cli ...); "
            "see docs/migrating.md"
        )


def _one_line_for_mixed_install(previous: Callable[..., object]) -> Callable[..., object]:
    def hook(kind: type[BaseException], exc: BaseException, tb: object) -> object:
        if isinstance(exc, _MixedInstall):
            sys.stderr.write(f"error: {exc}\n")
            return None
        return previous(kind, exc, tb)

    return hook


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
