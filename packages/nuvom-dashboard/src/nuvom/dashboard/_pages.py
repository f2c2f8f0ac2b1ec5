"""The pages that only read: overview, jobs, a job, schedules, workers, queues,
the htmx fragments and the chart's samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nuvom import sdk
from nuvom.dashboard._format import filter_query, filters_of, parse_cursor
from nuvom.dashboard._sampler import HEAD_PEEK, RATE_WINDOW_SECS
from nuvom.errors import BackendError, InvalidJobId
from nuvom.job import Job, JobStatus, validate_job_id
from nuvom.plugins._presence import GONE_KEEP_SECS, core_version
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

if TYPE_CHECKING:
    from nuvom.app import App
    from nuvom.dashboard._app import Dashboard

__all__ = [
    "PAGE_SIZE",
    "cancel_state",
    "job",
    "job_or_none",
    "jobs",
    "overview",
    "overview_fragment",
    "queues",
    "queues_fragment",
    "samples_api",
    "schedules",
    "workers",
    "workers_fragment",
]

PAGE_SIZE = 50
#: Waiting jobs listed by the QUEUED filter (the queue is not paged).
QUEUED_SHOWN = 200
#: Running jobs whose task and start the Workers page looks up (the others show their id).
RUNNING_LOOKUPS = 50


def job_or_none(job_id: str, app: App) -> Job | None:
    try:
        return sdk.get_job(job_id, app=app)
    except InvalidJobId:
        return None


async def overview(dash: Dashboard, request: Request) -> Response:
    sample = dash.sampler.latest()
    return dash.render(request, "overview.html", sample=sample, stats=dash.sampler.stats, active="overview")


async def overview_fragment(dash: Dashboard, request: Request) -> Response:
    sample = dash.sampler.latest()
    return dash.render(request, "_overview_stats.html", sample=sample, stats=dash.sampler.stats)


async def samples_api(dash: Dashboard, request: Request) -> Response:
    try:
        after = float(request.query_params.get("after") or 0)
    except ValueError:
        return JSONResponse({"error": "after must be a Unix timestamp"}, 400)
    latest = dash.sampler.latest()
    return JSONResponse(
        {"every": dash.sampler.every, "counts": latest.counts, "at": latest.at, "series": dash.sampler.series(after)}
    )


async def jobs(dash: Dashboard, request: Request) -> Response:
    q = request.query_params
    search = (q.get("q") or "").strip()
    filters = filters_of(request)
    page: dict[str, Any] = {"filters": filters, "filter_query": filter_query(request), "active": "jobs"}
    if search:
        try:
            validate_job_id(search)
        except InvalidJobId as exc:
            raise ValueError(str(exc)) from None
        if sdk.get_job(search, app=dash.app) is not None:
            return RedirectResponse(request.url_for("job", job_id=search), status_code=303)
        return dash.render(request, "jobs.html", 404, jobs=[], next_cursor=None, not_found=search, **page)
    before = parse_cursor(q.get("before"))
    next_cursor = None
    if filters["status"] == "QUEUED":
        page_jobs = sdk.queued_jobs(limit=QUEUED_SHOWN, app=dash.app)
    else:
        page_jobs = sdk.query_jobs(before=before, limit=PAGE_SIZE + 1, app=dash.app, **filters)
        if len(page_jobs) > PAGE_SIZE:
            page_jobs = page_jobs[:PAGE_SIZE]
            last = page_jobs[-1]
            next_cursor = f"{last.finished_at!r}:{last.id}"
    return dash.render(request, "jobs.html", jobs=page_jobs, next_cursor=next_cursor, not_found=None, **page)


async def job(dash: Dashboard, request: Request) -> Response:
    job_id = request.path_params["job_id"]
    record = job_or_none(job_id, dash.app)
    if record is None:
        return dash.message(request, 404, "No such job", f"No job {job_id!r} is known.")
    return dash.render(
        request,
        "job.html",
        job=record,
        children=sdk.dependents(job_id, app=dash.app),
        cancel=cancel_state(record, dash.app),
        active="jobs",
    )


def cancel_state(record: Job, app: App) -> tuple[bool, str] | None:
    """Whether the job page offers Cancel: ``None`` (a finished job: no button),
    ``(True, "")``, or ``(False, why)`` for a running job on a store that cannot
    cancel running jobs (the button shown disabled, with the reason)."""
    if record.done:
        return None
    if record.status is JobStatus.RUNNING and not sdk.cancels_running_jobs(app=app):
        return False, f"the {type(app.queue).__name__} store cannot cancel running jobs: let it finish"
    return True, ""


async def schedules(dash: Dashboard, request: Request) -> Response:
    rows: list[dict[str, Any]] = []
    unsupported = None
    try:
        found = sdk.list_schedules(app=dash.app)
    except BackendError as exc:  # a queue backend without schedules
        found, unsupported = [], str(exc)
    for s in found:
        last = job_or_none(s.last_job_id, dash.app) if s.last_job_id else None
        rows.append({"schedule": s, "last_outcome": last.status.value if last is not None else "-"})
    return dash.render(request, "schedules.html", schedules=rows, unsupported=unsupported, active="schedules")


def _workers_context(dash: Dashboard) -> dict[str, Any]:
    sample = dash.sampler.latest()
    live = sample.live_workers()
    running: list[dict[str, Any]] = []
    for w in live:
        for job_id in w.current:
            record = job_or_none(job_id, dash.app) if len(running) < RUNNING_LOOKUPS else None
            running.append({"worker": w, "job_id": job_id, "job": record})
    slots = sum(w.slots for w in live)
    busy = sum(w.busy for w in live)
    return {
        "sample": sample,
        "workers": sample.workers,
        "live": live,
        "running": running,
        "slots": slots,
        "busy": busy,
        "utilization": None if not slots else round(100 * busy / slots),
        "stores": sorted({w.store for w in sample.workers or [] if w.store}),
        "my_version": core_version(),
        "gone_keep": GONE_KEEP_SECS,
    }


async def workers(dash: Dashboard, request: Request) -> Response:
    return dash.render(request, "workers.html", active="workers", **_workers_context(dash))


async def workers_fragment(dash: Dashboard, request: Request) -> Response:
    return dash.render(request, "_workers.html", **_workers_context(dash))


def _queues_context(dash: Dashboard) -> dict[str, Any]:
    return {
        "rows": dash.sampler.queue_rows(),
        "sample": dash.sampler.latest(),
        "window": RATE_WINDOW_SECS,
        "head_peek": HEAD_PEEK,
        "named_queues": dash.app.queue.supports_queues,
    }


async def queues(dash: Dashboard, request: Request) -> Response:
    return dash.render(request, "queues.html", active="queues", **_queues_context(dash))


async def queues_fragment(dash: Dashboard, request: Request) -> Response:
    return dash.render(request, "_queues.html", **_queues_context(dash))
