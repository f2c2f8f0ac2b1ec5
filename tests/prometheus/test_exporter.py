"""A real worker with the exporter, jobs run, /metrics scraped over HTTP."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from nuvom.app import App
from nuvom.errors import JobFailed
from nuvom.job import Job
from nuvom.prometheus import PrometheusPlugin
from nuvom.registry import LazyTask
from nuvom.task import task

# -- tasks -------------------------------------------------------------------
gate = threading.Event()


@task(name="prom_add")
def prom_add(a: int, b: int) -> int:
    return a + b


@task(name="prom_boom")
def prom_boom() -> None:
    raise ValueError("boom")


@task(name="prom_flaky", retries=2, retry_delay_secs=0)
def prom_flaky() -> None:
    raise RuntimeError("always fails")


@task(name="prom_slow", timeout_secs=0.3)
def prom_slow() -> None:
    time.sleep(1.5)


@task(name="prom_wait_gate", timeout_secs=20)
def prom_wait_gate() -> str:
    gate.wait(10)
    return "opened"


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def exporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nuvom-prometheus"]


# -- discovery and enabling ----------------------------------------------------
def test_found_through_the_nuvom_entry_point_group() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="nuvom")}
    assert eps.get("prometheus") == "nuvom.prometheus:PrometheusPlugin"
    manager = App().plugins
    record = next(r for r in manager.discover() if r.name == "prometheus")
    assert record.state == "loaded"
    assert record.source.startswith("entry point (nuvom-prometheus")
    assert set(record.provides) == {"metrics", "exporter"}
    assert not record.is_backend
    assert PrometheusPlugin.settings_class.__name__ == "PrometheusSettings"


def test_installed_but_not_enabled_opens_no_port_and_costs_no_hooks(start_worker) -> None:
    before = len(exporter_threads())
    running = start_worker()
    plugin = running.plugin
    assert running.record.state == "started"
    assert plugin.server is None and plugin.url is None
    assert plugin.hooks_enabled is False
    assert len(exporter_threads()) == before
    hooks = running.worker.runner.hooks
    plugin_hooks = [fn for fns in vars(hooks).values() for fn in fns if getattr(fn, "__self__", None) is plugin]
    assert plugin_hooks == []
    assert prom_add.delay(1, 2).get(timeout=5) == 3


def test_producer_processes_never_start_it(enabled) -> None:
    from nuvom.config import get_settings

    manager = App().plugins
    manager.start(get_settings(), backends_only=True)
    record = next(r for r in manager.records if r.name == "prometheus")
    assert record.state == "loaded"
    assert record.plugin.server is None


def test_enabled_by_the_plugins_file(start_worker, tmp_path: Path, monkeypatch, prom) -> None:
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\nprometheus = ["nuvom.prometheus:PrometheusPlugin"]\n', encoding="utf-8"
    )
    monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", "0")  # NUVOM_PROMETHEUS_ENABLED stays unset
    running = start_worker()
    assert running.record.in_plugins_file
    assert running.plugin.hooks_enabled
    _, samples = prom.scrape(running.url)
    assert prom.value(samples, "nuvom_worker_count") == 2


def test_the_seeds_plugins_file_line_serves_metrics(start_worker, tmp_path: Path, monkeypatch, prom) -> None:
    # The earlier nuvom's path resolves to its new home, and `plugin status` says so.
    (tmp_path / ".nuvom_plugins.toml").write_text(
        '[plugins]\nprometheus = ["nuvom.plugins.monitoring.prometheus:PrometheusPlugin"]\n', encoding="utf-8"
    )
    monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", "0")
    running = start_worker()
    assert running.record.moved_from == "nuvom.plugins.monitoring.prometheus:PrometheusPlugin"
    assert running.record.in_plugins_file and running.plugin.hooks_enabled
    _, samples = prom.scrape(running.url)
    assert prom.value(samples, "nuvom_worker_count") == 2


def test_binds_loopback_by_default(start_worker, enabled) -> None:
    running = start_worker()
    assert running.plugin.server.host == "127.0.0.1"
    assert running.url.startswith("http://127.0.0.1:")


# -- the metrics ---------------------------------------------------------------
def test_metrics_move_as_jobs_run_and_fail(start_worker, enabled, prom) -> None:
    running = start_worker(max_workers=3)
    url = running.url

    _, before = prom.scrape(url)
    v = prom.value
    # Known tasks are there at zero before their first job.
    for outcome in ("success", "failure", "timeout", "retry"):
        assert v(before, "nuvom_jobs_finished_total", task="prom_add", outcome=outcome) == 0
    assert v(before, "nuvom_worker_count") == 3
    assert v(before, "nuvom_inflight_jobs") == 0
    assert v(before, "nuvom_queue_size") == 0
    assert v(before, "nuvom_worker_start_time_seconds") == pytest.approx(running.worker.started_at)
    assert v(before, "nuvom_worker_uptime_seconds") >= 0
    info = [k for k in before if k[0] == "nuvom_worker_info"]
    assert len(info) == 1 and ("worker_id", running.worker.worker_id) in info[0][1]

    assert [j.get(timeout=5) for j in prom_add.map([(i, i) for i in range(5)])] == [0, 2, 4, 6, 8]
    with pytest.raises(JobFailed):
        prom_boom.delay().get(timeout=5)
    flaky = prom_flaky.delay()
    with pytest.raises(JobFailed):
        flaky.get(timeout=10)
    with pytest.raises(JobFailed):
        prom_slow.delay().get(timeout=10)

    _, after = prom.scrape(url)
    finished = {
        (t, o): v(after, "nuvom_jobs_finished_total", task=t, outcome=o)
        for t in ("prom_add", "prom_boom", "prom_flaky", "prom_slow")
        for o in ("success", "failure", "timeout", "retry")
    }
    assert finished == {
        ("prom_add", "success"): 5,
        ("prom_add", "failure"): 0,
        ("prom_add", "timeout"): 0,
        ("prom_add", "retry"): 0,
        ("prom_boom", "success"): 0,
        ("prom_boom", "failure"): 1,
        ("prom_boom", "timeout"): 0,
        ("prom_boom", "retry"): 0,
        # two retries, then the third attempt fails for good
        ("prom_flaky", "success"): 0,
        ("prom_flaky", "failure"): 1,
        ("prom_flaky", "timeout"): 0,
        ("prom_flaky", "retry"): 2,
        ("prom_slow", "success"): 0,
        ("prom_slow", "failure"): 0,
        ("prom_slow", "timeout"): 1,
        ("prom_slow", "retry"): 0,
    }
    # One duration and one queue-wait observation per attempt.
    assert v(after, "nuvom_job_duration_seconds_count", task="prom_add") == 5
    assert v(after, "nuvom_job_duration_seconds_count", task="prom_flaky") == 3
    assert v(after, "nuvom_job_queue_wait_seconds_count", task="prom_add") == 5
    assert v(after, "nuvom_job_queue_wait_seconds_count", task="prom_flaky") == 3
    # The timed-out attempt ran for about its timeout, and is in the buckets above it.
    slow_sum = v(after, "nuvom_job_duration_seconds_sum", task="prom_slow")
    assert 0.25 <= slow_sum < 1.5
    assert v(after, "nuvom_job_duration_seconds_bucket", task="prom_slow", le="0.25") == 0
    assert v(after, "nuvom_job_duration_seconds_bucket", task="prom_slow", le="+Inf") == 1
    assert v(after, "nuvom_worker_uptime_seconds") > v(before, "nuvom_worker_uptime_seconds")
    # The abandoned thread was replaced: the pool is whole again.
    assert v(after, "nuvom_worker_count") == 3


def test_tasks_registered_after_the_exporter_started_have_series_at_zero(start_worker, enabled, prom) -> None:
    # The manifest's tasks are registered by another plugin (nuvom-discovery),
    # which may start after this one; `runworker --dev` registers them as files change.
    running = start_worker()
    running.worker.registry.register_lazy(LazyTask(name="prom_late", module="late_tasks", qualname="late"))
    _, samples = prom.scrape(running.url)
    for outcome in ("success", "failure", "timeout", "retry"):
        assert prom.value(samples, "nuvom_jobs_finished_total", task="prom_late", outcome=outcome) == 0
    assert prom.value(samples, "nuvom_job_duration_seconds_count", task="prom_late") == 0


def test_gauges_are_read_at_scrape_time(start_worker, enabled, prom) -> None:
    gate.clear()
    running = start_worker(max_workers=1, batch_size=1)
    url = running.url
    jobs = [prom_wait_gate.delay() for _ in range(5)]
    try:
        # One job runs on the one thread and the worker holds one more claimed
        # (its prefetch: batch_size=1), so three wait in the queue.
        samples = wait_for(
            lambda: (
                s
                if prom.value(s := prom.scrape(url)[1], "nuvom_inflight_jobs") == 1
                and prom.value(s, "nuvom_queue_size") == 3
                else None
            ),
            what="one job in flight, one claimed beside it and three queued",
        )
        assert prom.value(samples, "nuvom_worker_count") == 1
    finally:
        gate.set()
    assert [j.get(timeout=10) for j in jobs] == ["opened"] * 5
    _, samples = prom.scrape(url)
    assert prom.value(samples, "nuvom_queue_size") == 0
    wait_for(lambda: prom.value(prom.scrape(url)[1], "nuvom_inflight_jobs") == 0, what="no job in flight")
    assert prom.value(samples, "nuvom_jobs_finished_total", task="prom_wait_gate", outcome="success") == 5


def test_queue_wait_is_time_from_enqueue_to_start(start_worker, enabled, mem, prom) -> None:
    queue, _ = mem
    job = Job(func_name="prom_add", args=[1, 1], created_at=time.time() - 2.0)
    queue.enqueue(job)
    running = start_worker()
    assert job.get(timeout=5) == 2
    _, samples = prom.scrape(running.url)
    waited = prom.value(samples, "nuvom_job_queue_wait_seconds_sum", task="prom_add")
    assert 2.0 <= waited < 10.0
    assert prom.value(samples, "nuvom_job_queue_wait_seconds_bucket", task="prom_add", le="1.0") == 0
    assert prom.value(samples, "nuvom_job_queue_wait_seconds_bucket", task="prom_add", le="5.0") == 1


def test_retry_wait_counts_from_the_end_of_the_retry_delay(start_worker, enabled, mem, prom) -> None:
    # A job whose not_before is in the past was due then, not when it was created.
    queue, _ = mem
    now = time.time()
    job = Job(func_name="prom_add", args=[2, 2], created_at=now - 100.0, not_before=now - 0.5)
    queue.enqueue(job)
    running = start_worker()
    assert job.get(timeout=5) == 4
    _, samples = prom.scrape(running.url)
    waited = prom.value(samples, "nuvom_job_queue_wait_seconds_sum", task="prom_add")
    assert 0.5 <= waited < 10.0


# -- the HTTP server -----------------------------------------------------------
def test_human_page_links_to_metrics(start_worker, enabled, prom) -> None:
    running = start_worker()
    base = running.url.removesuffix("/metrics")
    status, headers, body = prom.http_get(base + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "exporter" in body and 'href="/metrics"' in body
    assert running.worker.worker_id in body
    status, _, body = prom.http_get(base + "/nothing-here")
    assert status == 404 and "/metrics" in body


def test_openmetrics_on_request_and_name_filter(start_worker, enabled) -> None:
    running = start_worker()
    req = urllib.request.Request(running.url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        body = resp.read().decode()
    assert body.rstrip().endswith("# EOF")
    with urllib.request.urlopen(running.url + "?name[]=nuvom_queue_size", timeout=5) as resp:
        body = resp.read().decode()
    assert "nuvom_queue_size" in body and "nuvom_jobs_finished_total" not in body


def test_stop_closes_the_port(start_worker, enabled) -> None:
    before = len(exporter_threads())
    running = start_worker()
    port = running.plugin.port
    assert len(exporter_threads()) == before + 1
    running.worker.stop(grace=5)
    assert running.plugin.server is None and running.plugin.hooks_enabled is False
    assert len(exporter_threads()) == before
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_port_in_use_is_a_clear_error_and_the_worker_runs_jobs(start_worker, monkeypatch, caplog) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("NUVOM_PROMETHEUS_ENABLED", "true")
        monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", str(port))
        with caplog.at_level(logging.ERROR, logger="nuvom.prometheus"):
            running = start_worker()
        errors = [r for r in caplog.records if r.name == "nuvom.prometheus" and r.levelno == logging.ERROR]
        assert len(errors) == 1
        message = errors[0].getMessage()
        assert f"port {port}" in message and "NUVOM_PROMETHEUS_PORT" in message
        assert "runs jobs without it" in message
        plugin = running.plugin
        assert plugin.server is None and plugin.error and plugin.hooks_enabled is False
        # The plugin did not raise out of start(): core records it as started, and jobs run.
        assert running.record.state == "started"
        assert [j.get(timeout=5) for j in prom_add.map([(1, 2), (3, 4)])] == [3, 7]


def test_port_range_gives_each_worker_process_its_own_port(start_worker, monkeypatch, prom) -> None:
    # Find three consecutive free ports (another test may take one meanwhile: retried).
    for _ in range(20):
        first = prom.free_port()
        socks = []
        try:
            for p in range(first, first + 3):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        break
    else:
        pytest.skip("no three consecutive free loopback ports")
    monkeypatch.setenv("NUVOM_PROMETHEUS_ENABLED", "true")
    monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", f"{first}-{first + 2}")
    a = start_worker()
    b = start_worker()
    assert a.plugin.port != b.plugin.port
    assert {a.plugin.port, b.plugin.port} <= set(range(first, first + 3))
    assert prom_add.delay(5, 5).get(timeout=5) == 10
    # Each process exports its own counts; both report the same shared queue.
    _, sa = prom.scrape(a.url)
    _, sb = prom.scrape(b.url)
    total = sum(prom.value(s, "nuvom_jobs_finished_total", task="prom_add", outcome="success") for s in (sa, sb))
    assert total == 1
    ids = {k[1] for s in (sa, sb) for k in s if k[0] == "nuvom_worker_info"}
    assert len(ids) == 2


def test_a_bad_setting_fails_the_plugin_not_the_worker(start_worker, monkeypatch, caplog) -> None:
    monkeypatch.setenv("NUVOM_PROMETHEUS_ENABLED", "true")
    monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", "not-a-port")
    with caplog.at_level(logging.ERROR):
        running = start_worker()
    assert running.record.state == "failed"
    assert "NUVOM_PROMETHEUS_PORT" in running.record.error
    assert prom_add.delay(2, 3).get(timeout=5) == 5


def test_idle_connections_to_the_metrics_port_are_bounded_and_time_out(
    start_worker, enabled, prom, monkeypatch
) -> None:
    import socket
    import time

    from nuvom.prometheus import server as server_module

    monkeypatch.setattr(server_module._Handler, "timeout", 1.0)
    running = start_worker()
    host, port = running.plugin.server.host, running.plugin.server.port
    threads_before = threading.active_count()
    clients = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection((host, port), timeout=5))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and threading.active_count() < threads_before + server_module.MAX_CONNECTIONS:
            time.sleep(0.02)
        # 64 idle clients hold at most MAX_CONNECTIONS threads, and jobs still run.
        assert threading.active_count() <= threads_before + server_module.MAX_CONNECTIONS + 2
        assert prom_add.delay(2, 2).get(timeout=10) == 4
        # Idle connections are dropped after the timeout, and the port serves again.
        deadline = time.monotonic() + 15
        while True:
            try:
                status, _, body = prom.http_get(running.url, timeout=2)
                if status == 200 and "nuvom_worker_count" in body:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the exporter never served again"
            time.sleep(0.2)
    finally:
        for c in clients:
            c.close()
    deadline = time.monotonic() + 10
    while threading.active_count() > threads_before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before + 1
