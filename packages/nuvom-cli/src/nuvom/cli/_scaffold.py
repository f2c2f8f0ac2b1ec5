"""``nuvom plugin scaffold``: a ready-to-install third-party plugin distribution.

The result installs with ``pip install -e ./nuvom-NAME``, is found through an
entry point, passes ``nuvom plugin test nuvom_NAME.plugin`` and carries a
pytest test of its own. Two kinds:

``result_backend``
    a result backend storing each finished job as one file, found through the
    ``nuvom.result_backends`` entry-point group and selected with
    ``NUVOM_RESULT_BACKEND=NAME`` (no plugin object: choosing it loads the class);
``hooks``
    job lifecycle hooks (``before_job``, ``after_job``, ``on_error``,
    ``on_job_finished``) that count and log outcomes, run by every worker.

``--cli`` adds a ``nuvom NAME ...`` sub-command (entry-point group ``nuvom.cli``).
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

__all__ = ["KINDS", "scaffold"]

KINDS = ("result_backend", "hooks")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

_PYPROJECT = Template("""\
[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "$dist"
version = "0.1.0"
description = "$summary"
readme = "README.md"
requires-python = ">=3.10"
dependencies = [$dependencies]

[project.optional-dependencies]
test = ["pytest>=8"]

$entry_points
$cli_entry_point
[tool.hatch.build.targets.wheel]
packages = ["src/$package"]
""")

_CLI_ENTRY_POINT = Template("""
# `nuvom $name ...`: a sub-command added to the nuvom CLI (a typer.Typer app).
[project.entry-points."nuvom.cli"]
$name = "$package.cli:app"
""")

_README = Template("""\
# $dist

A [nuvom](https://pypi.org/project/nuvom-core/) plugin: $summary.

```bash
pip install -e .                      # nuvom finds it through its entry point
nuvom plugin test $package.plugin     # load, check the contract, run start/stop
nuvom plugin status                   # listed, with its source and state
pip install -e '.[test]' && pytest    # its own tests
```
$usage""")

_USAGE = {
    "result_backend": Template("""
Use it by selecting the backend (environment or `.env`):

```bash
NUVOM_RESULT_BACKEND=$name nuvom runworker
```

Finished jobs are written to `$$NUVOM_DATA_DIR/$name/` (default `.nuvom/$name/`), one file per job.
"""),
    "hooks": Template("""
Every worker started after installation calls its hooks for every job and logs a summary
on shutdown. To enable it for one project only instead, uninstall it and list it in
`.nuvom_plugins.toml`:

```toml
[plugins]
hooks = ["$package.plugin:$cls"]
```
"""),
}

_INIT = Template('''\
"""$summary"""

from $package.plugin import $cls

__all__ = ["$cls"]
''')

_ENTRY_POINTS = {
    "result_backend": Template("""\
# nuvom finds backends by role: the entry name is the value of NUVOM_RESULT_BACKEND,
# the value names the class. Choosing the backend loads it; nothing else runs.
[project.entry-points."nuvom.result_backends"]
$name = "$package.plugin:$cls"
"""),
    "hooks": Template("""\
# nuvom finds plugins with a lifecycle through this group: the value names the Plugin class.
[project.entry-points.nuvom]
$name = "$package.plugin:$cls"
"""),
}

_PLUGIN_RESULT_BACKEND = Template('''\
"""A result backend that keeps each finished job in a file of its own.

Found through the ``nuvom.result_backends`` entry point ``$name``:
``NUVOM_RESULT_BACKEND=$name`` selects it, and nuvom then builds
``$cls(settings)``. It implements the contract of
:class:`nuvom.plugins.contracts.BaseResultBackend`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from nuvom.config import Settings
from nuvom.job import Job, JobStatus, validate_job_id
from nuvom.plugins.contracts import BaseResultBackend


class $cls(BaseResultBackend):
    """One msgpack file per finished job under ``<NUVOM_DATA_DIR>/$name/``."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        data_dir = Path(settings.data_dir) if settings is not None else Path(".nuvom")
        self.root = data_dir / "$name"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str) -> Path:
        return self.root / f"{validate_job_id(job_id)}.job"

    def store(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            # Write then rename: a reader never sees half a record.
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(job.to_bytes())
            os.replace(tmp, self._path(job.id))

    def get_full(self, job_id: str) -> Job | None:
        try:
            return Job.from_bytes(self._path(job_id).read_bytes())
        except FileNotFoundError:
            return None

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        wanted = None if status is None else JobStatus(str(getattr(status, "value", status)).upper())
        jobs = []
        for path in self.root.glob("*.job"):
            try:
                job = Job.from_bytes(path.read_bytes())
            except (OSError, ValueError):
                continue  # removed or being replaced meanwhile
            if (wanted is None or job.status is wanted) and (task is None or job.func_name == task):
                jobs.append(job)
        jobs.sort(key=lambda j: j.finished_at or 0.0, reverse=True)
        return jobs[:limit]
''')

_PLUGIN_HOOKS = Template('''\
"""Job lifecycle hooks that count outcomes and log a summary.

A plugin that provides ``hooks`` is started by workers only (never in a process
that merely queues jobs). Hooks run in the worker thread of the job; one that
raises is logged and ignored, it never fails the job.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from nuvom.config import Settings
from nuvom.job import Job
from nuvom.plugins.contracts import API_VERSION, Plugin

log = logging.getLogger("nuvom.plugins.$name")


class $cls(Plugin):
    api_version = API_VERSION
    name = "$name"
    provides = ["hooks"]

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def start(self, settings: Settings, extras: dict[str, Any] | None = None) -> None:
        log.info("$name hooks active")

    def before_job(self, job: Job) -> None:
        log.debug("starting %s (%s), attempt %d", job.id, job.func_name, job.attempts)

    def after_job(self, job: Job, result: Any) -> None:
        log.debug("%s returned %r", job.id, result)

    def on_error(self, job: Job, error: BaseException) -> None:
        log.warning("%s (%s) raised %s: %s", job.id, job.func_name, type(error).__name__, error)

    def on_job_finished(self, job: Job, outcome: str, duration: float) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def stop(self) -> None:
        log.info("$name: %s", dict(self.outcomes) or "no jobs")
''')

_CLI = Template('''\
"""`nuvom $name ...`: commands this plugin adds to the nuvom CLI.

Found through the ``nuvom.cli`` entry-point group; keep imports inside the
commands so that ``nuvom --help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Commands of the $name plugin.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """Commands of the $name plugin."""


@app.command()
def info() -> None:
    """Say which plugin this is.

    Example: nuvom $name info
    """
    from $package.plugin import $cls

    summary = ($cls.__doc__ or "a nuvom plugin").strip().splitlines()[0]
    typer.echo(f"$name: {summary}")
''')

_TEST_RESULT_BACKEND = Template("""\
from __future__ import annotations

import time
from importlib.metadata import entry_points

from nuvom.config import load_settings
from nuvom.job import Job, JobStatus

from $package.plugin import $cls


def test_entry_point_names_the_backend():
    eps = {ep.name: ep for ep in entry_points(group="nuvom.result_backends")}
    assert eps["$name"].load() is $cls


def test_backend_stores_and_reads_back_jobs(tmp_path):
    backend = $cls(load_settings(data_dir=tmp_path))
    job = Job(func_name="add", args=[1, 2], status=JobStatus.SUCCESS, result=3, finished_at=time.time())
    backend.store([job])
    assert backend.get_full(job.id).result == 3
    assert [j.id for j in backend.list_jobs(status="SUCCESS")] == [job.id]
    assert backend.get_full("0" * 32) is None
""")

_TEST_HOOKS = Template("""\
from __future__ import annotations

from nuvom.config import load_settings
from nuvom.job import Job
from nuvom.plugins.contracts import API_VERSION, Plugin

from $package.plugin import $cls


def test_plugin_fulfils_the_contract():
    assert issubclass($cls, Plugin) and $cls.api_version.split(".")[0] == API_VERSION.split(".")[0]


def test_hooks_count_outcomes(tmp_path):
    plugin = $cls()
    plugin.start(load_settings(data_dir=tmp_path), {})
    job = Job(func_name="add", args=[1, 2])
    plugin.before_job(job)
    plugin.after_job(job, 3)
    plugin.on_job_finished(job, "success", 0.01)
    plugin.on_error(job, RuntimeError("boom"))
    plugin.on_job_finished(job, "failure", 0.01)
    plugin.stop()
    assert plugin.outcomes == {"success": 1, "failure": 1}
""")


def _core_requirement() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"nuvom-core>={version('nuvom-core')}"
    except PackageNotFoundError:  # pragma: no cover
        return "nuvom-core"


def validate_name(name: str) -> str:
    normal = name.strip().lower().replace("-", "_")
    if not _NAME.fullmatch(normal):
        raise ValueError(
            f"{name!r} is not a usable plugin name: start with a letter, then letters, digits, '-' or '_' (at most 40)"
        )
    return normal


def scaffold(
    name: str, directory: Path, *, kind: str = "result_backend", cli: bool = False, force: bool = False
) -> list[Path]:
    """Write the distribution into ``directory`` (created) and return the files written."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    name = validate_name(name)
    camel = "".join(part.capitalize() for part in name.split("_"))
    package = f"nuvom_{name}"
    values = {
        "name": name,
        "camel": camel,
        "cls": f"{camel}ResultBackend" if kind == "result_backend" else f"{camel}Plugin",
        "package": package,
        "dist": f"nuvom-{name.replace('_', '-')}",
        "summary": {
            "result_backend": f"a file-per-job result backend named {name!r}",
            "hooks": f"job lifecycle hooks ({name!r}) that count and log outcomes",
        }[kind],
    }
    dependencies = [_core_requirement()] + (["typer>=0.15"] if cli else [])
    values["dependencies"] = ", ".join(f'"{d}"' for d in dependencies)
    values["cli_entry_point"] = _CLI_ENTRY_POINT.substitute(values) if cli else ""
    values["entry_points"] = _ENTRY_POINTS[kind].substitute(values)
    values["usage"] = _USAGE[kind].substitute(values) + (
        f"\nIt also adds `nuvom {name} info` to the nuvom command line.\n" if cli else ""
    )
    files = {
        Path("pyproject.toml"): _PYPROJECT.substitute(values),
        Path("README.md"): _README.substitute(values),
        Path("src", package, "__init__.py"): _INIT.substitute(values),
        Path("src", package, "py.typed"): "",
        Path("src", package, "plugin.py"): (
            _PLUGIN_RESULT_BACKEND if kind == "result_backend" else _PLUGIN_HOOKS
        ).substitute(values),
        Path("tests", "test_plugin.py"): (_TEST_RESULT_BACKEND if kind == "result_backend" else _TEST_HOOKS).substitute(
            values
        ),
    }
    if cli:
        files[Path("src", package, "cli.py")] = _CLI.substitute(values)
    if directory.exists() and any(directory.iterdir()) and not force:
        raise FileExistsError(f"{directory} exists and is not empty; pick another --dir or pass --force")
    written = []
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
