"""The dashboard in a real headless Chromium (Debian's), against a real
dashboard server (``python -m nuvom.dashboard``) and real worker processes on
core's file store.

With NUVOM_DASHBOARD_SCREENSHOTS=1 each test saves its screens, 1400x900, to
docs/images/ (docs/dashboard.md shows them).
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from .conftest import ARGS, CHROMIUM, DASH, Project, queue_jobs, reload_until, shot, wait_until

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)


def counter(page: Any, key: str) -> str:
    return str(page.locator(f'.counter[data-key="{key}"] .n').inner_text()).strip()


def chart_points(page: Any, n: int) -> None:
    # Polled from here: the page's CSP forbids the eval that wait_for_function's polling uses.
    wait_until(
        lambda: page.evaluate("Number(document.getElementById('chart').dataset.points || 0)") >= n,
        60,
        f"{n} points on the chart",
    )


RESIZED = (
    "(() => { const el = document.getElementById('chart');"
    " return el.nuvomChart.width === Math.max(280, el.clientWidth - 16); })()"
)

# The x axis's tick labels as drawn: their text, centre (CSS px) and width, measured
# with the font uPlot draws them in. Two overlap when their centres are closer than
# half their widths summed.
AXIS_GAPS = """
() => {
  const u = document.getElementById('chart').nuvomChart;
  const axis = u.axes[0];
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = Array.isArray(axis.font) ? axis.font[0] : axis.font;
  const labels = (axis._values || []).map((text, k) => ({
    text: String(text), x: u.valToPos(axis._splits[k], 'x'), w: ctx.measureText(String(text)).width,
  })).filter(l => l.x >= 0 && l.x <= u.bbox.width / devicePixelRatio);
  const gaps = [];
  for (let k = 1; k < labels.length; k++) {
    gaps.push((labels[k].x - labels[k - 1].x) - (labels[k].w + labels[k - 1].w) / 2);
  }
  return {labels: labels.map(l => l.text), gaps: gaps};
}
"""


def test_counters_move_while_a_worker_drains_jobs(project: Project, page: Any) -> None:
    n = 60
    queue_jobs(project, f"print(json.dumps([j.id for j in tasks.work.map([(i, 0.15) for i in range({n})])]))")
    url = project.start_dashboard()
    page.goto(url + "/")
    assert counter(page, "queued") == str(n) and counter(page, "succeeded") == "0"
    project.start_worker(threads=2, NUVOM_HEARTBEAT_SECS="1")
    seen: set[str] = set()

    def drained() -> bool:
        seen.add(counter(page, "succeeded"))
        return counter(page, "succeeded") == str(n)

    # The counters are refreshed by htmx in the page itself; nothing reloads it.
    wait_until(drained, 60, "the succeeded counter to reach the job count")
    assert len(seen - {"0", str(n)}) >= 1, f"the counter jumped straight to the end: {seen}"
    assert counter(page, "queued") == "0" and counter(page, "workers") == "1"
    chart_points(page, 3)
    assert page.locator("#workers tbody tr td").first.inner_text() != "none"
    assert page.locator("#task-stats").inner_text().count("work") >= 1
    # The legend shows the latest values without hovering: 60 jobs finished, none failed.
    wait_until(lambda: page.locator("#legend-failure").inner_text() == "0.0 %", 30, "the failure rate in the legend")
    assert float(page.locator("#legend-throughput").inner_text()) >= 0
    assert page.locator("#legend-at").inner_text().startswith("latest, ")
    shot(page, "overview")
    # A count card opens the job list it counts.
    page.click('.counter[data-key="succeeded"]')
    page.wait_for_url(url + "/jobs?status=SUCCESS")
    assert page.locator("#jobs tbody tr").count() == 50  # a full first page
    assert page.dialogs == []


def test_the_charts_time_labels_never_overlap_at_any_window_width(project: Project, page: Any) -> None:
    url = project.start_dashboard()
    page.goto(url + "/")
    chart_points(page, 3)
    for width in (320, 480, 640, 800, 1024, 1400, 1920):
        page.set_viewport_size({"width": width, "height": 900})
        wait_until(lambda: page.evaluate(RESIZED), 10, f"the chart resized to {width} px")
        measured = page.evaluate(AXIS_GAPS)
        assert len(measured["labels"]) >= 2, (width, measured)
        assert min(measured["gaps"]) >= 0, (width, measured)
        assert len(set(measured["labels"])) == len(measured["labels"]), (width, measured)  # no label twice


def test_a_failed_job_shows_its_traceback_and_a_retry_succeeds(project: Project, page: Any) -> None:
    marker = project.root / "marker"
    [failed_id] = queue_jobs(project, f"print(json.dumps([tasks.fragile.delay({str(marker)!r}).id]))")
    project.start_worker()
    url = project.start_dashboard()
    page.goto(url + "/jobs?status=FAILED")
    reload_until(page, lambda: page.locator(f"a:text('{failed_id}')").count() == 1, 60, "the job to fail")
    shot(page, "jobs")
    page.click(f"a:text('{failed_id}')")
    traceback = page.locator("#traceback").inner_text()
    assert "Traceback (most recent call last)" in traceback and "RuntimeError: the marker is missing" in traceback
    # It starts at the task's own frame; nuvom's runner is behind "show full traceback".
    first_frame = next(line for line in traceback.splitlines() if line.strip().startswith("File "))
    assert "tasks.py" in first_frame and "_runner.py" not in traceback
    assert not page.locator("#full-traceback pre").is_visible()
    page.click("#full-traceback summary")
    assert "_runner.py" in page.locator("#full-traceback pre").inner_text()
    page.click("#full-traceback summary")
    assert page.locator("#job-status").inner_text() == "FAILED"
    shot(page, "job-failed")

    marker.touch()  # the cause is fixed
    page.click("#retry")
    assert "Queue failed job" in page.locator("#question").inner_text()
    shot(page, "confirm-retry")
    page.click("#confirm")  # the real flow: the confirm page's signed token
    message = page.locator("#message").inner_text()
    assert f"Job {failed_id} was queued again as job" in message
    page.click("#message-link")
    reload_until(page, lambda: page.locator("#job-status").inner_text() == "SUCCESS", 60, "the retried job to succeed")
    assert page.locator("#retry-of").inner_text() == failed_id
    assert "fixed" in page.locator("#result").inner_text()
    shot(page, "job-retried")


def test_a_script_in_a_job_argument_is_shown_as_text_and_never_runs(project: Project, page: Any) -> None:
    payload = "<script>window.__xss = 1; alert(1)</script><img src=x onerror=alert(2)>"
    [job_id] = queue_jobs(project, f"print(json.dumps([tasks.echo.delay({payload!r}).id]))")
    project.start_worker()
    url = project.start_dashboard()
    page.goto(f"{url}/jobs/{job_id}")
    reload_until(page, lambda: page.locator("#job-status").inner_text() == "SUCCESS", 60, "the echo job to finish")
    assert payload in page.locator("#args").inner_text()
    assert payload in page.locator("#result").inner_text()
    page.goto(f"{url}/jobs")
    assert page.evaluate("window.__xss === undefined")
    assert page.dialogs == []
    assert page.locator("#args img, #result img, #jobs script").count() == 0


def test_a_token_protected_dashboard_asks_for_it(project: Project, page: Any) -> None:
    cron = "*/5 9-17 * * 1-5"
    try:
        import cronsim  # noqa: F401  (nuvom-core's cron extra)
    except ImportError:
        cron = ""
    project.python(
        "import tasks; tasks.work.schedule(1, interval=300, key='thumbnails'); "
        "tasks.echo.schedule('nightly', interval=86400, key='nightly-report')"
        + (
            f"; tasks.echo.schedule('office', cron={cron!r}, timezone_name='Europe/Riga', key='office-hours')"
            if cron
            else ""
        )
    )
    url = project.start_dashboard(NUVOM_DASHBOARD_TOKEN="open-sesame")
    page.goto(url + "/jobs")
    assert page.url.startswith(url + "/login")
    shot(page, "login")
    page.fill("#token", "wrong")
    page.click("#sign-in")
    assert page.locator("#login-failed").is_visible()
    page.fill("#token", "open-sesame")
    page.click("#sign-in")
    page.wait_for_url(url + "/jobs")
    assert page.locator("h1").inner_text() == "Jobs"
    page.goto(url + "/schedules")
    assert page.locator("table#schedules").is_visible()  # the file store keeps schedules
    assert "every 5 min" in page.locator("#schedule-thumbnails .timing").inner_text()
    if cron:
        assert page.locator("#schedule-office-hours .timezone").inner_text() == "Europe/Riga"
    shot(page, "schedules")
    assert page.context.request.get(url + "/api/samples").status == 200  # signed in: the cookie
    # A browser that never signed in gets nothing from the API.
    fresh = page.context.browser.new_context()
    try:
        assert fresh.request.get(url + "/api/samples").status == 401
    finally:
        fresh.close()


def test_the_workers_page_shows_live_workers_their_jobs_and_a_killed_one_greyed(project: Project, page: Any) -> None:
    # Batches of one: a worker claims no more than it can run (plus one).
    beat = {"NUVOM_HEARTBEAT_SECS": "0.5", "NUVOM_BATCH_SIZE": "1"}
    steady = project.start_worker(threads=4, **beat)
    queue_jobs(project, "print(json.dumps([j.id for j in tasks.work.map([(i, 3.0) for i in range(16)])]))")
    url = project.start_dashboard()
    page.goto(url + "/workers")
    wait_until(lambda: page.locator("#running tbody a").count() == 4, 60, "the steady worker's 4 jobs listed")
    assert "work" in page.locator("#running").inner_text()
    doomed = project.start_worker(threads=2, executor="process", **beat)
    wait_until(lambda: page.locator("#worker-list tr.live").count() == 2, 30, "both workers live")
    job_id = page.locator("#running tbody a").first.inner_text()
    doomed.send_signal(signal.SIGKILL)
    # htmx refreshes the table: the killed worker turns grey once three heartbeats are missed.
    row = page.locator(f'#worker-list tr[data-worker^="{socket.gethostname()}:{doomed.pid}:"]')
    wait_until(lambda: row.get_attribute("class") == "gone", 30, "the killed worker greyed")
    assert "gone" in row.inner_text() and "no heartbeat for" in row.inner_text()
    live = page.locator(f'#worker-list tr[data-worker^="{socket.gethostname()}:{steady.pid}:"]')
    assert live.get_attribute("class") == "live" and "/ 4" in live.inner_text()
    shot(page, "workers")
    page.locator("#running tbody a").first.click()
    page.wait_for_url(url + "/jobs/*")
    assert page.locator("h1 code").inner_text() in (job_id, page.url.rsplit("/", 1)[-1])


def test_the_queues_page_shows_depth_wait_and_rates(project: Project, page: Any) -> None:
    queue_jobs(project, "print(json.dumps([j.id for j in tasks.work.map([(i, 0.2) for i in range(400)])]))")
    url = project.start_dashboard()
    project.start_worker(threads=4)
    page.goto(url + "/queues")
    row = page.locator('#queue-list tr[data-queue="default"]')
    wait_until(lambda: row.locator(".rate-out").inner_text() not in (DASH, "0.00"), 30, "a rate out")
    wait_until(lambda: row.locator(".latency").inner_text() != DASH, 30, "the next job's wait")
    assert int(row.locator("td.num a").first.inner_text()) > 0
    shot(page, "queues")


def test_a_dns_rebinding_page_gets_nothing_from_a_loopback_dashboard(project: Project, browser: Any) -> None:
    # Chromium resolves the attacker's name to 127.0.0.1, as a rebinding DNS server would.
    url = project.start_dashboard()
    [job_id] = queue_jobs(project, "print(json.dumps([tasks.echo.delay(1).id]))")
    b = browser.browser_type.launch(
        executable_path=CHROMIUM, args=[*ARGS, "--host-resolver-rules=MAP rebind.evil.example 127.0.0.1"]
    )
    try:
        p = b.new_page()
        for path in ("/", f"/jobs/{job_id}", f"/jobs/{job_id}/cancel", "/login"):
            response = p.goto(f"http://rebind.evil.example:{project.port}{path}")
            assert response is not None and response.status == 400, path
            assert "Invalid Host header" in p.content()
        assert p.context.cookies() == []  # no CSRF cookie handed out
        legit = p.goto(f"{url}/jobs/{job_id}/cancel")
        assert legit is not None and legit.status == 200
    finally:
        b.close()
