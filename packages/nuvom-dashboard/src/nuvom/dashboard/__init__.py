"""nuvom's web dashboard: live counts and charts, jobs with their tracebacks,
retry and cancel, as an ASGI app (:func:`create_app`) or ``nuvom dashboard``.

Docs: docs/dashboard.md.
"""

from __future__ import annotations

from nuvom.dashboard._app import TOKEN_ENV, create_app

__all__ = ["TOKEN_ENV", "create_app"]
