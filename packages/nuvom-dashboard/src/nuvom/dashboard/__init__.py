"""nuvom's web dashboard: live counts and charts, jobs with their tracebacks,
workers and queues, retry and cancel, as an ASGI app (:func:`create_app`),
``python -m nuvom.dashboard`` or ``nuvom dashboard`` (with nuvom-cli).

Docs: docs/dashboard.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nuvom.dashboard._names import ALLOWED_HOSTS_ENV, SECRET_ENV, TOKEN_ENV

if TYPE_CHECKING:
    from nuvom.dashboard._app import create_app

__all__ = ["ALLOWED_HOSTS_ENV", "SECRET_ENV", "TOKEN_ENV", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `nuvom --help` imports this package (for the
    # `dashboard` command) and must not pay for Starlette and the store.
    if name == "create_app":
        from nuvom.dashboard._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
