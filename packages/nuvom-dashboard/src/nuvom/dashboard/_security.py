"""Token sign-in, CSRF tokens and the headers every page carries.

* Token: when one is configured, every request needs it, as
  ``Authorization: Bearer <token>`` or through the sign-in form, which sets a
  cookie holding an HMAC of the token (never the token itself).
* CSRF: a random session id in a ``SameSite=Strict``, ``HttpOnly`` cookie, and
  in a hidden field of every form a token the server signed for that session
  (and sign-in): ``<expiry>.<HMAC-SHA256(secret, session, sign-in, expiry)>``.
  A POST is accepted only with a token this dashboard issued for the cookie it
  comes with, not expired, compared in constant time. The secret is random per
  app unless ``NUVOM_DASHBOARD_SECRET`` sets it (several dashboard processes
  behind one load balancer then accept each other's tokens).
* Content-Security-Policy allows scripts from the dashboard's own static files
  only, so even a page that failed to escape something would run nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import URL
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_MAX_AGE_SECS",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "CsrfTokens",
    "TokenGate",
    "cookie_path",
    "session_value",
]

SESSION_COOKIE = "nuvom_dashboard_session"
CSRF_COOKIE = "nuvom_dashboard_csrf"
CSRF_FIELD = "csrf"
#: How long a form's token is accepted: a confirmation page left open longer is reloaded.
CSRF_MAX_AGE_SECS = 4 * 3600.0
_SESSION_ID = re.compile(r"[0-9a-f]{32}")

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


def cookie_path(request: HTTPConnection) -> str:
    """Cookies are scoped to the dashboard's own path (its mount point)."""
    return str(request.scope.get("root_path") or "/")


def session_value(token: str) -> str:
    """The sign-in cookie's value: proves knowledge of the token without holding it."""
    return hmac.new(token.encode(), b"nuvom-dashboard-session-v1", hashlib.sha256).hexdigest()


class CsrfTokens:
    """Issues and checks the tokens of the dashboard's forms.

    A token is bound to the browser's CSRF cookie (a random session id) and to
    its sign-in cookie, if any: a token read from one browser's page is worth
    nothing with another browser's cookies, and an attacker who can plant a
    cookie still cannot make a token for it without the secret.
    """

    def __init__(self, secret: str | None, max_age: float = CSRF_MAX_AGE_SECS) -> None:
        # A configured secret of any length becomes a key of the hash's size.
        configured = hashlib.sha256(b"nuvom-dashboard-csrf-v1|" + secret.encode()).digest() if secret else None
        self._key: bytes = configured or secrets.token_bytes(32)
        self.max_age = max_age

    @staticmethod
    def session_id(cookie: str | None) -> str | None:
        """The cookie's session id if it is one this dashboard could have set."""
        return cookie if cookie is not None and _SESSION_ID.fullmatch(cookie) else None

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_hex(16)

    def _mac(self, session: str, signed_in: str, expiry: int) -> str:
        message = f"{session}|{signed_in}|{expiry}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self, session: str, signed_in: str = "", now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.max_age)
        return f"{expiry}.{self._mac(session, signed_in, expiry)}"

    def valid(self, token: str | None, session: str | None, signed_in: str = "", now: float | None = None) -> bool:
        """Whether ``token`` was issued by this dashboard (or one sharing its
        secret) for ``session`` and ``signed_in``, and has not expired."""
        if not token or self.session_id(session) is None:
            return False
        expiry_text, dot, mac = token.partition(".")
        if not dot or not expiry_text.isdigit() or len(expiry_text) > 12:
            return False
        expiry = int(expiry_text)
        if expiry < (time.time() if now is None else now):
            return False
        assert session is not None
        return hmac.compare_digest(mac.encode(), self._mac(session, signed_in, expiry).encode())


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
