"""Fixtures for the exporter's tests: each test in its own directory, fresh
process-wide nuvom state, memory backends, and workers whose plugins come from
a fresh app's plugin manager (so the exporter is found through its entry point)."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nuvom.app import App, default_app
from nuvom.backends import set_backends
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.plugins._loader import PluginManager
from nuvom.prometheus import PrometheusPlugin
from nuvom.testing import reset_process_state
from nuvom.worker import Worker
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("NUVOM_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("NUVOM_DATA_DIR", str(tmp_path / ".nuvom"))
    reset_process_state()
    yield tmp_path
    reset_process_state()


@pytest.fixture
def mem() -> tuple[MemoryJobQueue, MemoryResultBackend]:
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    set_backends(queue, results)
    return queue, results


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enable the exporter by configuration, on any free loopback port."""
    monkeypatch.setenv("NUVOM_PROMETHEUS_ENABLED", "true")
    monkeypatch.setenv("NUVOM_PROMETHEUS_PORT", "0")


class Running:
    def __init__(self, worker: Worker, manager: PluginManager) -> None:
        self.worker = worker
        self.manager = manager

    @property
    def record(self) -> Any:
        return next(r for r in self.manager.records if r.name == "prometheus")

    @property
    def plugin(self) -> PrometheusPlugin:
        plugin = self.record.plugin
        assert isinstance(plugin, PrometheusPlugin)
        return plugin

    @property
    def url(self) -> str:
        url = self.plugin.url
        assert url is not None, f"the exporter is not serving: {self.plugin.error}"
        return url


@pytest.fixture
def start_worker(mem: tuple[MemoryJobQueue, MemoryResultBackend], tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start a real Worker on the memory backends; stopped at the end of the test."""
    started: list[Worker] = []

    def start(**kwargs: Any) -> Running:
        queue, results = mem
        shared = default_app()
        app = App(shared.settings, registry=shared.registry, hooks=shared.hooks, project_dir=tmp_path)
        manager = app.plugins
        kwargs.setdefault("max_workers", 2)
        worker = Worker(app=app, queue=queue, results=results, **kwargs)
        worker.start()
        started.append(worker)
        return Running(worker, manager)

    yield start
    for worker in started:
        worker.stop(grace=5)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode("utf-8")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(url: str) -> tuple[str, Samples]:
    status, headers, body = http_get(url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain"), headers
    return body, parse(body)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prom() -> SimpleNamespace:
    """The helpers above (test modules cannot import conftest in importlib mode)."""
    return SimpleNamespace(http_get=http_get, parse=parse, scrape=scrape, value=value, free_port=free_port)
