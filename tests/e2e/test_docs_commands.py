"""Every code block of README.md and docs/*.md marked runnable runs as written.

A block is marked by an HTML comment on the line before its opening fence::

    <!-- runnable -->
    ```bash
    nuvom discover tasks
    ```

Each block runs in a project of its own (a fresh directory and ``NUVOM_DATA_DIR``)
that holds the README quickstart's ``tasks.py`` (the README block marked
``runnable: file``), with the installed ``nuvom`` and ``python`` first on ``PATH``:

* ``bash``: the block is one ``bash -e`` script and must exit 0;
* ``python``: the block is one Python script and must exit 0;
* ``env``: the block is the project's ``.env``; ``nuvom config`` must accept it and
  report each value as read from ``.env``.

Options after the colon, space separated:

* ``file``: a ``python`` block whose first line is ``# NAME.py`` is that file, written
  into every project of its document (the README's ``tasks.py`` into every project);
* ``worker``: the block's last line is a process that serves until stopped (``nuvom
  runworker``): it must log that it started, then stop on SIGTERM with exit 0;
* ``with-worker``: a ``nuvom runworker`` serves the project while the block runs.

``<job_id>`` in a block is replaced by the id of a failed job of the quickstart's
``add`` stored in the project beforehand (``add("x", 2)`` run for real).

Blocks left unmarked install packages, run benchmarks, need a server elsewhere
(Redis, a browser) or show a synopsis with placeholders (``[--format table|json]``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^\s*<!--\s*runnable(?::\s*(?P<options>[a-z -]*?))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\w*)\s*$")
OPTIONS = {"file", "worker", "with-worker"}
LANGS = {"bash", "python", "env"}
TIMEOUT = 120.0

FAILED_JOB = """
import time
from nuvom.app import default_app
from nuvom.job import Job

app = default_app()
job = Job(func_name="add", task_path="tasks:add", args=["x", 2])
app.run_locally(job, retries=False)
assert job.status.value == "FAILED", job.status
app.results.store([job])
print(job.id)
"""


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence
    lang: str
    options: frozenset[str]
    text: str

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(REPO).as_posix()}:{self.line}"


def marked_blocks(document: Path, root: Path = REPO) -> list[Block]:
    lines = document.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        marker = MARKER.match(line)
        if marker is None:
            continue
        options = frozenset((marker.group("options") or "").split())
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        where = f"{document.relative_to(root)}:{i + 1}"
        assert fence is not None, f"{where}: a runnable marker must be the line just before a code block's fence"
        assert options <= OPTIONS, f"{where}: unknown option(s) {sorted(options - OPTIONS)}"
        assert fence.group("lang") in LANGS, f"{where}: runnable blocks are {sorted(LANGS)}"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip().startswith("```"))
        text = textwrap.dedent("\n".join(lines[i + 2 : end])) + "\n"
        blocks.append(Block(document, i + 2, fence.group("lang"), options, text))
    return blocks


ALL_BLOCKS = [b for d in DOCUMENTS for b in marked_blocks(d)]


def _files_for(document: Path) -> dict[str, str]:
    """The ``file`` blocks a project of ``document`` holds: the README's, then its own."""
    out: dict[str, str] = {}
    for block in ALL_BLOCKS:
        if "file" in block.options and block.document in (REPO / "README.md", document):
            first = block.text.splitlines()[0]
            name = re.fullmatch(r"#\s*(\S+\.py)\s*", first)
            assert name is not None, f"{block.id}: a file block starts with `# NAME.py`"
            out[name.group(1)] = block.text
    return out


class Serving:
    """A long-running command whose stderr is read as it comes."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.output: list[str] = []
        self._seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.output.append(line)
            if "started" in line:
                self._seen.set()
        self._seen.set()

    def wait_started(self) -> None:
        assert self._seen.wait(TIMEOUT), "no start line on stderr"
        assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{''.join(self.output)}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(TIMEOUT)
        self._reader.join(10)
        assert code == 0, f"exited {code} on SIGTERM:\n{''.join(self.output)}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class Project:
    def __init__(self, root: Path, document: Path) -> None:
        self.root = root
        root.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_") and k != "PYTHONPATH"}
        bin_dir = str(Path(sys.executable).parent)
        self.env.update(
            NUVOM_DATA_DIR=str(root / ".nuvom"),
            NO_COLOR="1",
            COLUMNS="200",
            PATH=bin_dir + os.pathsep + self.env.get("PATH", ""),
        )
        for name, text in _files_for(document).items():
            (root / name).write_text(text, encoding="utf-8")
        self.serving: list[Serving] = []

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.root, env=self.env, text=True, capture_output=True, timeout=TIMEOUT)

    def serve(self, argv: list[str]) -> Serving:
        serving = Serving(argv, self.root, self.env)
        self.serving.append(serving)
        serving.wait_started()
        return serving

    def failed_job(self) -> str:
        made = self.run([sys.executable, "-c", FAILED_JOB])
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()


def _last_command(script: str) -> tuple[str, str]:
    lines = script.rstrip("\n").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines[:-1]), lines[-1]


def _check(done: subprocess.CompletedProcess[str], block: Block) -> None:
    assert done.returncode == 0, f"{block.id} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr


def run_block(block: Block, project: Project) -> None:
    text = block.text
    if "<job_id>" in text:
        text = text.replace("<job_id>", project.failed_job())
    worker = project.serve(["nuvom", "runworker"]) if "with-worker" in block.options else None
    if block.lang == "bash" and "worker" in block.options:
        # One shell, so that the lines before the serving one (an `export`) apply to it.
        script, last = _last_command(text)
        project.serve(["bash", "-e", "-c", f"{script}\nexec {last}"]).stop()
    elif block.lang == "bash":
        _check(project.run(["bash", "-e", "-c", text]), block)
    elif block.lang == "python":
        if "file" in block.options:
            _check(project.run([sys.executable, "-c", "import " + Path(text.split()[1]).stem]), block)
        else:
            _check(project.run([sys.executable, "-c", text]), block)
    else:
        (project.root / ".env").write_text(text, encoding="utf-8")
        done = project.run(["nuvom", "config", "--format", "json"])
        _check(done, block)
        settings = json.loads(done.stdout)["settings"]
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                name, _, value = line.partition("=")
                assert settings[name]["source"] == ".env", (name, settings[name])
                read = settings[name]["value"]
                assert (float(value) == read) if isinstance(read, (int, float)) else (str(read) == value), (name, read)
    if worker is not None:
        worker.stop()


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_a_runnable_block_of_the_docs_runs_as_written(block: Block, tmp_path: Path) -> None:
    project = Project(tmp_path / "project", block.document)
    try:
        run_block(block, project)
    finally:
        for serving in project.serving:
            serving.kill()


def test_the_readme_quickstart_and_the_main_docs_have_runnable_blocks() -> None:
    marked = {b.document.name for b in ALL_BLOCKS}
    assert {"README.md", "cli.md", "configuration.md", "scheduling.md"} <= marked, marked
    assert any("file" in b.options and b.document.name == "README.md" for b in ALL_BLOCKS)


def test_a_marker_without_a_code_block_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- runnable -->\ntext, not a fence\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="just before a code block"):
        marked_blocks(doc, tmp_path)
