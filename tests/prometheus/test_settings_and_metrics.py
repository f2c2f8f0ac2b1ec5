"""Settings, label bounds and the scrape-time collector, without a worker."""

from __future__ import annotations

import logging
import socket

import pytest
from nuvom.errors import ConfigError
from nuvom.job import Job
from nuvom.prometheus import (
    OTHER_TASK,
    JobMetrics,
    PrometheusPlugin,
    PrometheusSettings,
    WorkerCollector,
    load_prometheus_settings,
)
from nuvom.prometheus.settings import parse_ports
from prometheus_client import CollectorRegistry, generate_latest


def test_defaults() -> None:
    s = load_prometheus_settings()
    assert s.prometheus_enabled is False
    assert s.prometheus_host == "127.0.0.1"
    assert s.prometheus_port == 9150 and s.ports == (9150, 9150)


def test_settings_come_from_nuvom_variables(monkeypatch) -> None:
    monkeypatch.setenv("NUVOM_PROMETHEUS_ENABLED", "1")
    monkeypatch.setenv("NUVOM_PROMETHEUS_HOST", "::1")
    monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", "9160-9163")
    s = load_prometheus_settings()
    assert s.prometheus_enabled is True and s.prometheus_host == "::1"
    assert s.prometheus_port == "9160-9163" and s.ports == (9160, 9163)


def test_settings_from_dotenv(tmp_path) -> None:
    (tmp_path / ".env").write_text("NUVOM_PROMETHEUS_PORT=9161\n", encoding="utf-8")
    assert load_prometheus_settings().ports == (9161, 9161)


@pytest.mark.parametrize(
    ("value", "expected"), [(0, (0, 0)), ("9150", (9150, 9150)), (" 9150-9150 ", (9150, 9150)), ("1-2", (1, 2))]
)
def test_port_forms(value, expected) -> None:
    assert parse_ports(value) == expected


@pytest.mark.parametrize("value", ["x", "9150-", "9151-9150", "70000", "-1", "0-5"])
def test_bad_ports_name_the_variable(monkeypatch, value) -> None:
    monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", value)
    with pytest.raises(ConfigError, match="NUVOM_PROMETHEUS_PORT"):
        load_prometheus_settings()


def test_bad_buckets_are_refused(monkeypatch) -> None:
    monkeypatch.setenv("NUVOM_PROMETHEUS_DURATION_BUCKETS", "[1, 0.5]")
    with pytest.raises(ConfigError, match="NUVOM_PROMETHEUS_DURATION_BUCKETS"):
        load_prometheus_settings()
    monkeypatch.setenv("NUVOM_PROMETHEUS_DURATION_BUCKETS", "[0.5, 1, 60]")
    assert load_prometheus_settings().prometheus_duration_buckets == [0.5, 1, 60]


def new_metrics(max_tasks: int = 500) -> tuple[CollectorRegistry, JobMetrics]:
    registry = CollectorRegistry()
    s = PrometheusSettings()
    return registry, JobMetrics(
        registry,
        max_tasks=max_tasks,
        duration_buckets=s.prometheus_duration_buckets,
        queue_wait_buckets=s.prometheus_queue_wait_buckets,
    )


def test_task_labels_are_bounded(caplog) -> None:
    registry, metrics = new_metrics(max_tasks=2)
    with caplog.at_level(logging.WARNING, logger="nuvom.prometheus"):
        for name in ("a", "b", "c", "d", "c"):
            metrics.job_finished(Job(func_name=name), "success", 0.01)
    tasks = {s.labels["task"] for fam in registry.collect() for s in fam.samples if "task" in s.labels}
    assert tasks == {"a", "b", OTHER_TASK}
    assert registry.get_sample_value("nuvom_jobs_finished_total", {"task": OTHER_TASK, "outcome": "success"}) == 3
    assert len([r for r in caplog.records if "NUVOM_PROMETHEUS_MAX_TASKS" in r.getMessage()]) == 1


def test_an_unknown_outcome_is_still_counted() -> None:
    registry, metrics = new_metrics()
    metrics.job_finished(Job(func_name="t"), "cancelled", 0.5)
    assert registry.get_sample_value("nuvom_jobs_finished_total", {"task": "t", "outcome": "cancelled"}) == 1


def test_queue_wait_never_negative() -> None:
    # A producer whose clock runs ahead of the worker's.
    registry, metrics = new_metrics()
    job = Job(func_name="t", created_at=2000.0)
    job.started_at = 1000.0
    metrics.job_started(job)
    assert registry.get_sample_value("nuvom_job_queue_wait_seconds_sum", {"task": "t"}) == 0


def test_a_failing_provider_does_not_break_the_scrape(caplog) -> None:
    registry, metrics = new_metrics()

    def provider() -> dict:
        raise RuntimeError("queue unreachable")

    registry.register(WorkerCollector(provider))
    metrics.job_finished(Job(func_name="t"), "success", 0.1)
    with caplog.at_level(logging.ERROR, logger="nuvom.prometheus"):
        text = generate_latest(registry).decode()
    assert 'nuvom_jobs_finished_total{outcome="success",task="t"} 1.0' in text
    assert "nuvom_worker_count" not in text
    assert any("worker's figures" in r.getMessage() for r in caplog.records)


def test_an_unreadable_queue_size_gives_no_sample() -> None:
    registry = CollectorRegistry()
    figures = {"worker_count": 4, "inflight_jobs": 1, "queue_size": -1, "started_at": None, "worker_id": "w"}
    registry.register(WorkerCollector(lambda: figures))
    assert registry.get_sample_value("nuvom_queue_size") is None
    assert registry.get_sample_value("nuvom_worker_count") == 4
    assert registry.get_sample_value("nuvom_worker_start_time_seconds") is None


def test_each_plugin_has_its_own_registry(prom) -> None:
    a = PrometheusPlugin(PrometheusSettings(prometheus_enabled=True, prometheus_port=0))
    b = PrometheusPlugin(PrometheusSettings(prometheus_enabled=True, prometheus_port=0))
    a.start(None, {})
    b.start(None, {})
    try:
        assert a.registry is not b.registry
        a.on_job_finished(Job(func_name="only_a"), "success", 0.1)
        assert "only_a" in prom.http_get(a.url)[2]
        assert "only_a" not in prom.http_get(b.url)[2]
    finally:
        a.stop()
        b.stop()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_serves_on_ipv6_loopback(prom) -> None:
    plugin = PrometheusPlugin(PrometheusSettings(prometheus_enabled=True, prometheus_host="::1", prometheus_port=0))
    plugin.start(None, {})
    try:
        assert plugin.url.startswith("http://[::1]:")
        assert prom.http_get(plugin.url)[0] == 200
    finally:
        plugin.stop()
