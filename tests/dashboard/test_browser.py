"""The dashboard in a real headless Chromium (Debian's), against a real
`nuvom dashboard` server and real worker processes on a SQLite store.

With NUVOM_DASHBOARD_SCREENSHOTS=1 each test saves its screens to docs/images/.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, SCREENSHOTS, Project, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    p.set_default_timeout(30_000)
    dialogs: list[str] = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p.dialogs = dialogs
    yield p
    context.close()


def shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        out = REPO / "docs" / "images" / f"dashboard-{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)


def counter(page: Any, key: str) -> str:
    return str(page.locator(f'.counter[data-key="{key}"] .n').inner_text()).strip()


def queue_jobs(project: Project, code: str) -> list[str]:
    return list(json.loads(project.python(f"import json, tasks\n{code}")))


def test_counters_move_while_a_worker_drains_jobs(project: Project, page: Any) -> None:
    n = 60
    queue_jobs(project, f"print(json.dumps([j.id for j in tasks.work.map([(i, 0.05) for i in range({n})])]))")
    url = project.start_dashboard()
    page.goto(url + "/")
    assert counter(page, "queued") == str(n) and counter(page, "succeeded") == "0"
    project.start_worker(threads=2)
    seen: set[str] = set()

    def drained() -> bool:
        seen.add(counter(page, "succeeded"))
        return counter(page, "succeeded") == str(n)

    # The counters are refreshed by htmx in the page itself; nothing reloads it.
    wait_until(drained, 60, "the succeeded counter to reach the job count")
    assert len(seen - {"0", str(n)}) >= 1, f"the counter jumped straight to the end: {seen}"
    assert counter(page, "queued") == "0"
    page.wait_for_function("Number(document.getElementById('chart').dataset.points || 0) >= 2")
    assert page.locator("#workers tbody tr td").first.inner_text() != "none"
    assert page.locator("#task-stats").inner_text().count("work") >= 1
    shot(page, "overview")
    assert page.dialogs == []


def test_a_failed_job_shows_its_traceback_and_a_retry_succeeds(project: Project, page: Any) -> None:
    marker = project.root / "marker"
    [failed_id] = queue_jobs(project, f"print(json.dumps([tasks.fragile.delay({str(marker)!r}).id]))")
    project.start_worker()
    url = project.start_dashboard()
    page.goto(url + "/jobs?status=FAILED")
    wait_until(lambda: page.reload() or page.locator(f"a:text('{failed_id}')").count() == 1, 60, "the job to fail")
    shot(page, "jobs")
    page.click(f"a:text('{failed_id}')")
    traceback = page.locator("#traceback").inner_text()
    assert "Traceback (most recent call last)" in traceback and "RuntimeError: the marker is missing" in traceback
    assert page.locator("#job-status").inner_text() == "FAILED"
    shot(page, "job-failed")

    marker.touch()  # the cause is fixed
    page.click("#retry")
    assert "Queue failed job" in page.locator("#question").inner_text()
    shot(page, "confirm-retry")
    page.click("#confirm")
    message = page.locator("#message").inner_text()
    assert f"Job {failed_id} was queued again as job" in message
    page.click("#message-link")
    wait_until(
        lambda: page.reload() or page.locator("#job-status").inner_text() == "SUCCESS", 60, "the retried job to succeed"
    )
    assert page.locator("#retry-of").inner_text() == failed_id
    assert "fixed" in page.locator("#result").inner_text()
    shot(page, "job-retried")


def test_a_script_in_a_job_argument_is_shown_as_text_and_never_runs(project: Project, page: Any) -> None:
    payload = "<script>window.__xss = 1; alert(1)</script><img src=x onerror=alert(2)>"
    [job_id] = queue_jobs(project, f"print(json.dumps([tasks.echo.delay({payload!r}).id]))")
    project.start_worker()
    url = project.start_dashboard()
    page.goto(f"{url}/jobs/{job_id}")
    wait_until(
        lambda: page.reload() or page.locator("#job-status").inner_text() == "SUCCESS", 60, "the echo job to finish"
    )
    assert payload in page.locator("#args").inner_text()
    assert payload in page.locator("#result").inner_text()
    page.goto(f"{url}/jobs")
    assert page.evaluate("window.__xss === undefined")
    assert page.dialogs == []
    assert page.locator("#args img, #result img, #jobs script").count() == 0


def test_a_token_protected_dashboard_asks_for_it(project: Project, page: Any) -> None:
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
    assert page.locator("table#schedules").is_visible()  # SQLite keeps schedules
    shot(page, "schedules")
    assert page.context.request.get(url + "/api/samples").status == 200  # signed in: the cookie
    # A browser that never signed in gets nothing from the API.
    fresh = page.context.browser.new_context()
    try:
        assert fresh.request.get(url + "/api/samples").status == 401
    finally:
        fresh.close()
