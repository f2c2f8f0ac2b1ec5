"""The dashboard's ASGI application: one :class:`Dashboard` (settings, sampler,
templates, CSRF tokens) and the routes of :mod:`~nuvom.dashboard._pages` and
:mod:`~nuvom.dashboard._actions`, behind the host check and the token gate.

The dashboard reads the store through :mod:`nuvom.sdk` and writes to it only
through the actions, which call :func:`nuvom.sdk.retry_job`,
:func:`~nuvom.sdk.cancel_job` and the schedule functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import jinja2
from nuvom.app import App, default_app
from nuvom.dashboard import _actions, _format, _pages
from nuvom.dashboard._hosts import AllowedHosts, HostGuard
from nuvom.dashboard._names import SECRET_ENV, TOKEN_ENV
from nuvom.dashboard._sampler import Sampler
from nuvom.dashboard._security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    CsrfTokens,
    TokenGate,
    cookie_path,
)
from nuvom.errors import ConfigError, NuvomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

__all__ = ["Dashboard", "create_app"]

log = logging.getLogger("nuvom.dashboard")

_HERE = Path(__file__).parent

Handler = Callable[["Dashboard", Request], Awaitable[Response]]


class Dashboard:
    """State of one dashboard app: the nuvom app it shows, its settings, the
    sampler, templates and CSRF tokens. Handlers receive it as first argument."""

    def __init__(
        self, *, app: App, read_only: bool, token: str | None, sample_every: float, secret: str | None
    ) -> None:
        self.app = app
        self.read_only = read_only
        self.token = token
        self.sampler = Sampler(sample_every, app=app)
        self.csrf = CsrfTokens(secret)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,  # every template: arguments, results and tracebacks are text
            undefined=jinja2.StrictUndefined,
        )
        env.filters.update(
            when=_format.when,
            secs=_format.secs,
            ago=_format.ago,
            brief=_format.brief,
            span=_format.span,
            pretty=_format.pretty,
            trim_traceback=_format.trim_traceback,
        )
        self.templates = Jinja2Templates(env=env)

    # -- rendering -----------------------------------------------------------
    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        cookie = request.cookies.get(CSRF_COOKIE)
        session = self.csrf.session_id(cookie) or self.csrf.new_session_id()
        context.setdefault("active", "")
        context.update(
            csrf=self.csrf.issue(session, request.cookies.get(SESSION_COOKIE, "")),
            csrf_field=CSRF_FIELD,
            read_only=self.read_only,
            signed_in=self.token is not None,
            backend=_backend_label(self.app),
            memory_backend=_memory_backend(self.app),
            time_zone=_format.local_zone(),
        )
        response = self.templates.TemplateResponse(request, name, context, status_code=status_code)
        if cookie != session:
            response.set_cookie(CSRF_COOKIE, session, httponly=True, samesite="strict", path=cookie_path(request))
        return response

    def message(self, request: Request, status_code: int, title: str, message: str, **context: Any) -> Response:
        return self.render(
            request, "message.html", status_code, title=title, message=message, ok=status_code < 400, **context
        )

    async def form(self, request: Request) -> dict[str, str] | Response:
        """The POSTed form if its CSRF token is one this dashboard issued for the
        browser's cookies, else the page that says why not."""
        form = await request.form()
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        if not self.csrf.valid(
            values.get(CSRF_FIELD), request.cookies.get(CSRF_COOKIE), request.cookies.get(SESSION_COOKIE, "")
        ):
            return self.message(
                request,
                403,
                "Refused",
                "The form's security token is not one this dashboard issued for this browser, or it expired "
                "(CSRF check). Reload the page and try again.",
            )
        return values

    async def checked_form(self, request: Request) -> dict[str, str] | Response:
        """:meth:`form`, and writes must be allowed."""
        values = await self.form(request)
        if isinstance(values, Response):
            return values
        if self.read_only:
            return self.message(
                request, 403, "Read-only", "This dashboard is read-only (--read-only): actions are disabled."
            )
        return values

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A route's endpoint: starts the sampler, turns bad input into 400 and an
        unreadable store into 503, and adds the security headers."""

        async def endpoint(request: Request) -> Response:
            self.sampler.ensure_started()
            try:
                response = await handler(self, request)
            except ValueError as exc:
                response = self.message(request, 400, "Bad request", str(exc))
            except NuvomError as exc:
                response = self.message(request, 503, "The store cannot be read", str(exc))
            response.headers.update(SECURITY_HEADERS)
            return response

        return endpoint


def _backend_label(app: App) -> str:
    try:
        names = app.backend_names()
    except NuvomError as exc:
        return f"unavailable ({exc})"
    queue, results = names["queue"][0], names["result"][0]
    return queue if queue == results else f"queue {queue}, results {results}"


def _memory_backend(app: App) -> bool:
    try:
        return not app.queue.shared_between_processes
    except NuvomError:
        return False


def create_app(
    app: App | None = None,
    *,
    read_only: bool = False,
    token: str | None = None,
    sample_every: float = 2.0,
    allowed_hosts: Iterable[str] | None = None,
    secret: str | None = None,
) -> Starlette:
    """The dashboard as an ASGI application, to serve (``nuvom dashboard``,
    ``python -m nuvom.dashboard``) or to mount in your own app
    (``app.mount("/nuvom", create_app())``).

    ``app``: the :class:`nuvom.app.App` whose jobs to show (default: the default
    app, configured from the environment). ``read_only``: no actions. ``token``:
    require it (header ``Authorization: Bearer <token>`` or the sign-in form);
    ``None`` reads ``NUVOM_DASHBOARD_TOKEN``, and an empty string disables it.
    ``sample_every``: seconds between the dashboard's own samples of the counts.
    ``allowed_hosts``: the ``Host`` names requests may carry (``name`` with any
    port, ``name:port``, ``*`` for any); others get 400 before any handler runs.
    ``None`` checks no host: an app that mounts the dashboard owns that check
    (Starlette's ``TrustedHostMiddleware``, its proxy). ``secret``: signs the CSRF
    tokens; ``None`` reads ``NUVOM_DASHBOARD_SECRET``, else a random one per app.
    """
    nuvom_app = app or default_app()
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    token = token or None
    if sample_every <= 0:
        raise ConfigError(f"sample_every must be positive, got {sample_every}")
    secret = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    dash = Dashboard(app=nuvom_app, read_only=read_only, token=token, sample_every=sample_every, secret=secret)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            dash.sampler.stop()

    page = dash.page
    routes = [
        Route("/", page(_pages.overview), name="overview"),
        Route("/fragments/overview", page(_pages.overview_fragment), name="overview_fragment"),
        Route("/api/samples", page(_pages.samples_api), name="samples"),
        Route("/jobs", page(_pages.jobs), name="jobs"),
        Route("/jobs/{job_id}", page(_pages.job), name="job"),
        Route("/jobs/{job_id}/retry", page(_actions.retry_one), methods=["GET", "POST"], name="retry"),
        Route("/jobs/{job_id}/cancel", page(_actions.cancel_one), methods=["GET", "POST"], name="cancel"),
        Route("/actions/retry-failed", page(_actions.retry_all), methods=["GET", "POST"], name="retry_all"),
        Route("/schedules", page(_pages.schedules), name="schedules"),
        Route("/workers", page(_pages.workers), name="workers"),
        Route("/fragments/workers", page(_pages.workers_fragment), name="workers_fragment"),
        Route("/queues", page(_pages.queues), name="queues"),
        Route("/fragments/queues", page(_pages.queues_fragment), name="queues_fragment"),
        Route(
            "/schedules/{schedule_id}/{action}",
            page(_actions.schedule_action),
            methods=["GET", "POST"],
            name="schedule_action",
        ),
        Route("/login", page(_actions.login), methods=["GET", "POST"], name="login"),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    starlette = Starlette(routes=routes, lifespan=lifespan)
    starlette.state.dashboard = dash
    starlette.add_middleware(TokenGate, token=token)
    # Added last, so outermost: a foreign Host reaches neither the gate nor a page.
    starlette.add_middleware(HostGuard, allowed=None if allowed_hosts is None else AllowedHosts(allowed_hosts))
    return starlette
