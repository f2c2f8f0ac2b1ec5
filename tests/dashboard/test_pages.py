"""The Workers and Queues pages, the overview's links and rates, schedules with
their timing, and tracebacks that start at the user's frame: through the test
client, on a real file store in the test's own folder."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nuvom import sdk
from nuvom.app import App
from nuvom.backends import get_queue_backend, get_result_backend
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.dashboard import create_app
from nuvom.dashboard._format import trim_traceback
from nuvom.dashboard._sampler import Sample, Sampler
from nuvom.job import Job, JobError, JobStatus
from nuvom.plugins.contracts import GONE_KEEP_SECS, BaseJobQueue, WorkerInfo
from starlette.testclient import TestClient


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(token="")) as c:
        yield c


def worker(worker_id: str, heartbeat_ago: float = 0.0, **fields: Any) -> WorkerInfo:
    now = time.time()
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "host": "web-1",
        "pid": int(worker_id.split(":")[1]),
        "slots": 4,
        "busy": 0,
        "started_at": now - 3600,
        "heartbeat_at": now - heartbeat_ago,
        "ttl_secs": 15.0,
        "store": "file /srv/data",
        "version": "1.0.0a1",
    }
    values.update(fields)
    return WorkerInfo.model_validate(values)


def fresh(client: TestClient) -> None:
    """Sample now: pages show the newest sample, taken at most a period ago."""
    client.app.state.dashboard.sampler.take()  # type: ignore[attr-defined]


# -- overview ----------------------------------------------------------------------
def test_overview_count_cards_link_to_the_filtered_job_lists(client: TestClient) -> None:
    html = client.get("/").text
    by_key = {key: href for href, key in re.findall(r'<a class="counter[^"]*" href="([^"]+)" data-key="(\w+)"', html)}
    assert by_key == {
        "queued": "http://testserver/jobs?status=QUEUED",
        "running": "http://testserver/workers",
        "succeeded": "http://testserver/jobs?status=SUCCESS",
        "failed": "http://testserver/jobs?status=FAILED",
        "retrying": "http://testserver/jobs?status=QUEUED",
        "workers": "http://testserver/workers",
    }
    for href in by_key.values():
        assert client.get(href).status_code == 200


def test_overview_lists_live_workers_from_their_presence(client: TestClient) -> None:
    queue = get_queue_backend()
    queue.publish_worker(worker("web-1:101:aaa", busy=3, jobs_done=42))
    queue.publish_worker(worker("web-1:102:bbb", heartbeat_ago=60))  # gone: not on the overview
    fresh(client)
    html = client.get("/").text
    assert re.search(r'data-key="workers"><span class="n"\s*>1<', html)
    table = html[html.index('id="workers"') :]
    assert "web-1:101" in table and "3 / 4" in table and "web-1:102" not in table


def test_without_presence_the_overview_lists_workers_seen_in_finished_jobs() -> None:
    class Plain(MemoryJobQueue):
        list_workers = BaseJobQueue.list_workers

    results = MemoryResultBackend()
    app = App(queue=Plain(), results=results)
    results.store([Job(func_name="t", status=JobStatus.SUCCESS, finished_at=time.time(), worker_id="old-host:9")])
    with TestClient(create_app(app, token="")) as c:
        html = c.get("/").text
        assert "Workers seen recently" in html and "old-host:9" in html
        page = c.get("/workers").text
        assert 'id="no-presence"' in page and "keeps no worker presence" in page


# -- workers -----------------------------------------------------------------------
def test_workers_page_shows_live_workers_their_jobs_and_gone_ones_greyed(client: TestClient) -> None:
    queue = get_queue_backend()
    running = [Job(func_name="resize_image", args=[i]) for i in range(2)]
    queue.enqueue_many(running)
    queue.publish_worker(
        worker(
            "web-1:101:aaa",
            executor="process",
            busy=2,
            slots=8,
            jobs_done=1234,
            jobs_failed=5,
            current=[j.id for j in running],
            queues=["default"],
        )
    )
    queue.publish_worker(worker("web-2:202:bbb", host="web-2", heartbeat_ago=40, jobs_done=7))
    queue.publish_worker(worker("web-3:303:ccc", host="web-3", heartbeat_ago=15 + GONE_KEEP_SECS + 5))  # dropped
    fresh(client)
    html = client.get("/workers").text
    counters = dict(re.findall(r'data-key="(\w+)"><span class="n">([^<]+)<', html))
    assert counters == {"live": "1", "slots": "8", "busy": "2", "utilization": "25 %"}
    rows = re.findall(r'<tr class="(live|gone)" data-worker="([^"]+)"', html)
    assert rows == [("live", "web-1:101:aaa"), ("gone", "web-2:202:bbb")]
    live_row = html[html.index('data-worker="web-1:101:aaa"') : html.index('data-worker="web-2:202:bbb"')]
    for text in ("web-1:101", "process", "2 / 8", "1234", "1 h 0 min ago"):
        assert text in live_row, text
    gone_row = html[html.index('data-worker="web-2:202:bbb"') :]
    assert "gone</span>" in gone_row and "no heartbeat for 40 s: listed 4 min" in gone_row
    running_table = html[html.index('id="running"') :]
    for job in running:
        assert f'href="http://testserver/jobs/{job.id}"' in running_table
    assert running_table.count("resize_image") == 2 and '<td class="args">[0]</td>' in running_table
    # The fragment htmx swaps in every 2 s holds the same.
    assert 'data-worker="web-1:101:aaa"' in client.get("/fragments/workers").text


def test_a_worker_record_is_escaped(client: TestClient) -> None:
    get_queue_backend().publish_worker(worker("x:1:b", host="<script>alert(1)</script>", queues=["<i>q</i>"]))
    fresh(client)
    html = client.get("/workers").text
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<i>q</i>" not in html


# -- queues ------------------------------------------------------------------------
def test_queues_page_shows_depth_the_next_jobs_wait_and_rates() -> None:
    app = create_app(token="", sample_every=3600)  # the sampling thread takes one sample, then waits
    sampler: Sampler = app.state.dashboard.sampler
    sampler.ensure_started()
    deadline = time.monotonic() + 10
    while not sampler.samples and time.monotonic() < deadline:
        time.sleep(0.01)
    queue, results = get_queue_backend(), get_result_backend()
    queue.enqueue_many([Job(func_name="t", created_at=time.time() - 125) for _ in range(3)])
    queue.enqueue(Job(func_name="t", not_before=time.time() + 3600))  # waiting, not due: no latency of its own
    sampler.samples.clear()
    first = sampler.take()
    # 10 s later, as the sampler would see it: 5 more queued, 6 finished.
    queue.enqueue_many([Job(func_name="t") for _ in range(5)])
    results.store([Job(func_name="t", status=JobStatus.SUCCESS, finished_at=time.time()) for _ in range(6)])
    second = sampler.take()
    sampler.samples.clear()
    sampler.samples.extend([first, Sample(first.at + 10, second.counts, 1.0, None, second.workers, second.head_due)])
    [row] = sampler.queue_rows()
    assert (row.name, row.waiting, row.running) == ("default", 9, 0)
    assert row.rate_in == pytest.approx(1.1) and row.rate_out == pytest.approx(0.6)  # (5 + 6) / 10, 6 / 10
    assert row.latency is not None and 125 <= row.latency < 200
    with TestClient(app) as client:
        html = client.get("/queues").text
        cells = dict(re.findall(r'<td class="num (rate-in|rate-out)">([^<]+)<', html))
        assert cells == {"rate-in": "1.10", "rate-out": "0.60"}
        assert re.search(r'<td class="latency">2 min \d+ s</td>', html)
        assert 'data-queue="default"' in client.get("/fragments/queues").text


# -- chart rates -------------------------------------------------------------------
def samples(points: list[tuple[float, int, int]]) -> Sampler:
    """A sampler holding samples of (seconds, succeeded so far, failed so far)."""
    sampler = Sampler()
    base = 1_000_000.0
    for t, ok, failed in points:
        sampler.samples.append(Sample(base + t, {"SUCCESS": ok, "FAILED": failed}, 1.0))
    return sampler


def test_one_retried_job_that_fails_does_not_make_the_failure_rate_100_percent() -> None:
    # A quiet queue: one job, retried from the dashboard, fails again.
    sampler = samples([(0, 50, 1), (2, 50, 1), (4, 50, 2)])
    assert [p["failure_rate"] for p in sampler.series()] == [None, None]
    # Twenty jobs finished in the window: now a rate, 1 in 20.
    sampler = samples([(0, 50, 1), (2, 69, 1), (4, 69, 2)])
    assert sampler.series()[-1]["failure_rate"] == pytest.approx(1 / 20)


def test_the_failure_rate_covers_the_last_minute_or_longer_until_twenty_jobs_finished() -> None:
    # Busy: 100 jobs per 10 s, 10 % failing in the last minute, none before.
    busy = [(t, 100 * t // 10, 0) for t in range(0, 120, 10)]
    busy += [(t, busy[-1][1] + 9 * (t - 110) // 1, (t - 110) // 1) for t in range(120, 180, 10)]
    rate = samples(busy).series()[-1]["failure_rate"]
    assert rate == pytest.approx(0.1)
    # Slow: 3 jobs a minute, one failed lately; the window stretches back until
    # it holds 20 finished jobs: 7 minutes, 22 jobs.
    slow = [(60 * m, 3 * m, 1 if m >= 20 else 0) for m in range(0, 25)]
    assert samples(slow).series()[-1]["failure_rate"] == pytest.approx(1 / 22)
    too_slow = [(120 * m, m, m) for m in range(0, 12)]  # 10 jobs in 10 minutes: no rate
    assert samples(too_slow).series()[-1]["failure_rate"] is None


# -- schedules and tracebacks ------------------------------------------------------
def schedule_rows(client: TestClient) -> dict[str, str]:
    html = client.get("/schedules").text
    return {key: body for key, body in re.findall(r'<tr id="schedule-([^"]+)">(.*?)</tr>', html, re.S)}


def test_schedules_show_their_interval(client: TestClient) -> None:
    from nuvom.task import task

    @task(name="dash_report")
    def report() -> None: ...

    report.schedule(interval=5400, key="every-90-min")
    report.schedule(interval=30, key="every-30-s")
    rows = schedule_rows(client)
    assert "every 1 h 30 min" in rows["every-90-min"] and "every 30 s" in rows["every-30-s"]
    assert '<td class="timezone">\u2013</td>' in rows["every-90-min"]  # an interval has no time zone


def test_schedules_show_their_cron_expression_and_time_zone(client: TestClient) -> None:
    pytest.importorskip("cronsim", reason="cron schedules need nuvom-core's cron extra (cronsim)")
    from nuvom.task import task

    @task(name="dash_office")
    def office() -> None: ...

    office.schedule(cron="*/5 9-17 * * 1-5", timezone_name="Europe/Riga", key="office-hours")
    rows = schedule_rows(client)
    assert "cron <code>*/5 9-17 * * 1-5</code>" in rows["office-hours"]
    assert '<td class="timezone">Europe/Riga</td>' in rows["office-hours"]


def test_a_job_made_by_a_schedule_links_to_its_row(client: TestClient) -> None:
    from nuvom.task import task

    @task(name="dash_tick")
    def tick() -> None: ...

    tick.schedule(interval=3600, key="hourly:cleanup")
    job = sdk.run_schedule_now("hourly:cleanup")
    assert job is not None
    html = client.get(f"/jobs/{job.id}").text
    # The fragment is percent-encoded; browsers decode it to find the row's id.
    assert html.count('href="http://testserver/schedules#schedule-hourly%3Acleanup"') == 2  # header and facts
    assert 'id="schedule-hourly:cleanup"' in client.get("/schedules").text


TRACEBACK = """Traceback (most recent call last):
  File "/srv/venv/lib/python3.12/site-packages/nuvom/_runner.py", line 162, in call
    return True, task.fn(*job.args, **job.kwargs)
                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/srv/app/tasks.py", line 8, in boom
    return helper(x)
  File "/srv/app/nuvom/helpers.py", line 4, in helper
    raise ValueError(f"bad {x}")
