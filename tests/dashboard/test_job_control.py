"""The Queues page's rows per named queue and the job page's queue facts
(issue 29), through the sampler and Starlette's test client, on the memory
store (which keeps named queues, priorities and unique keys). The browser
tests (test_browser_job_control.py) drive the same pages over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from nuvom.app import App
from nuvom.config import Settings
from nuvom.dashboard import create_app
from nuvom.dashboard._sampler import Sample, Sampler
from nuvom.job import Job
from nuvom.plugins.contracts import WorkerInfo
from starlette.testclient import TestClient


@pytest.fixture
def app() -> Iterator[App]:
    app = App(Settings(queue_backend="memory", result_backend="memory"))
    yield app
    app.close()


def serving(*queues: str) -> WorkerInfo:
    now = time.time()
    return WorkerInfo(
        worker_id="h:7:abc",
        host="h",
        pid=7,
        queues=list(queues),
        slots=2,
        busy=0,
        started_at=now,
        heartbeat_at=now,
        ttl_secs=60,
    )


def test_each_named_queue_has_a_row_with_its_depth_oldest_due_job_and_workers(app: App) -> None:
    queue = app.queue
    old = time.time() - 125
    # The priority job is next to run, but the oldest due job is what the row's wait shows.
    queue.enqueue_many([Job(func_name="t", queue="emails", created_at=old + k) for k in range(3)])
    queue.enqueue(Job(func_name="t", queue="emails", priority=9))
    queue.enqueue(Job(func_name="t", queue="reports", not_before=time.time() + 3600))  # not due
    queue.enqueue(Job(func_name="t"))
    queue.publish_worker(serving("emails", "bulk"))
    sampler = Sampler(app=app)
    sampler.take()
    rows = {row.name: row for row in sampler.queue_rows()}
    assert set(rows) == {"bulk", "default", "emails", "reports"}
    emails = rows["emails"]
    assert (emails.waiting, emails.retrying, emails.running, emails.workers) == (4, 0, 0, 1)
    assert emails.latency is not None and 125 <= emails.latency < 200
    assert rows["reports"].waiting == 1 and rows["reports"].latency is None and rows["reports"].workers == 0
    assert rows["default"].waiting == 1 and rows["default"].workers == 0
    assert (rows["bulk"].waiting, rows["bulk"].workers) == (0, 1)  # served, empty: shown
    with TestClient(create_app(app=app, token="")) as client:
        html = client.get("/queues").text
        assert html.count("<tr data-queue=") == 4 and 'data-queue="bulk"' in html
        assert "This store has one queue" not in html


def test_with_several_queues_rates_split_the_total_by_the_queues_of_recent_jobs() -> None:
    sampler = Sampler()
    base = 1_000_000.0
    before = {"emails": {"queued": 10, "running": 2}, "default": {"queued": 5, "running": 0}}
    after = {"emails": {"queued": 6, "running": 2}, "default": {"queued": 9, "running": 1}}
    sampler.samples.extend(
        [
            Sample(base, {"SUCCESS": 100}, 1.0, None, [], None, before, {}),
            Sample(base + 10, {"SUCCESS": 108}, 1.0, None, [], None, after, {}),
        ]
    )
    # Of the newest records finished in the window, 3 in 4 were emails jobs.
    sampler.stats.recent_by_queue = {"emails": 6, "default": 2}
    rows = {row.name: row for row in sampler.queue_rows()}
    # 8 finished in 10 s: 0.6 / s of emails, 0.2 / s of default.
    assert rows["emails"].rate_out == pytest.approx(0.6) and rows["default"].rate_out == pytest.approx(0.2)
    # In = out + the change of depth: emails 0.6 - 0.4, default 0.2 + 0.5.
    assert rows["emails"].rate_in == pytest.approx(0.2) and rows["default"].rate_in == pytest.approx(0.7)


def test_one_queue_in_use_keeps_the_stores_totals() -> None:
    sampler = Sampler()
    base = 1_000_000.0
    one = {"default": {"queued": 3, "retrying": 1, "running": 2}}
    sampler.samples.extend(
        [
            Sample(base, {"queued": 3, "retrying": 1, "running": 2, "SUCCESS": 0}, 1.0, None, None, None, one),
            Sample(base + 10, {"queued": 3, "retrying": 1, "running": 2, "SUCCESS": 5}, 1.0, None, None, None, one),
        ]
    )
    [row] = sampler.queue_rows()
    assert (row.name, row.waiting, row.retrying, row.running, row.workers) == ("default", 4, 1, 2, None)
    assert row.rate_out == pytest.approx(0.5) and row.rate_in == pytest.approx(0.5)


def test_the_job_page_shows_queue_priority_and_unique_key(app: App) -> None:
    @app.task(name="welcome", unique=True)
    def welcome(user: int) -> None: ...

    job = welcome.with_options(queue="emails", priority=5).delay(7)
    with TestClient(create_app(app=app, token="")) as client:
        html = client.get(f"/jobs/{job.id}").text
    assert '<dd id="queue">emails, priority 5</dd>' in html
    assert f'<dd id="unique-key"><code>{job.unique_key}</code></dd>' in html
    assert 'id="workflow"' not in html  # no parents, no children: no section


def test_a_store_without_named_queues_says_it_has_one() -> None:
    from nuvom.backends.memory import MemoryJobQueue

    class OneQueue(MemoryJobQueue):
        supports_queues = False

    app = App(Settings(queue_backend="onequeue", result_backend="memory"))
    app.backends.register("queue", "onequeue", OneQueue)
    app.queue.enqueue(Job(func_name="t"))
    with TestClient(create_app(app=app, token="")) as client:
        html = client.get("/queues").text
    assert "This store has one queue, <code>default</code>" in html and html.count("<tr data-queue=") == 1
    app.close()
