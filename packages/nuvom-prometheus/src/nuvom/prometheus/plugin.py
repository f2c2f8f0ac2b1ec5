"""The plugin core's loader finds through the ``nuvom`` entry-point group."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, ClassVar

from nuvom.job import Job
from nuvom.plugins.contracts import API_VERSION, Plugin
from nuvom.prometheus.metrics import JobMetrics, QueueCollector, WorkerCollector
from nuvom.prometheus.server import MetricsServer, PortUnavailable
from nuvom.prometheus.settings import PrometheusSettings, load_prometheus_settings
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["PrometheusPlugin"]

log = logging.getLogger("nuvom.prometheus")


def _nuvom_version() -> str:
    try:
        return version("nuvom-core")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class PrometheusPlugin(Plugin):
    """Exports a worker's metrics for Prometheus.

    Started by every worker (never by a producer: it provides only worker
    roles), but it serves only when enabled: ``NUVOM_PROMETHEUS_ENABLED=true``,
    or listed in ``.nuvom_plugins.toml``::

        [plugins]
        prometheus = ["nuvom.prometheus:PrometheusPlugin"]

    Disabled, it opens no port, starts no thread and sets ``hooks_enabled`` to
    ``False`` so the worker calls none of its hooks. A port already in use is
    logged as an error on the ``nuvom.prometheus`` logger and the worker runs
    its jobs without an exporter (:attr:`error` says why).

    Tests and apps may pass ``settings`` instead of using the environment.
    """

    api_version: ClassVar[str] = API_VERSION
    name: ClassVar[str] = "prometheus"
    provides: ClassVar[list[str]] = ["metrics", "exporter"]
    settings_class: ClassVar[type[PrometheusSettings]] = PrometheusSettings

    def __init__(self, settings: PrometheusSettings | None = None) -> None:
        self._given_settings = settings
        self.settings: PrometheusSettings | None = None
        #: The plugin's own registry: several workers (or tests) in one process never collide.
        self.registry: CollectorRegistry | None = None
        self.server: MetricsServer | None = None
        #: Why the exporter is not serving although enabled (port in use...), else None.
        self.error: str | None = None
        #: Read by core after start(): False means "call none of my hooks".
        self.hooks_enabled = False
        self._metrics: JobMetrics | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self, settings: Settings | None = None, extras: dict[str, Any] | None = None) -> None:
        if self.server is not None:
            return  # already serving
        extras = extras or {}
        cfg = self._given_settings or load_prometheus_settings()
        self.settings = cfg
        if not (cfg.prometheus_enabled or extras.get("enabled_in_file")):
            log.debug("prometheus exporter installed but not enabled (NUVOM_PROMETHEUS_ENABLED or .nuvom_plugins.toml)")
            return
        registry = CollectorRegistry()
        metrics = JobMetrics(
            registry,
            max_tasks=cfg.prometheus_max_tasks,
            duration_buckets=cfg.prometheus_duration_buckets,
            queue_wait_buckets=cfg.prometheus_queue_wait_buckets,
        )
        task_registry = extras.get("registry")

        def add_known_tasks() -> None:
            # At every scrape, not only now: the worker's tasks are registered by other
            # plugins (the manifest's by nuvom-discovery, started after or before this
            # one) and by `runworker --dev` as files change.
            if task_registry is not None:
                try:
                    metrics.add_tasks(task_registry.names())
                except Exception:
                    log.debug("could not list registered tasks", exc_info=True)

        add_known_tasks()
        provider = extras.get("metrics_provider")
        if provider is not None:
            registry.register(WorkerCollector(provider, version=_nuvom_version()))
        worker = extras.get("worker")
        queue = getattr(worker, "queue", None)
        if queue is not None:
            registry.register(QueueCollector(queue.queue_counts))
        title = f"worker {getattr(worker, 'worker_id', '')}".strip()
        try:
            server = MetricsServer.bind(
                cfg.prometheus_host, cfg.ports, registry, title=title, before_scrape=add_known_tasks
            )
        except PortUnavailable as exc:
            self.error = exc.strerror or str(exc)
            log.error("prometheus exporter not started: %s; the worker runs jobs without it", self.error)
            return
        server.start()
        self.registry, self.server, self._metrics = registry, server, metrics
        self.error = None
        self.hooks_enabled = True
        log.info("prometheus exporter serving %s", server.url)

    def stop(self) -> None:
        self.hooks_enabled = False
        self._metrics = None
        server, self.server = self.server, None
        if server is not None:
            server.stop()
            log.info("prometheus exporter on port %d stopped", server.port)

    # -- where it serves ------------------------------------------------------
    @property
    def port(self) -> int | None:
        """The bound port (useful with a range or port 0), or None when not serving."""
        return self.server.port if self.server is not None else None

    @property
    def url(self) -> str | None:
        """``http://host:port/metrics``, or None when not serving."""
        return self.server.url if self.server is not None else None

    # -- job hooks (called by the worker for every attempt) ---------------------
    def before_job(self, job: Job) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.job_started(job)

    def on_job_finished(self, job: Job, outcome: str, duration: float) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.job_finished(job, outcome, duration)
