"""Prometheus exporter for nuvom workers.

Enable it with ``NUVOM_PROMETHEUS_ENABLED=true`` (or list
``nuvom.prometheus:PrometheusPlugin`` in ``.nuvom_plugins.toml``); each worker
then serves ``http://127.0.0.1:9150/metrics``. See docs/prometheus.md.
"""

from nuvom.prometheus.metrics import OTHER_TASK, OUTCOMES, JobMetrics, WorkerCollector
from nuvom.prometheus.plugin import PrometheusPlugin
from nuvom.prometheus.server import MetricsServer, PortUnavailable
from nuvom.prometheus.settings import PrometheusSettings, load_prometheus_settings

__all__ = [
    "OTHER_TASK",
    "OUTCOMES",
    "JobMetrics",
    "MetricsServer",
    "PortUnavailable",
    "PrometheusPlugin",
    "PrometheusSettings",
    "WorkerCollector",
    "load_prometheus_settings",
]
