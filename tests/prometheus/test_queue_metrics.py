"""``nuvom_queue_jobs{queue, state}``: the store's jobs by named queue and
state, read at scrape time (issue 29); a real worker serving named queues on
the memory store, /metrics scraped over HTTP."""

from __future__ import annotations

import logging
import threading
import time

from nuvom.prometheus.metrics import QueueCollector
from nuvom.task import task
from prometheus_client import CollectorRegistry

gate = threading.Event()


@task(name="promq_wait_gate", timeout_secs=30)
def promq_wait_gate() -> str:
    gate.wait(20)
    return "opened"


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_queue_jobs_are_counted_by_named_queue_and_state_at_scrape_time(start_worker, enabled, prom) -> None:
    gate.clear()
    running = start_worker(max_workers=1, batch_size=1, queues=["emails"])
    emails = [promq_wait_gate.with_options(queue="emails").delay() for _ in range(4)]
    later = [promq_wait_gate.delay() for _ in range(2)]  # "default": no worker here serves it

    def jobs(samples, queue: str, state: str):
        return prom.value(samples, "nuvom_queue_jobs", queue=queue, state=state)

    try:
        # One emails job runs, one more is claimed beside it (batch_size=1): two running, two queued.
        samples = wait_for(
            lambda: s if jobs(s := prom.scrape(running.url)[1], "emails", "running") == 2 else None,
            what="two emails jobs claimed",
        )
        assert jobs(samples, "emails", "queued") == 2 and jobs(samples, "emails", "retrying") == 0
        assert jobs(samples, "default", "queued") == 2 and jobs(samples, "default", "running") == 0
        assert prom.value(samples, "nuvom_queue_size") == 4  # kept as it was: every job waiting in the store
    finally:
        gate.set()
    assert [j.get(timeout=20) for j in emails] == ["opened"] * 4
    _, samples = prom.scrape(running.url)
    assert jobs(samples, "emails", "queued") in (0, None) and jobs(samples, "default", "queued") == 2
    assert all(j.status.value == "PENDING" for j in later)


def test_a_state_the_store_cannot_tell_has_no_sample() -> None:
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: {"default": {"queued": 3, "running": 1}}))
    assert registry.get_sample_value("nuvom_queue_jobs", {"queue": "default", "state": "queued"}) == 3
    assert registry.get_sample_value("nuvom_queue_jobs", {"queue": "default", "state": "running"}) == 1
    assert registry.get_sample_value("nuvom_queue_jobs", {"queue": "default", "state": "retrying"}) is None


def test_an_unreadable_store_gives_no_queue_samples_and_the_scrape_goes_on(caplog) -> None:
    registry = CollectorRegistry()

    def broken() -> dict:
        raise ConnectionError("store unreachable")

    registry.register(QueueCollector(broken))
    with caplog.at_level(logging.WARNING, logger="nuvom.prometheus"):
        assert registry.get_sample_value("nuvom_queue_jobs", {"queue": "default", "state": "queued"}) is None
    assert any("store unreachable" in r.getMessage() for r in caplog.records)
