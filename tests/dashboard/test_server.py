"""The dashboard's pages, fragments and actions through Starlette's test
client, on a real file store in the test's own folder."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nuvom import sdk
from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.dashboard import create_app
from nuvom.job import Attempt, Job, JobError, JobStatus
from nuvom.testing import reset_process_state
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

XSS = "<script>alert(1)</script>"
TRACEBACK = "Traceback (most recent call last):\n  ...\nRuntimeError: boom"


def make_jobs(n: int, start: float | None = None) -> list[Job]:
    start = start if start is not None else time.time() - n
    jobs = []
    for i in range(n):
        failed = i % 3 == 0
        jobs.append(
            Job(
                func_name="add" if i % 2 else "mul",
                args=[i],
                status=JobStatus.FAILED if failed else JobStatus.SUCCESS,
                attempts=1,
                started_at=start + i - 0.5,
                finished_at=start + i,
                worker_id="host-a:123",
                tags=["nightly"] if i % 4 == 0 else [],
                result=None if failed else i * 2,
                error=JobError(
                    type="RuntimeError",
                    message="boom",
                    traceback="Traceback (most recent call last):\n  ...\nRuntimeError: boom",
                )
                if failed
                else None,
                history=[
                    Attempt(
                        number=1,
                        started_at=start + i - 0.5,
                        finished_at=start + i,
                        outcome="error" if failed else "success",
                        worker_id="host-a:123",
                    )
                ],
            )
        )
    return jobs


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(token="")) as c:
        yield c


def form_token(html: str) -> str:
    """The CSRF token of the page's form (what a browser posts back)."""
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page must carry a form with a CSRF token"
    return m.group(1)


def ids_on(html: str) -> list[str]:
    return re.findall(r'<a href="[^"]*/jobs/([0-9a-f]{32})">', html)


def test_overview_shows_the_counts_from_the_store(client: TestClient) -> None:
    get_result_backend().store(make_jobs(30))
    get_queue_backend().enqueue_many([Job(func_name="add") for _ in range(4)])
    html = client.get("/").text
    numbers = dict(re.findall(r'data-key="(\w+)"><span class="n"[^>]*>([^<]+)<', html))
    # The file store cannot tell retrying jobs from new ones cheaply: it shows a dash there.
    assert numbers == {
        "queued": "4",
        "running": "0",
        "succeeded": "20",
        "failed": "10",
        "retrying": "\u2013",
        "workers": "0",  # none has published its presence
    }
    assert re.search(r'>add</a></td><td class="num">15</td>', html)


def test_task_percentiles_come_from_recent_run_times(client: TestClient) -> None:
    now = time.time()
    jobs = [
        Job(func_name="t", status=JobStatus.SUCCESS, started_at=now - 10, finished_at=now - 10 + d)
        for d in (0.1, 0.2, 0.3, 0.4, 2.0)
    ]
    get_result_backend().store(jobs)
    html = client.get("/").text
    cells = r'<td class="num">([^<]+)</td>'
    row = re.search(r">t</a></td>" + cells * 4, html)
    assert row is not None and row.groups() == ("5", "0", "300.0 ms", "2.00 s")


def test_samples_give_throughput_and_failure_rate(client: TestClient) -> None:
    app_state = client.app.state.dashboard  # type: ignore[attr-defined]
    sampler = app_state.sampler
    sampler.take()
    get_result_backend().store(make_jobs(30))  # 20 succeeded, 10 failed
    sampler.take()
    data = client.get("/api/samples").json()
    assert data["counts"]["FAILED"] == 10
    # The sampling thread (started by the request) may have added a quiet sample since.
    point = max(data["series"], key=lambda p: p["throughput"])
    assert point["throughput"] > 0 and point["failure_rate"] == pytest.approx(10 / 30)


