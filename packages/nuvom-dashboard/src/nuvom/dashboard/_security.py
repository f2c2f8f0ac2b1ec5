"""Token sign-in, CSRF tokens and the headers every page carries.

* Token: when one is configured, every request needs it, as
  ``Authorization: Bearer <token>`` or through the sign-in form, which sets a
  cookie holding an HMAC of the token (never the token itself).
* CSRF: a random value in a ``SameSite=Strict`` cookie, repeated in a hidden
  field of every form; a POST whose field does not match is refused
  (double-submit). Cross-site pages can neither read the cookie nor set it.
* Content-Security-Policy allows scripts from the dashboard's own static files
  only, so even a page that failed to escape something would run nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import URL
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "TokenGate",
    "csrf_ok",
    "new_csrf_token",
    "session_value",
]

SESSION_COOKIE = "nuvom_dashboard_session"
CSRF_COOKIE = "nuvom_dashboard_csrf"
CSRF_FIELD = "csrf"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def session_value(token: str) -> str:
    """The sign-in cookie's value: proves knowledge of the token without holding it."""
    return hmac.new(token.encode(), b"nuvom-dashboard-session-v1", hashlib.sha256).hexdigest()


def new_csrf_token() -> str:
    return secrets.token_hex(16)


def csrf_ok(cookie: str | None, field: str | None) -> bool:
    return bool(cookie) and bool(field) and hmac.compare_digest(str(cookie), str(field))


class TokenGate:
    """ASGI middleware: without the token, HTML pages redirect to the sign-in
    form and everything else answers 401. Static files stay public (they are
    the project's own scripts and styles, nothing from the store)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.session = None if token is None else session_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        inner = path[len(root) :] if root and path.startswith(root) else path
        if inner.startswith("/static/") or inner == "/login" or self._allowed(conn):
            await self.app(scope, receive, send)
            return
        response: Response
        if inner.startswith("/api/") or scope.get("method") != "GET":
            response = JSONResponse({"error": "a token is required: send Authorization: Bearer <token>"}, 401)
        else:
            login = URL(scope=scope).replace(path=f"{root}/login", query="")
            response = RedirectResponse(str(login.include_query_params(next=inner)), status_code=303)
        await response(scope, receive, send)

    def _allowed(self, conn: HTTPConnection) -> bool:
        assert self.token is not None and self.session is not None
        header = conn.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and hmac.compare_digest(header[7:].strip(), self.token):
            return True
        cookie = conn.cookies.get(SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie, self.session)
