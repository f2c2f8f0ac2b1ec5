"""Fixtures for the CLI tests.

Two ways to drive ``nuvom``:

* :func:`run_nuvom` runs the real console script in a subprocess, with the
  test's directory as working directory and a data dir under it; durable
  backends (file, or sqlite when installed) let separate processes share jobs.
* the ``cli`` fixture uses typer's ``CliRunner`` in this process, for output
  formats and error cases; in-process memory backends are preinstalled with
  ``set_backends`` so that records can be put in place directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nuvom.backends import set_backends
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.registry import get_registry
from nuvom.testing import reset_process_state

TASKS_PY = textwrap.dedent(
    """
    from nuvom.task import task


    @task(tags=["math"], description="Add two numbers")
    def add(x, y):
        return x + y


    @task(retries=1, retry_delay_secs=0)
    def boom(message="boom"):
        raise RuntimeError(message)
    """
)


def _reset() -> None:
    reset_process_state()
    get_registry().clear()
    from nuvom.cli._errors import options

    options.debug = False


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a subprocess: no inherited NUVOM_* or PYTHONPATH
    (the project must import without it), data under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_") and k != "PYTHONPATH"}
    env.update({"NUVOM_DATA_DIR": str(tmp_path / ".nuvom"), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("NUVOM_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NUVOM_DATA_DIR", str(tmp_path / ".nuvom"))
    monkeypatch.setenv("COLUMNS", "200")
    saved_path = list(sys.path)
    _reset()
    yield tmp_path
    _reset()
    # Commands put the project on sys.path and import its modules: forget both.
    sys.path[:] = saved_path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with a tasks.py."""
    (tmp_path / "tasks.py").write_text(TASKS_PY, encoding="utf-8")
    return tmp_path


# -- in-process: CliRunner -------------------------------------------------------
@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


class Cli:
    def __init__(self) -> None:
        from typer.testing import CliRunner

        try:
            self.runner = CliRunner(mix_stderr=False)  # click < 8.2
        except TypeError:
            self.runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Outcome:
        from nuvom.cli import app

        result = self.runner.invoke(app, list(args), env=env, catch_exceptions=True)
        exc = result.exception if not isinstance(result.exception, SystemExit) else None
        return Outcome(result.exit_code, result.stdout, result.stderr, exc)


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def mem() -> tuple[MemoryJobQueue, MemoryResultBackend]:
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    set_backends(queue, results)
    return queue, results


# -- subprocesses: the real console script ---------------------------------------------
def nuvom_command() -> list[str]:
    script = Path(sys.executable).with_name("nuvom")
    if script.exists():
        return [str(script)]
    found = shutil.which("nuvom")
    return [found] if found else [sys.executable, "-m", "nuvom.cli"]


def run_nuvom(
    args: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*nuvom_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_python(code: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a separate Python process (a producer, a reader)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def installed_backends() -> list[str]:
    from nuvom.backends import installed_backend_names

    return installed_backend_names("queue")


@pytest.fixture(params=["file", "sqlite"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Subprocess environment selecting a backend shared between processes:
    core's file backend, and nuvom-sqlite's when it is installed."""
    name = request.param
    if name not in installed_backends():
        why = "nuvom-sqlite is not installed" if name == "sqlite" else "core has no file backend"
        pytest.skip(f"the {name} backend is not available ({why})")
    return clean_env(tmp_path, NUVOM_QUEUE_BACKEND=name, NUVOM_RESULT_BACKEND=name)


class Background:
    """A running ``nuvom`` process whose stderr is read line by line."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*nuvom_command(), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        """Block until ``text`` appears on stderr (fails if the process ends first)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while text not in "".join(self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{text!r} not seen on stderr; got:\n{''.join(self.lines)}")
                self._cond.wait(min(remaining, 0.5))

    def stop(self, sig: int, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def background() -> Iterator[Any]:
    started: list[Background] = []

    def start(args: Sequence[str], cwd: Path, env: dict[str, str]) -> Background:
        bg = Background(args, cwd, env)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.kill()


@pytest.fixture
def nuvom() -> Any:
    """``nuvom(args, cwd, env)``: run the console script in a subprocess."""
    return run_nuvom


@pytest.fixture
def nuvom_script() -> list[str]:
    """The command line that runs the console script."""
    return nuvom_command()


@pytest.fixture
def python() -> Any:
    """``python(code, cwd, env)``: run code in a separate Python process."""
    return run_python


@pytest.fixture
def env_for() -> Any:
    """``env_for(tmp_path, **vars)``: a clean subprocess environment."""
    return clean_env