def test_job_arguments_results_and_tracebacks_are_escaped(client: TestClient) -> None:
    job = Job(
        func_name="echo",
        args=[XSS],
        kwargs={"x": "<img src=x onerror=alert(1)>"},
        status=JobStatus.FAILED,
        finished_at=time.time(),
        error=JobError(type="ValueError", message=XSS, traceback=f"Traceback...\nValueError: {XSS}"),
    )
    get_result_backend().store([job])
    for path in (f"/jobs/{job.id}", "/jobs", f"/jobs/{job.id}/retry"):
        response = client.get(path)
        assert "<script>alert(1)" not in response.text and "<img src=x" not in response.text
    html = client.get(f"/jobs/{job.id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script-src 'self'" in client.get(f"/jobs/{job.id}").headers["content-security-policy"]


def test_jobs_are_paged_newest_first_with_a_cursor(client: TestClient) -> None:
    jobs = make_jobs(120)
    get_result_backend().store(jobs)
    expected = [j.id for j in reversed(jobs)]
    seen: list[str] = []
    url: str | None = "/jobs"
    while url:
        html = client.get(url).text
        seen.extend(ids_on(html))
        m = re.search(r'id="next-page" href="([^"]+)"', html)
        url = m.group(1).replace("&amp;", "&") if m else None
    assert seen == expected


def test_jobs_filter_by_status_task_tag_and_time(client: TestClient) -> None:
    jobs = make_jobs(40, start=1_700_000_000.0)
    get_result_backend().store(jobs)
    newest = list(reversed(jobs))
    assert ids_on(client.get("/jobs?status=FAILED").text) == [j.id for j in newest if j.status is JobStatus.FAILED]
    assert ids_on(client.get("/jobs?task=add&tag=").text) == [j.id for j in newest if j.func_name == "add"]
    assert ids_on(client.get("/jobs?tag=nightly").text) == [j.id for j in newest if "nightly" in j.tags]
    ranged = client.get("/jobs?since=1700000010&until=1700000015").text
    assert ids_on(ranged) == [j.id for j in newest if 10 <= j.finished_at - 1_700_000_000 < 15]
    bad = client.get("/jobs?since=yesterday")
    assert bad.status_code == 400 and "not a time" in bad.text


def test_queued_jobs_are_listed_and_searched_by_id(client: TestClient) -> None:
    waiting = Job(func_name="add", args=[1, 2])
    get_queue_backend().enqueue(waiting)
    assert ids_on(client.get("/jobs?status=QUEUED").text) == [waiting.id]
    found = client.get(f"/jobs?q={waiting.id}", follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"].endswith(f"/jobs/{waiting.id}")
    missing = client.get("/jobs?q=" + "0" * 32)
    assert missing.status_code == 404 and "No job" in missing.text
    malformed = client.get("/jobs?q=../../etc/passwd")
    assert malformed.status_code == 400 and "not a valid job id" in malformed.text


def test_job_detail_shows_error_traceback_attempts_and_retry_of(client: TestClient) -> None:
    original = make_jobs(1)[0]
    get_result_backend().store([original])
    retried = sdk.retry_job(original.id)
    assert retried is not None
    html = client.get(f"/jobs/{original.id}").text
    assert "RuntimeError: boom" in html and 'id="traceback"' in html and 'id="retry"' in html
    assert re.search(r'id="attempts".*?<td>1</td>.*?host-a:123', html, re.S)
    queued = client.get(f"/jobs/{retried.id}").text
    assert f'id="retry-of" href="http://testserver/jobs/{original.id}"' in queued and 'id="cancel"' in queued


def test_retry_asks_for_confirmation_and_needs_the_csrf_token(client: TestClient) -> None:
    job = make_jobs(1)[0]
    get_result_backend().store([job])
    confirm = client.get(f"/jobs/{job.id}/retry")
    assert confirm.status_code == 200 and "Please confirm" in confirm.text
    assert sdk.queued_jobs() == []  # asking changes nothing
    refused = client.post(f"/jobs/{job.id}/retry", data={"csrf": "forged"})
    assert refused.status_code == 403 and sdk.queued_jobs() == []
    done = client.post(f"/jobs/{job.id}/retry", data={"csrf": form_token(confirm.text)})
    queued = sdk.queued_jobs()
    assert done.status_code == 200 and len(queued) == 1 and queued[0].retry_of == job.id
    assert f"queued again as job {queued[0].id}" in done.text


def test_retry_refuses_a_job_that_did_not_fail(client: TestClient) -> None:
    job = make_jobs(2)[1]
    get_result_backend().store([job])
    token = form_token(client.get("/login").text)
    response = client.post(f"/jobs/{job.id}/retry", data={"csrf": token})
    assert response.status_code == 409 and sdk.queued_jobs() == []


def test_retry_all_retries_only_failed_jobs_matching_the_filter(client: TestClient) -> None:
    jobs = make_jobs(24)
    get_result_backend().store(jobs)
    wanted = {j.id for j in jobs if j.status is JobStatus.FAILED and j.func_name == "mul" and "nightly" in j.tags}
    confirm = client.get("/actions/retry-failed?task=mul&tag=nightly")
    assert f"<strong>{len(wanted)}</strong>" in confirm.text
    done = client.post("/actions/retry-failed?task=mul&tag=nightly", data={"csrf": form_token(confirm.text)})
    assert f"{len(wanted)} failed job(s)" in done.text
    assert {j.retry_of for j in sdk.queued_jobs(limit=100)} == wanted


def test_cancel_takes_a_queued_job_out(client: TestClient) -> None:
    job = Job(func_name="add", args=[1, 2])
    get_queue_backend().enqueue(job)
    confirm = client.get(f"/jobs/{job.id}/cancel").text
    assert "Please confirm" in confirm
    done = client.post(f"/jobs/{job.id}/cancel", data={"csrf": form_token(confirm)})
    assert done.status_code == 200 and "recorded as failed (Cancelled)" in done.text
    assert sdk.queued_jobs() == []
    record = sdk.get_job(job.id)
    assert record is not None and record.error is not None and record.error.type == "Cancelled"
    again = client.post(f"/jobs/{job.id}/cancel", data={"csrf": form_token(confirm)})
    assert again.status_code == 409


def test_read_only_shows_no_actions_and_refuses_them() -> None:
    job = make_jobs(1)[0]
    get_result_backend().store([job])
    with TestClient(create_app(read_only=True, token="")) as c:
        html = c.get(f"/jobs/{job.id}").text
        assert 'id="retry"' not in html and "read-only" in html
        refused = c.post(f"/jobs/{job.id}/retry", data={"csrf": form_token(c.get("/login").text)})
        assert refused.status_code == 403 and "read-only" in refused.text
    assert sdk.queued_jobs() == []


def test_token_is_required_by_header_or_sign_in() -> None:
    with TestClient(create_app(token="s3cret")) as c:
        page = c.get("/jobs", follow_redirects=False)
        assert page.status_code == 303 and "/login?next=%2Fjobs" in page.headers["location"]
        assert c.get("/api/samples").status_code == 401
        assert c.post("/jobs/" + "0" * 32 + "/retry").status_code == 401
        assert c.get("/static/dashboard.css").status_code == 200
        assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/", headers={"Authorization": "Bearer wrong"}, follow_redirects=False).status_code == 303
        form = c.get("/login?next=/jobs")
        token = form_token(form.text)
        wrong = c.post("/login?next=/jobs", data={"csrf": token, "token": "nope"})
        assert wrong.status_code == 401 and "not right" in wrong.text
        signed = c.post("/login?next=/jobs", data={"csrf": token, "token": "s3cret"}, follow_redirects=False)
        assert form.status_code == 200 and signed.status_code == 303 and signed.headers["location"] == "/jobs"
        assert "s3cret" not in signed.headers["set-cookie"]  # the cookie holds an HMAC, not the token
        assert c.get("/jobs").status_code == 200


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUVOM_DASHBOARD_TOKEN", "from-env")
    with TestClient(create_app()) as c:
        assert c.get("/api/samples").status_code == 401
        assert c.get("/api/samples", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_mounted_in_another_app_links_stay_under_its_prefix() -> None:
    parent = Starlette(routes=[Mount("/ops/nuvom", app=create_app(token=""))])
    job = make_jobs(1)[0]
    get_result_backend().store([job])
    with TestClient(parent) as c:
        html = c.get("/ops/nuvom/jobs").text
        assert f"/ops/nuvom/jobs/{job.id}" in html and "/ops/nuvom/static/vendor/htmx.min.js" in html
        assert c.get("/ops/nuvom/static/vendor/htmx.min.js").status_code == 200
        confirm = c.get(f"/ops/nuvom/jobs/{job.id}/retry").text
        done = c.post(f"/ops/nuvom/jobs/{job.id}/retry", data={"csrf": form_token(confirm)})
        assert done.status_code == 200 and len(sdk.queued_jobs()) == 1


def test_schedules_show_next_and_last_run_and_pause_run_now_act(client: TestClient) -> None:
    from nuvom.task import task

    @task(name="dash_nightly")
    def nightly() -> str:
        return "ok"

    schedule = nightly.schedule(interval=3600, key="nightly")
    html = client.get("/schedules").text
    assert "nightly" in html and "dash_nightly" in html and "run now" in html and "active" in html
    confirm = client.get("/schedules/nightly/pause").text
    assert "Please confirm" in confirm
    paused = client.post("/schedules/nightly/pause", data={"csrf": form_token(confirm)})
    assert "was paused" in paused.text and sdk.get_schedule("nightly").paused
    ran = client.post("/schedules/nightly/run", data={"csrf": form_token(confirm)})
    assert "queued to run now" in ran.text
    [queued] = [j for j in sdk.queued_jobs() if j.func_name == "dash_nightly"]
    assert queued.schedule_key == schedule.key
    # The job page names the schedule that made it.
    assert "made by schedule" in client.get(f"/jobs/{queued.id}").text
    assert client.post("/schedules/nosuch/run", data={"csrf": form_token(confirm)}).status_code == 404


def test_schedules_say_when_the_queue_backend_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from nuvom.app import App
    from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
    from nuvom.plugins.contracts import BaseJobQueue

    class Plain(BaseJobQueue):  # a third-party queue without schedules
        def __init__(self, settings: Any = None) -> None:
            super().__init__(settings)
            self.inner = MemoryJobQueue()

        def enqueue(self, job: Job) -> None:
            self.inner.enqueue(job)

        def claim(self, batch_size: int) -> list[Job]:
            return self.inner.claim(batch_size)

        def ack(self, job_ids: Any) -> None:
            self.inner.ack(job_ids)

        def requeue(self, jobs: Any) -> None:
            self.inner.requeue(jobs)

        def get(self, job_id: str) -> Job | None:
            return self.inner.get(job_id)

        def qsize(self) -> int:
            return self.inner.qsize()

        def clear(self) -> int:
            return self.inner.clear()

    app = App(queue=Plain(), results=MemoryResultBackend())
    with TestClient(create_app(app, token="")) as c:
        assert "Scheduling is not available here" in c.get("/schedules").text


def test_memory_backend_is_flagged_on_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "memory")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "memory")
    reset_process_state()
    with TestClient(create_app(token="")) as c:
        assert 'id="memory-warning"' in c.get("/").text


def test_create_app_shows_the_app_it_is_given(tmp_path: Path) -> None:
    from nuvom.app import App
    from nuvom.config import Settings

    other = App(Settings(data_dir=tmp_path / "other"))
    [mine] = make_jobs(1)
    [theirs] = make_jobs(1)
    get_result_backend().store([mine])
    other.results.store([theirs])
    with TestClient(create_app(other, token="")) as client:
        page = client.get("/jobs").text
    assert theirs.id in page and mine.id not in page
