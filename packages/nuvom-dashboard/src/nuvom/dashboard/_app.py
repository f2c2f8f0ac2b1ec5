"""The dashboard's ASGI application: pages, fragments for htmx, the samples
API for the chart, and the actions (each confirmed on a page of its own, then
POSTed with a CSRF token).

The dashboard reads the store through :mod:`nuvom.sdk` and writes to it only
through the actions, which call :func:`nuvom.sdk.retry_job` /
:func:`~nuvom.sdk.cancel_job` (and the schedule functions once core has them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jinja2
from nuvom import sdk
from nuvom.app import App, default_app
from nuvom.dashboard._names import TOKEN_ENV
from nuvom.dashboard._sampler import Sampler
from nuvom.dashboard._security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    TokenGate,
    csrf_ok,
    new_csrf_token,
    session_value,
)
from nuvom.errors import BackendError, ConfigError, InvalidJobId, NuvomError
from nuvom.job import Job, JobStatus, validate_job_id
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

__all__ = ["TOKEN_ENV", "create_app"]

log = logging.getLogger("nuvom.dashboard")

PAGE_SIZE = 50
#: "Retry all failed" retries at most this many jobs per confirmation.
RETRY_ALL_LIMIT = 10_000
STATUSES = ("SUCCESS", "FAILED", "QUEUED")

_HERE = Path(__file__).parent


class _Dashboard:
    """State of one dashboard app: settings, the sampler, templates."""

    def __init__(self, *, app: App, read_only: bool, token: str | None, sample_every: float) -> None:
        self.app = app
        self.read_only = read_only
        self.token = token
        self.sampler = Sampler(sample_every, app=app)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,  # every template: arguments, results and tracebacks are text
            undefined=jinja2.StrictUndefined,
        )
        env.filters["when"] = _when
        env.filters["secs"] = _secs
        env.filters["pretty"] = _pretty
        self.templates = Jinja2Templates(env=env)

    # -- rendering -----------------------------------------------------------
    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
        context.setdefault("active", "")
        context.update(
            csrf=csrf,
            csrf_field=CSRF_FIELD,
            read_only=self.read_only,
            signed_in=self.token is not None,
            backend=_backend_label(self.app),
            memory_backend=_memory_backend(self.app),
        )
        response = self.templates.TemplateResponse(request, name, context, status_code=status_code)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path=_cookie_path(request))
        return response

    async def checked_form(self, request: Request) -> dict[str, str] | Response:
        """The POSTed form if the CSRF token matches and writes are allowed,
        else the page that says why not."""
        form = await request.form()
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        if not csrf_ok(request.cookies.get(CSRF_COOKIE), values.get(CSRF_FIELD)):
            return self.render(
                request,
                "message.html",
                403,
                title="Refused",
                message="The form's security token did not match (CSRF check). Reload the page and try again.",
                ok=False,
            )
        if self.read_only:
            return self.render(
                request,
                "message.html",
                403,
                title="Read-only",
                message="This dashboard is read-only (--read-only): actions are disabled.",
                ok=False,
            )
        return values


# -- helpers ----------------------------------------------------------------
def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path") or "/"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


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


def _parse_time(value: str | None, field: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not a time; use YYYY-MM-DDTHH:MM or a Unix timestamp") from None


def _parse_cursor(value: str | None) -> tuple[float, str] | None:
    if not value:
        return None
    at, _, job_id = value.partition(":")
    try:
        return float(at), validate_job_id(job_id)
    except (ValueError, InvalidJobId):
        raise ValueError(f"page cursor {value!r} is malformed; start again from the first page") from None


def _filters(request: Request) -> dict[str, Any]:
    """The job filters of a query string (or a form), validated."""
    q = request.query_params
    status = (q.get("status") or "").upper() or None
    if status is not None and status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return {
        "status": status,
        "task": q.get("task") or None,
        "tag": q.get("tag") or None,
        "since": _parse_time(q.get("since"), "since"),
        "until": _parse_time(q.get("until"), "until"),
    }


def _filter_query(request: Request) -> str:
    """The filter part of the current query string, for links and forms."""
    keep = {k: v for k, v in request.query_params.items() if k in ("status", "task", "tag", "since", "until") and v}
    return "&".join(f"{k}={_quote(v)}" for k, v in keep.items())


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _job_or_none(job_id: str, app: App) -> Job | None:
    try:
        return sdk.get_job(job_id, app=app)
    except InvalidJobId:
        return None


# -- pages ------------------------------------------------------------------
def create_app(
    app: App | None = None, *, read_only: bool = False, token: str | None = None, sample_every: float = 2.0
) -> Starlette:
    """The dashboard as an ASGI application, to serve (``nuvom dashboard``) or to
    mount in your own app (``app.mount("/nuvom", create_app())``).

    ``app``: the :class:`nuvom.app.App` whose jobs to show (default: the
    default app, configured from the environment). ``read_only``: no actions. ``token``: require it
    (header ``Authorization: Bearer <token>`` or the sign-in form); ``None``
    reads ``NUVOM_DASHBOARD_TOKEN``, and an empty string disables it.
    ``sample_every``: seconds between the dashboard's own samples of the counts.
    """
    nuvom_app = app or default_app()
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    token = token or None
    if sample_every <= 0:
        raise ConfigError(f"sample_every must be positive, got {sample_every}")
    dash = _Dashboard(app=nuvom_app, read_only=read_only, token=token, sample_every=sample_every)

    def page(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            dash.sampler.ensure_started()
            try:
                response: Response = await fn(request)
            except ValueError as exc:
                response = dash.render(request, "message.html", 400, title="Bad request", message=str(exc), ok=False)
            except NuvomError as exc:
                response = dash.render(
                    request, "message.html", 503, title="The store cannot be read", message=str(exc), ok=False
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return endpoint

    async def overview(request: Request) -> Response:
        sample = dash.sampler.latest()
        return dash.render(request, "overview.html", sample=sample, stats=dash.sampler.stats, active="overview")

    async def overview_fragment(request: Request) -> Response:
        sample = dash.sampler.latest()
        return dash.render(request, "_overview_stats.html", sample=sample, stats=dash.sampler.stats)

    async def samples_api(request: Request) -> Response:
        try:
            after = float(request.query_params.get("after") or 0)
        except ValueError:
            return JSONResponse({"error": "after must be a Unix timestamp"}, 400)
        latest = dash.sampler.latest()
        return JSONResponse(
            {
                "every": dash.sampler.every,
                "counts": latest.counts,
                "at": latest.at,
                "series": dash.sampler.series(after),
            }
        )

    async def jobs(request: Request) -> Response:
        q = request.query_params
        search = (q.get("q") or "").strip()
        if search:
            try:
                validate_job_id(search)
            except InvalidJobId as exc:
                raise ValueError(str(exc)) from None
            if sdk.get_job(search, app=nuvom_app) is not None:
                return RedirectResponse(request.url_for("job", job_id=search), status_code=303)
            return dash.render(
                request,
                "jobs.html",
                404,
                jobs=[],
                filters=_filters(request),
                next_cursor=None,
                filter_query=_filter_query(request),
                not_found=search,
                active="jobs",
            )
        filters = _filters(request)
        before = _parse_cursor(q.get("before"))
        if filters["status"] == "QUEUED":
            page_jobs = sdk.queued_jobs(limit=200, app=nuvom_app)
            next_cursor = None
        else:
            page_jobs = sdk.query_jobs(before=before, limit=PAGE_SIZE + 1, app=nuvom_app, **filters)
            next_cursor = None
            if len(page_jobs) > PAGE_SIZE:
                page_jobs = page_jobs[:PAGE_SIZE]
                last = page_jobs[-1]
                next_cursor = f"{last.finished_at!r}:{last.id}"
        return dash.render(
            request,
            "jobs.html",
            jobs=page_jobs,
            filters=filters,
            next_cursor=next_cursor,
            filter_query=_filter_query(request),
            not_found=None,
            active="jobs",
        )

    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        record = _job_or_none(job_id, nuvom_app)
        if record is None:
            return dash.render(
                request, "message.html", 404, title="No such job", message=f"No job {job_id!r} is known.", ok=False
            )
        return dash.render(request, "job.html", job=record, active="jobs")

    async def retry_one(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        record = _job_or_none(job_id, nuvom_app)
        if record is None or record.status is not JobStatus.FAILED:
            return dash.render(
                request,
                "message.html",
                409,
                title="Cannot retry",
                message=f"Job {job_id} is not a failed job, so it cannot be retried.",
                ok=False,
            )
        if request.method == "GET":
            return dash.render(request, "confirm.html", action="retry", job=record, count=1, filter_query="")
        form = await dash.checked_form(request)
        if isinstance(form, Response):
            return form
        new = sdk.retry_job(job_id, app=nuvom_app)
        assert new is not None
        log.info("dashboard: retried job %s as %s", job_id, new.id)
        return dash.render(
            request,
            "message.html",
            title="Retried",
            message=f"Job {job_id} was queued again as job {new.id}.",
            ok=True,
            link=request.url_for("job", job_id=new.id),
            link_text=f"Open job {new.id}",
        )

    async def cancel_one(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        record = _job_or_none(job_id, nuvom_app)
        if record is None or record.status not in (JobStatus.PENDING, JobStatus.RETRYING):
            return dash.render(
                request,
                "message.html",
                409,
                title="Cannot cancel",
                message=f"Job {job_id} is not waiting in the queue, so it cannot be cancelled.",
                ok=False,
            )
        if request.method == "GET":
            return dash.render(request, "confirm.html", action="cancel", job=record, count=1, filter_query="")
        form = await dash.checked_form(request)
        if isinstance(form, Response):
            return form
        cancelled = sdk.cancel_job(job_id, app=nuvom_app)
        if cancelled is None:
            return dash.render(
                request,
                "message.html",
                409,
                title="Not cancelled",
                message=f"Job {job_id} was claimed by a worker (or finished) before it could be cancelled.",
                ok=False,
            )
        log.info("dashboard: cancelled job %s", job_id)
        return dash.render(
            request,
            "message.html",
            title="Cancelled",
            message=f"Job {job_id} was taken out of the queue and recorded as failed (Cancelled).",
            ok=True,
            link=request.url_for("job", job_id=job_id),
            link_text=f"Open job {job_id}",
        )

    def _failed_matching(filters: dict[str, Any], limit: int) -> list[Job]:
        filters = {**filters, "status": "FAILED"}
        out: list[Job] = []
        before = None
        while len(out) < limit:
            batch = sdk.query_jobs(before=before, limit=min(500, limit - len(out)), app=nuvom_app, **filters)
            out.extend(batch)
            if len(batch) < 500:
                break
            before = (batch[-1].finished_at or 0.0, batch[-1].id)
        return out

    async def retry_all(request: Request) -> Response:
        filters = _filters(request)
        matching = _failed_matching(filters, RETRY_ALL_LIMIT)
        if request.method == "GET":
            return dash.render(
                request,
                "confirm.html",
                action="retry-all",
                job=None,
                count=len(matching),
                filters=filters,
                filter_query=_filter_query(request),
            )
        form = await dash.checked_form(request)
        if isinstance(form, Response):
            return form
        retried = 0
        for record in matching:
            try:
                if sdk.retry_job(record.id, app=nuvom_app) is not None:
                    retried += 1
            except ValueError:
                continue  # stored again meanwhile with another status
        log.info("dashboard: retried %d failed jobs", retried)
        more = " (the most one confirmation retries)" if len(matching) >= RETRY_ALL_LIMIT else ""
        return dash.render(
            request,
            "message.html",
            title="Retried",
            message=f"{retried} failed job(s) matching the filter were queued again{more}.",
            ok=True,
            link=str(request.url_for("jobs")),
            link_text="Back to jobs",
        )

    async def schedules(request: Request) -> Response:
        rows: list[dict[str, Any]] = []
        unsupported = None
        try:
            found = sdk.list_schedules(app=nuvom_app)
        except BackendError as exc:  # a queue backend without schedules
            found, unsupported = [], str(exc)
        for s in found:
            last = _job_or_none(s.last_job_id, nuvom_app) if s.last_job_id else None
            rows.append({"schedule": s, "last_outcome": last.status.value if last is not None else "-"})
        return dash.render(request, "schedules.html", schedules=rows, unsupported=unsupported, active="schedules")

    async def schedule_action(request: Request) -> Response:
        schedule_id = request.path_params["schedule_id"]
        action = request.path_params["action"]
        functions = {"pause": "pause_schedule", "resume": "resume_schedule", "run": "run_schedule_now"}
        fn = getattr(sdk, functions.get(action, ""), None)
        if fn is None:
            return dash.render(
                request,
                "message.html",
                404,
                title="Not available",
                message="Scheduling is not available in this nuvom-core.",
                ok=False,
            )
        if request.method == "GET":
            return dash.render(
                request, "confirm.html", action=f"schedule-{action}", job=None, count=1, schedule_id=schedule_id
            )
        form = await dash.checked_form(request)
        if isinstance(form, Response):
            return form
        if fn(schedule_id, app=nuvom_app) is None:
            return dash.render(
                request, "message.html", 404, title="No such schedule", message=f"No schedule {schedule_id}.", ok=False
            )
        done = {"pause": "paused", "resume": "resumed", "run": "queued to run now"}[action]
        return dash.render(
            request,
            "message.html",
            title="Done",
            message=f"Schedule {schedule_id} was {done}.",
            ok=True,
            link=str(request.url_for("schedules")),
            link_text="Back to schedules",
        )

    async def login(request: Request) -> Response:
        next_path = request.query_params.get("next") or "/"
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"
        if request.method == "GET":
            return dash.render(request, "login.html", next_path=next_path, failed=False, active="")
        form = await request.form()
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        if not csrf_ok(request.cookies.get(CSRF_COOKIE), values.get(CSRF_FIELD)):
            return dash.render(request, "login.html", 403, next_path=next_path, failed=True, active="")
        if token is None:
            return RedirectResponse(request.scope.get("root_path", "") + next_path, status_code=303)
        given = values.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return dash.render(request, "login.html", 401, next_path=next_path, failed=True, active="")
        response = RedirectResponse(request.scope.get("root_path", "") + next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE, session_value(token), httponly=True, samesite="strict", path=_cookie_path(request)
        )
        return response

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            dash.sampler.stop()

    routes = [
        Route("/", page(overview), name="overview"),
        Route("/fragments/overview", page(overview_fragment), name="overview_fragment"),
        Route("/api/samples", page(samples_api), name="samples"),
        Route("/jobs", page(jobs), name="jobs"),
        Route("/jobs/{job_id}", page(job), name="job"),
        Route("/jobs/{job_id}/retry", page(retry_one), methods=["GET", "POST"], name="retry"),
        Route("/jobs/{job_id}/cancel", page(cancel_one), methods=["GET", "POST"], name="cancel"),
        Route("/actions/retry-failed", page(retry_all), methods=["GET", "POST"], name="retry_all"),
        Route("/schedules", page(schedules), name="schedules"),
        Route(
            "/schedules/{schedule_id}/{action}", page(schedule_action), methods=["GET", "POST"], name="schedule_action"
        ),
        Route("/login", page(login), methods=["GET", "POST"], name="login"),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    starlette = Starlette(routes=routes, lifespan=lifespan)
    starlette.state.dashboard = dash
    starlette.add_middleware(TokenGate, token=token)
    return starlette