ValueError: bad 1
"""


def test_tracebacks_start_at_the_users_frame_with_the_full_one_kept(client: TestClient) -> None:
    trimmed = trim_traceback(TRACEBACK)
    assert trimmed is not None
    lines = trimmed.splitlines()
    assert lines[1] == "  [1 frame in nuvom's own modules hidden]"
    assert lines[2] == '  File "/srv/app/tasks.py", line 8, in boom'
    assert '"/srv/app/nuvom/helpers.py"' in trimmed  # a user's folder named nuvom is not nuvom's
    assert lines[-1] == "ValueError: bad 1"
    assert trim_traceback("no frames here") == "no frames here"
    job = Job(
        func_name="boom",
        status=JobStatus.FAILED,
        finished_at=time.time(),
        error=JobError(type="ValueError", message="bad 1", traceback=TRACEBACK),
    )
    get_result_backend().store([job])
    html = client.get(f"/jobs/{job.id}").text
    shown = html[html.index('id="traceback"') : html.index("</pre>", html.index('id="traceback"'))]
    assert "_runner.py" not in shown and "tasks.py" in shown
    assert 'id="full-traceback"' in html and "site-packages/nuvom/_runner.py" in html


def test_a_chained_traceback_is_trimmed_in_each_part() -> None:
    inner = TRACEBACK.replace("ValueError: bad 1\n", "KeyError: 'k'\n")
    chained = inner + "\nDuring handling of the above exception, another exception occurred:\n\n" + TRACEBACK
    trimmed = trim_traceback(chained) or ""
    assert trimmed.count("hidden]") == 2 and "_runner.py" not in trimmed
    assert "During handling of the above exception" in trimmed
