"""Named queues, workflows and cancelling running jobs in a real headless
Chromium, over real HTTP (issue 29).

Each test runs on the memory store, which keeps every capability: the
dashboard is served by uvicorn in this process, beside a real worker of the
same app (the way an app that runs ``with Worker(): ...`` mounts it). It runs
again on every durable store installed (core's file store; SQLite in the e2e
environment), with the dashboard and the workers in processes of their own: a
test that needs a capability the store lacks is skipped saying which, and the
cancel test checks, on a store that cannot cancel running jobs, that the
button is disabled with the reason.

With NUVOM_DASHBOARD_SCREENSHOTS=1 the memory cases save their screens to
docs/images/ (docs/dashboard.md shows them).
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nuvom.app import App
from nuvom.config import Settings
from nuvom.job import current_job
from nuvom.plugins.contracts import BaseJobQueue
from nuvom.worker import Worker
from nuvom.workflow import group

from .conftest import DASH, Project, free_port, queue_jobs, reload_until, shot, wait_until

STORES = [
    "memory",
    "file",
    pytest.param(
        "sqlite",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("nuvom.sqlite") is None, reason="nuvom-sqlite is not installed"
        ),
    ),
]


def store_class(name: str, tmp_path: Path) -> type[BaseJobQueue]:
    app = App(Settings(queue_backend=name, result_backend=name, data_dir=str(tmp_path / "data")))
    return app.backend_class("queue", name)


def needs(name: str, tmp_path: Path, capability: str) -> None:
    if not getattr(store_class(name, tmp_path), capability):
        pytest.skip(f"the {name} store does not keep this yet ({capability} is False)")


class InProcess:
    """A memory app with its tasks, a real worker of it and the dashboard served
    by uvicorn in this process on a free loopback port."""

    def __init__(self) -> None:
        import uvicorn
        from nuvom.dashboard import create_app

        self.app = App(Settings(queue_backend="memory", result_backend="memory"))
        self.workers: list[Worker] = []
        app = self.app

        @app.task(name="work")
        def work(i: int, secs: float = 0.0) -> int:
            time.sleep(secs)
            return i * 2

        @app.task(name="total")
        def total(values: list[int]) -> int:
            return sum(values)

        @app.task(name="patient")
        def patient(release: str) -> str:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not current_job().cancelled and not Path(release).exists():
                time.sleep(0.02)
            return "released"

        self.work, self.total, self.patient = work, total, patient
        port = free_port()
        asgi = create_app(app=app, token="", sample_every=0.5, allowed_hosts=["127.0.0.1"])
        self.server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the dashboard serving")
        self.url = f"http://127.0.0.1:{port}"

    def start_worker(self, **kwargs: Any) -> Worker:
        worker = Worker(app=self.app, **kwargs).start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.should_exit = True
        self.thread.join(30)
        self.app.close()


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The store named by the test's parameter: an :class:`InProcess` for memory,
    else a :class:`Project` whose processes all use that store."""
    name = request.param
    if name == "memory":
        in_process = InProcess()
        yield in_process
        in_process.stop()
        return
    project = Project(tmp_path)
    project.store = name
    yield project
    project.stop()


def job_status(page: Any) -> str:
    return str(page.locator("#job-status").inner_text())


@pytest.mark.parametrize("site", STORES, indirect=True)
def test_named_queues_each_have_a_row_with_depth_wait_rates_and_workers(site: Any, page: Any, tmp_path: Path) -> None:
    if isinstance(site, InProcess):
        site.work.with_options(queue="reports").map([(i, 0) for i in range(10)])  # no worker serves it
        site.work.map([(i, 0) for i in range(3)])
        site.work.with_options(queue="emails").map([(i, 0.05) for i in range(300)])
        site.start_worker(max_workers=2, batch_size=1, queues=["emails"])
        url = site.url
    else:
        needs(site.store, tmp_path, "supports_queues")
        queue_jobs(
            site,
            "tasks.work.with_options(queue='reports').map([(i, 0) for i in range(10)]); "
            "tasks.work.map([(i, 0) for i in range(3)]); "
            "print(json.dumps([j.id for j in tasks.work.with_options(queue='emails').map("
            "[(i, 0.05) for i in range(300)])]))",
        )
        site.start_worker(threads=2, NUVOM_QUEUES="emails", NUVOM_BATCH_SIZE="1", NUVOM_HEARTBEAT_SECS="1")
        url = site.start_dashboard()
    page.goto(url + "/queues")
    emails = page.locator('#queue-list tr[data-queue="emails"]')
    reports = page.locator('#queue-list tr[data-queue="reports"]')
    default = page.locator('#queue-list tr[data-queue="default"]')
    # The page refreshes itself (htmx): the queue being drained gets a rate out and a worker.
    wait_until(lambda: emails.locator(".rate-out").inner_text() not in (DASH, "0.00"), 60, "a rate out of emails")
    wait_until(lambda: emails.locator(".workers").inner_text() == "1", 30, "the worker serving emails")
    assert reports.locator(".waiting").inner_text() == "10" and reports.locator(".workers").inner_text() == "0"
    assert default.locator(".waiting").inner_text() == "3"
    # Nobody serves reports: its oldest job has been due since it was queued, and nothing leaves it.
    wait_until(lambda: reports.locator(".latency").inner_text() != DASH, 30, "the reports queue's wait")
    assert reports.locator(".rate-out").inner_text() in ("0.00", DASH)
    assert 0 < int(emails.locator(".waiting").inner_text()) < 300
    if isinstance(site, InProcess):
        shot(page, "queues-named")


