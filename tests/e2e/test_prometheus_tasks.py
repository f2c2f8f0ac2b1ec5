"""docs/prometheus.md, as an operator meets it: `nuvom runworker` with the
exporter enabled and the project's manifest, scraped over HTTP."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

TASKS = """
    from nuvom.task import task

    @task
    def resize(x):
        return x

    @task
    def notify(x):
        return x

    @task
    def bill(x):
        return x
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode("utf-8"))
    except (urllib.error.URLError, ConnectionError):
        return None


def test_manifest_tasks_have_their_series_at_zero_before_their_first_job(make_project, wait_for):
    p = make_project("file")
    p.write("tasks.py", TASKS)
    p.nuvom("discover", "tasks")
    port = _free_port()
    p.env.update({"NUVOM_PROMETHEUS_ENABLED": "true", "NUVOM_PROMETHEUS_PORT": str(port)})
    worker = p.start_worker("--workers", "1")

    def finished_series() -> dict[tuple[str, str], float] | None:
        # The exporter may answer a moment before the manifest's tasks are
        # registered (another plugin does that): look until they are, no job queued.
        body = _scrape(f"http://127.0.0.1:{port}/metrics")
        if body is None:
            return None
        series = {
            (s.labels["task"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
            if s.name == "nuvom_jobs_finished_total"
        }
        return series or None

    finished = wait_for(finished_series, what="the manifest's tasks in the exporter")
    expected = {
        (name, outcome): 0.0
        for name in ("resize", "notify", "bill")
        for outcome in ("success", "failure", "timeout", "retry")
    }
    assert finished == expected
    code, out = p.stop_worker(worker, signal.SIGTERM)
    assert code == 0, out
