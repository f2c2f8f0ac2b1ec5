"""Fixtures for nuvom-dashboard: a fresh data dir and nuvom state per test,
real worker processes and a real dashboard server (``python -m nuvom.dashboard``:
nothing but nuvom-dashboard and its dependencies needed) on a free loopback
port, each started by the test that needs it and stopped by its PID.

The store is core's file backend, shared by every process of a test: the tests
need no other distribution installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nuvom.testing import reset_process_state

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = os.environ.get("NUVOM_DASHBOARD_SCREENSHOTS") == "1"

TASKS = """
import time
from pathlib import Path

from nuvom.task import task


@task
def work(i, secs=0.0):
    time.sleep(secs)
    return i * 2


@task
def fragile(marker):
    # Fails until the marker file exists: the cause is fixed, then the job is retried.
    if not Path(marker).exists():
        raise RuntimeError("the marker is missing")
    return "fixed"


@task
def echo(value):
    return value


@task
def patient(release):
    # Runs until cancelled (it looks at its job's flag) or the file `release` exists.
    from nuvom.job import current_job

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not current_job().cancelled and not Path(release).exists():
        time.sleep(0.02)
    return "released"
"""

WORKER = (
    "import os, pathlib, tasks; from nuvom.worker import Worker; "
    "w = Worker(max_workers={threads}, executor={executor!r}, processes=2); w.start(); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); w.run_forever()"
)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
DASH = "\u2013"  # what a page shows for "no value"


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; the test goes on the
    moment the condition holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def reload_until(page: Any, check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Reload ``page`` until ``check()`` holds (``page.reload() or check()`` would
    not wait: reload returns the response, which is truthy)."""

    def probe() -> Any:
        page.reload()
        return check()

    return wait_until(probe, timeout, what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("NUVOM_") and var != "NUVOM_DASHBOARD_SCREENSHOTS":
            monkeypatch.delenv(var)
    monkeypatch.setenv("NUVOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NUVOM_QUEUE_BACKEND", "file")
    monkeypatch.setenv("NUVOM_RESULT_BACKEND", "file")
    reset_process_state()
    yield tmp_path
    reset_process_state()


class Project:
    """A project directory with tasks.py, worker processes and a dashboard server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tasks.py").write_text(TASKS)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = ""
        self.port = 0
        #: The store every process of the project uses (NUVOM_QUEUE_BACKEND and NUVOM_RESULT_BACKEND).
        self.store = "file"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env.update(
            NUVOM_QUEUE_BACKEND=self.store,
            NUVOM_RESULT_BACKEND=self.store,
            NUVOM_DATA_DIR=str(self.root / "data"),
            NUVOM_LOG_LEVEL="WARNING",
            PYTHONPATH=str(self.root),
        )
        env.update(extra)
        return env

    def python(self, code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def start_worker(self, threads: int = 2, executor: str = "thread", **env: str) -> subprocess.Popen[bytes]:
        before = set(self.root.glob("ready-*"))
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER.format(threads=threads, executor=executor)],
            cwd=self.root,
            env=self.env(**env),
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"worker-{len(self.procs)}.err", "wb"),
        )
        self.procs.append(proc)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}")
            return bool(set(self.root.glob("ready-*")) - before)

        wait_until(ready, 60, "worker ready")
        return proc

    def start_dashboard(self, *args: str, command: tuple[str, ...] = ("nuvom.dashboard",), **env: str) -> str:
        """Serve the dashboard (``python -m nuvom.dashboard``, or ``command`` such as
        ``("nuvom.cli", "dashboard")``) and wait until it answers."""
        port = free_port()
        self.port = port
        proc = subprocess.Popen(
            [sys.executable, "-m", *command, "--port", str(port), *args],
            cwd=self.root,
            env=self.env(**env),
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "dashboard.err", "wb"),
        )
        self.procs.append(proc)
        self.url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"dashboard exited: {(self.root / 'dashboard.err').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/static/dashboard.css", timeout=2) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(up, 60, "dashboard serving")
        return self.url

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    yield p
    p.stop()


# -- a real headless Chromium (Debian's; no `playwright install`) -----------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    p = context.new_page()
    p.set_default_timeout(30_000)
    dialogs: list[str] = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p.dialogs = dialogs
    yield p
    context.close()


def shot(page: Any, name: str) -> None:
    """With NUVOM_DASHBOARD_SCREENSHOTS=1, save the page to docs/images/dashboard-NAME.png at 1400x900."""
    if SCREENSHOTS:
        out = REPO / "docs" / "images" / f"dashboard-{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size(VIEWPORT)
        page.screenshot(path=str(out))


def queue_jobs(project: Project, code: str) -> list[str]:
    """Run ``code`` in a producer process of ``project`` (``json`` and ``tasks``
    imported); it prints a JSON list of job ids."""
    return list(json.loads(project.python(f"import json, tasks\n{code}")))
