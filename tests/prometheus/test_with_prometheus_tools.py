"""The exposition checked by Prometheus' own tools: ``promtool check metrics``
and a real Prometheus server scraping the exporter on loopback.

Both need Debian's ``prometheus`` package (``apt-get install prometheus``),
which ships ``/usr/bin/prometheus`` and ``/usr/bin/promtool``; CI installs it.
Without the binaries these two tests are skipped, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom.errors import JobFailed
from nuvom.task import task

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

# promtool's linter wants no "_count" suffix on a gauge; nuvom_worker_count is
# the name nuvom users already know (and the seeds' name), kept on purpose.
KNOWN_LINT = ('nuvom_worker_count non-histogram and non-summary metrics should not have "_count" suffix',)


@task(name="prom_e2e_add")
def prom_e2e_add(a: int, b: int) -> int:
    return a + b


@task(name="prom_e2e_fail")
def prom_e2e_fail() -> None:
    raise ValueError("no")


def run_some_jobs() -> None:
    assert [j.get(timeout=5) for j in prom_e2e_add.map([(i, 1) for i in range(4)])] == [1, 2, 3, 4]
    for _ in range(2):
        with pytest.raises(JobFailed):
            prom_e2e_fail.delay().get(timeout=5)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_exposition(start_worker, enabled, prom) -> None:
    running = start_worker()
    run_some_jobs()
    body, samples = prom.scrape(running.url)
    assert prom.value(samples, "nuvom_jobs_finished_total", task="prom_e2e_fail", outcome="failure") == 2
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60, check=False
    )
    problems = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    unexpected = [p for p in problems if p not in KNOWN_LINT]
    assert not unexpected, f"promtool check metrics (exit {proc.returncode}):\n" + "\n".join(problems)
    # 0: clean; 3: lint findings only (all of them known, above). Anything else is a parse error.
    assert proc.returncode in (0, 3), problems


class PrometheusServer:
    def __init__(self, binary: str, workdir: Path, target: str, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 250ms\n"
            "  scrape_timeout: 200ms\n"
            "scrape_configs:\n"
            "  - job_name: nuvom\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n",
            encoding="utf-8",
        )
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]

    def get(self, path: str, **params: str) -> dict:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def prometheus_server(tmp_path: Path, prom) -> Iterator:
    servers: list[PrometheusServer] = []

    def start(target: str) -> PrometheusServer:
        assert PROMETHEUS is not None
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        server = PrometheusServer(PROMETHEUS, workdir, target, prom.free_port())
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def until(deadline: float, server: PrometheusServer, what: str, probe):
    """Call ``probe`` until it returns something truthy; fail with Prometheus' log at the deadline."""
    last: object = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            result = probe()
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # 503: not ready yet; anything else (a bad query) fails now
                pytest.fail(f"{exc.url}: {exc.code} {exc.read().decode(errors='replace')}")
            result, last = None, exc
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            result, last = None, exc
        else:
            last = result
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\nprometheus log:\n{server.log_tail()}")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: apt-get install prometheus)")
def test_a_real_prometheus_scrapes_the_exporter(start_worker, enabled, prometheus_server) -> None:
    running = start_worker()
    target = f"127.0.0.1:{running.plugin.port}"
    server = prometheus_server(target)
    deadline = time.monotonic() + 90

    def target_up() -> bool:
        targets = server.get("/api/v1/targets")["data"]["activeTargets"]
        return any(t["scrapeUrl"] == f"http://{target}/metrics" and t["health"] == "up" for t in targets)

    until(deadline, server, "the exporter's target to be up", target_up)
    run_some_jobs()

    def query(expr: str) -> dict[tuple, float]:
        body = server.get("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}

    def finished(task_name: str, outcome: str) -> float | None:
        rows = query(f'nuvom_jobs_finished_total{{task="{task_name}",outcome="{outcome}"}}')
        return next(iter(rows.values()), None)

    until(
        deadline,
        server,
        "Prometheus to have scraped the finished jobs",
        lambda: finished("prom_e2e_add", "success") == 4 and finished("prom_e2e_fail", "failure") == 2,
    )
    # The nuvom_jobs... series Prometheus stored, by name.
    series = server.get("/api/v1/series", **{"match[]": '{__name__=~"nuvom_jobs.*|nuvom_job_.*"}'})["data"]
    names = {s["__name__"] for s in series}
    assert {
        "nuvom_jobs_finished_total",
        "nuvom_job_duration_seconds_bucket",
        "nuvom_job_duration_seconds_count",
        "nuvom_job_queue_wait_seconds_bucket",
    } <= names
    assert all(s["job"] == "nuvom" and s["instance"] == target for s in series)
    # Histograms and gauges are usable in PromQL as such.
    p99 = query("histogram_quantile(0.99, sum by (le) (rate(nuvom_job_duration_seconds_bucket[1m])))")
    assert len(p99) == 1
    assert list(query(f'nuvom_worker_count{{instance="{target}"}}').values()) == [2.0]
    assert list(query(f'nuvom_queue_size{{instance="{target}"}}').values()) == [0.0]

    # Every query of the Grafana dashboard in docs/ is valid PromQL and finds data here.
    def dashboard_queries_answer() -> bool:
        empty = [expr for expr in dashboard_queries() if not query(expr)]
        if empty:
            print("dashboard queries with no data yet:", *empty, sep="\n")
        return not empty

    until(deadline, server, "every dashboard query to return data", dashboard_queries_answer)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [
        v["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    assert len(exprs) > 10
    values = {"$job": "nuvom", "$task": ".*", "$__rate_interval": "1m"}
    out = []
    for expr in exprs:
        for var, value in values.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        out.append(expr)
    return out
