"""The pages that write: retry, retry-all-failed, cancel, the schedule actions
(each a GET that asks for confirmation, then a POST with a CSRF token) and
the sign-in form."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

from nuvom import sdk
from nuvom.dashboard._format import filter_query, filters_of
from nuvom.dashboard._pages import cancel_state, job_or_none
from nuvom.dashboard._security import SESSION_COOKIE, cookie_path, session_value
from nuvom.job import Job, JobStatus
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

if TYPE_CHECKING:
    from nuvom.dashboard._app import Dashboard

__all__ = ["RETRY_ALL_LIMIT", "cancel_one", "login", "retry_all", "retry_one", "schedule_action"]

log = logging.getLogger("nuvom.dashboard")

#: "Retry all failed" retries at most this many jobs per confirmation.
RETRY_ALL_LIMIT = 10_000
_SCHEDULE_ACTIONS = {
    "pause": (sdk.pause_schedule, "paused"),
    "resume": (sdk.resume_schedule, "resumed"),
    "run": (sdk.run_schedule_now, "queued to run now"),
}


async def retry_one(dash: Dashboard, request: Request) -> Response:
    job_id = request.path_params["job_id"]
    record = job_or_none(job_id, dash.app)
    if record is None or record.status is not JobStatus.FAILED:
        return dash.message(request, 409, "Cannot retry", f"Job {job_id} is not a failed job, so it cannot be retried.")
    if request.method == "GET":
        return dash.render(request, "confirm.html", action="retry", job=record, count=1, filter_query="")
    form = await dash.checked_form(request)
    if isinstance(form, Response):
        return form
    new = sdk.retry_job(job_id, app=dash.app)
    assert new is not None
    log.info("dashboard: retried job %s as %s", job_id, new.id)
    return dash.message(
        request,
        200,
        "Retried",
        f"Job {job_id} was queued again as job {new.id}.",
        link=request.url_for("job", job_id=new.id),
        link_text=f"Open job {new.id}",
    )


async def cancel_one(dash: Dashboard, request: Request) -> Response:
    job_id = request.path_params["job_id"]
    record = job_or_none(job_id, dash.app)
    state = None if record is None else cancel_state(record, dash.app)
    if record is None or state is None:
        return dash.message(
            request, 409, "Cannot cancel", f"Job {job_id} is neither waiting nor running, so it cannot be cancelled."
        )
    if not state[0]:
        return dash.message(request, 409, "Cannot cancel", f"Job {job_id} is running, and {state[1]}.")
    if request.method == "GET":
        return dash.render(request, "confirm.html", action="cancel", job=record, count=1, filter_query="")
    form = await dash.checked_form(request)
    if isinstance(form, Response):
        return form
    done = sdk.cancel_job(job_id, app=dash.app)
    if done is None:
        return dash.message(
            request,
            409,
            "Not cancelled",
            f"Job {job_id} was claimed by a worker (or finished) before it could be cancelled.",
        )
    link = {"link": request.url_for("job", job_id=job_id), "link_text": f"Open job {job_id}"}
    if not done.done:
        log.info("dashboard: asked the worker running job %s to stop", job_id)
        return dash.message(
            request,
            200,
            "Asked to stop",
            f"The worker running job {job_id} was asked to stop it; its record ends failed (Cancelled).",
            **link,
        )
    log.info("dashboard: cancelled job %s", job_id)
    return dash.message(
        request,
        200,
        "Cancelled",
        f"Job {job_id} was taken out of the queue and recorded as failed (Cancelled).",
        **link,
    )


def _failed_matching(dash: Dashboard, filters: dict[str, Any], limit: int) -> list[Job]:
    filters = {**filters, "status": "FAILED"}
    out: list[Job] = []
    before = None
    while len(out) < limit:
        batch = sdk.query_jobs(before=before, limit=min(500, limit - len(out)), app=dash.app, **filters)
        out.extend(batch)
        if len(batch) < 500:
            break
        before = (batch[-1].finished_at or 0.0, batch[-1].id)
    return out


async def retry_all(dash: Dashboard, request: Request) -> Response:
    filters = filters_of(request)
    matching = _failed_matching(dash, filters, RETRY_ALL_LIMIT)
    if request.method == "GET":
        return dash.render(
            request,
            "confirm.html",
            action="retry-all",
            job=None,
            count=len(matching),
            filters=filters,
            filter_query=filter_query(request),
        )
    form = await dash.checked_form(request)
    if isinstance(form, Response):
        return form
    retried = 0
    for record in matching:
        try:
            if sdk.retry_job(record.id, app=dash.app) is not None:
                retried += 1
        except ValueError:
            continue  # stored again meanwhile with another status
    log.info("dashboard: retried %d failed jobs", retried)
    more = " (the most one confirmation retries)" if len(matching) >= RETRY_ALL_LIMIT else ""
    return dash.message(
        request,
        200,
        "Retried",
        f"{retried} failed job(s) matching the filter were queued again{more}.",
        link=str(request.url_for("jobs")),
        link_text="Back to jobs",
    )


async def schedule_action(dash: Dashboard, request: Request) -> Response:
    schedule_id = request.path_params["schedule_id"]
    action = request.path_params["action"]
    if action not in _SCHEDULE_ACTIONS:
        return dash.message(request, 404, "No such action", f"Schedules can be paused, resumed or run; not {action!r}.")
    fn, done = _SCHEDULE_ACTIONS[action]
    if request.method == "GET":
        return dash.render(
            request, "confirm.html", action=f"schedule-{action}", job=None, count=1, schedule_id=schedule_id
        )
    form = await dash.checked_form(request)
    if isinstance(form, Response):
        return form
    if fn(schedule_id, app=dash.app) is None:
        return dash.message(request, 404, "No such schedule", f"No schedule {schedule_id}.")
    return dash.message(
        request,
        200,
        "Done",
        f"Schedule {schedule_id} was {done}.",
        link=str(request.url_for("schedules")),
        link_text="Back to schedules",
    )


async def login(dash: Dashboard, request: Request) -> Response:
    next_path = request.query_params.get("next") or "/"
    if not next_path.startswith("/") or next_path.startswith("//"):
        next_path = "/"
    if request.method == "GET":
        return dash.render(request, "login.html", next_path=next_path, failed=False)
    form = await dash.form(request)
    if isinstance(form, Response):
        return dash.render(request, "login.html", 403, next_path=next_path, failed=True)
    back = request.scope.get("root_path", "") + next_path
    if dash.token is None:
        return RedirectResponse(back, status_code=303)
    if not hmac.compare_digest(form.get("token", "").encode(), dash.token.encode()):
        return dash.render(request, "login.html", 401, next_path=next_path, failed=True)
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, session_value(dash.token), httponly=True, samesite="strict", path=cookie_path(request)
    )
    return response