@pytest.mark.parametrize("site", STORES, indirect=True)
def test_a_workflow_jobs_page_links_its_parents_and_children(site: Any, page: Any, tmp_path: Path) -> None:
    if isinstance(site, InProcess):
        first, second = site.work.delay(1), site.work.delay(2)
        ids = [first.id, second.id, group([first, second]).then(site.total).id]
        url = site.url
    else:
        needs(site.store, tmp_path, "supports_workflows")
        ids = queue_jobs(
            site,
            "from nuvom.workflow import group; a, b = tasks.work.delay(1), tasks.work.delay(2); "
            "print(json.dumps([a.id, b.id, group([a, b]).then(tasks.echo).id]))",
        )
        url = site.start_dashboard()
    first_id, second_id, fan_in_id = ids
    page.goto(f"{url}/jobs/{first_id}")
    assert page.locator("#children a.child").all_inner_texts() == [fan_in_id]
    page.click("#children a.child")
    page.wait_for_url(f"{url}/jobs/{fan_in_id}")
    assert job_status(page) == "WAITING"
    assert page.locator("#parents a.parent").all_inner_texts() == [first_id, second_id]
    assert "with their results in order" in page.locator("#parents").inner_text()
    if isinstance(site, InProcess):
        shot(page, "job-workflow")
        site.start_worker(max_workers=2)
    else:
        site.start_worker()
    reload_until(page, lambda: job_status(page) == "SUCCESS", 60, "the fan-in job to run")
    # total (memory) or echo (durable); the page shows the result as indented JSON
    assert json.loads(page.locator("#result").inner_text()) in (6, [2, 4])
    page.click("#parents a.parent >> nth=1")
    page.wait_for_url(f"{url}/jobs/{second_id}")
    assert page.locator("#children").count() == 0  # released: the link is kept by the child only


@pytest.mark.parametrize("site", STORES, indirect=True)
def test_a_running_job_is_cancelled_from_its_page(site: Any, page: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"
    if isinstance(site, InProcess):
        site.start_worker(max_workers=1)
        job_id = site.patient.delay(str(release)).id
        url, can_cancel = site.url, True
    else:
        site.start_worker(threads=1)
        [job_id] = queue_jobs(site, f"print(json.dumps([tasks.patient.delay({str(release)!r}).id]))")
        url = site.start_dashboard()
        cls = store_class(site.store, tmp_path)
        can_cancel = cls.request_cancel is not BaseJobQueue.request_cancel
    page.goto(f"{url}/jobs/{job_id}")
    reload_until(page, lambda: job_status(page) == "RUNNING", 60, "the job running")
    button = page.locator("#cancel")
    if not can_cancel:
        assert button.is_disabled()
        assert "cannot cancel running jobs" in page.locator("#cancel-why").inner_text()
        refused = page.goto(f"{url}/jobs/{job_id}/cancel")  # the confirm page, asked for directly
        assert refused is not None and refused.status == 409
        assert "cannot cancel running jobs" in page.locator("#message").inner_text()
        release.touch()
        page.goto(f"{url}/jobs/{job_id}")
        reload_until(page, lambda: job_status(page) == "SUCCESS", 60, "the job to finish unharmed")
        return
    if isinstance(site, InProcess):
        shot(page, "job-running")
    button.click()
    assert "Ask the worker running job" in page.locator("#question").inner_text()
    if isinstance(site, InProcess):
        shot(page, "confirm-cancel-running")
    page.click("#confirm")  # the real flow: the confirm page's signed token
    assert f"The worker running job {job_id} was asked to stop it" in page.locator("#message").inner_text()
    page.click("#message-link")
    reload_until(page, lambda: job_status(page) == "FAILED", 60, "the job cancelled")
    assert page.locator("#error").inner_text().startswith("Cancelled")
    assert not release.exists()  # it stopped because it was cancelled, not released
    assert page.locator("#cancel").count() == 0  # finished: no button
    assert page.locator("#attempts tbody tr").count() == 1  # one attempt, never retried
