"""End-to-end: the product as a user meets it. Every step is a real process:
the `nuvom` console script, `python` producers, worker processes killed with
real signals. Each test has its own project directory and data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ["sqlite", "file"]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)  # polling interval between checks of a real condition


class Project:
    """A user's project directory, and the commands a user would type in it."""

    def __init__(self, root: Path, backend: str | None) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_") and k != "PYTHONPATH"}
        self.env.update({"NUVOM_DATA_DIR": str(root / ".nuvom"), "NO_COLOR": "1", "COLUMNS": "200"})
        if backend is not None:
            self.env["NUVOM_QUEUE_BACKEND"] = backend
            self.env["NUVOM_RESULT_BACKEND"] = backend
        self.workers: list[subprocess.Popen[str]] = []
        self._logs: dict[int, Path] = {}

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def nuvom(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*_nuvom_command(), *args], cwd=self.root, env=self.env, text=True, capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"nuvom {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def nuvom_json(self, *args: str) -> Any:
        return json.loads(self.nuvom(*args, "--format", "json").stdout)

    def python(
        self, code: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=self.root,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"python exited {proc.returncode}: {proc.stderr}")
        return proc

    def start_worker(self, *args: str) -> subprocess.Popen[str]:
        # Its output goes to a file, read when it stops: a pipe nobody reads
        # while it runs fills up, and a worker that logs (every retry does)
        # would then block on its next line.
        log = self.root / f"worker-{len(self.workers)}.log"
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(
                [*_nuvom_command(), "runworker", *args],
                cwd=self.root,
                env=self.env,
                text=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(proc)
        self._logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen[str]) -> str:
        """What a worker started here has written so far."""
        return self._logs[proc.pid].read_text(encoding="utf-8", errors="replace")

    def stop_worker(
        self, proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 60
    ) -> tuple[int, str]:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
        return proc.returncode, self.output(proc)

    def records(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each job's current record (finished or queued), read by a separate process."""
        code = """
            import json, sys
            from nuvom.sdk import get_job
            out = {}
            for i in json.load(sys.stdin):
                job = get_job(i)
                out[i] = None if job is None else job.model_dump(mode="json")
            print(json.dumps(out))
        """
        return json.loads(self.python(code, input=json.dumps(ids)).stdout)

    def cleanup(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
                if proc.pid in self._logs:  # shown by pytest for a failed test: what the worker said
                    print(f"--- worker {proc.pid} output ---\n{self.output(proc)}")


def _nuvom_command() -> list[str]:
    script = Path(sys.executable).with_name("nuvom")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nuvom.cli"]


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[Callable[[str | None], Project]]:
    made: list[Project] = []

    def make(backend: str | None) -> Project:
        project = Project(tmp_path, backend)
        made.append(project)
        return project

    yield make
    for project in made:
        project.cleanup()


def count_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    return wait_for
