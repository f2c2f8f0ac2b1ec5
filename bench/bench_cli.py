"""Start-up time of the ``nuvom`` command, beside the earlier nuvom 0.11.2.

    python bench/bench_cli.py                      # 30 runs of each command
    python bench/bench_cli.py --runs 50 --old-venv /tmp/venv-oldnuvom-cli

Each command is run as a fresh process (the way a shell runs it), the
commands interleaved (one run of each in turn, after two warm-up rounds); the
figures are the median, the fastest and the 90th percentile of the wall time,
and the median CPU time (user + system, steadier on a busy machine), in
milliseconds, and the median as a multiple of ``python -c pass``. Measured:

* ``python -c pass``: the interpreter alone, the floor for any Python CLI;
* ``import typer``: the command-line framework alone;
* ``import pydantic-settings``: what core read its settings with before
  issue 14 (its own loader now), for comparison;
* ``import typer, nuvom.job``: the framework and core's pydantic models,
  the floor of any read command;
* core imports of a read command: nuvom.app, settings, the SDK and the
  configured backends built, without the CLI: the floor of ``status``;
* ``nuvom --help``: the whole command tree and its help (goal <= 150 ms);
* ``nuvom status <id>``: settings and the configured backend opened, one
  finished job read and printed (goal <= 250 ms, as for the next three);
* ``nuvom status <id> --format json``, ``nuvom inspect job <id>``,
  ``nuvom history recent``;
* the same two commands of nuvom 0.11.2, when a virtual environment with it
  is given (``python -m venv /tmp/venv-oldnuvom-cli &&
  /tmp/venv-oldnuvom-cli/bin/pip install nuvom==0.11.2 'click<8.2'``; its
  typer 0.11 fails with click 8.2 and later). Its ``status`` is asked for an id
  it does not know, so it reads its store and prints "not found".

Figures go to stdout and to ``bench/results/cli.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent

#: What a read command needs from core and the backend, whatever the CLI does:
#: the app (settings, pydantic models), the SDK and the configured backend.
CORE_IMPORTS = (
    "import nuvom.sdk, nuvom.config; from nuvom.app import default_app; app = default_app(); app.results; app.queue"
)

STORE_JOB = """
import time
from nuvom.backends import get_result_backend
from nuvom.job import Attempt, Job, JobStatus
now = time.time()
job = Job(func_name="add", task_path="tasks:add", args=[2, 3], status=JobStatus.SUCCESS, result=5,
          attempts=1, started_at=now - 0.01, finished_at=now,
          history=[Attempt(number=1, started_at=now - 0.01, finished_at=now)])
get_result_backend().store([job])
print(job.id)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU time (user + system) of one run of ``cmd``, in ms; CPU time
    moves less than wall time when the machine is busy with other work."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed, used = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode not in (0, 3):  # 3: `status` of an unknown id
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return elapsed * 1000, used * 1000


def time_commands(commands: dict[str, list[str]], cwd: Path, env: dict[str, str], runs: int) -> dict[str, Any]:
    """Each command ``runs`` times, interleaved (one run of each in turn), after
    two warm-up rounds: a burst of load on the machine touches every command
    alike instead of one, so the medians compare."""
    wall: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    for i in range(runs + 2):
        for label, cmd in commands.items():
            w, c = run_once(cmd, cwd, env)
            if i >= 2:  # two warm-up rounds fill the OS file cache
                wall[label].append(w)
                cpu[label].append(c)
    out = {}
    for label in commands:
        ws = sorted(wall[label])
        out[label] = {
            "median_ms": round(statistics.median(ws), 1),
            "min_ms": round(ws[0], 1),
            "p90_ms": round(ws[int(0.9 * (len(ws) - 1))], 1),
            "cpu_median_ms": round(statistics.median(cpu[label]), 1),
            "runs": runs,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    default_script = Path(sys.executable).with_name("nuvom")
    parser.add_argument("--nuvom", type=Path, default=default_script, help="the script to time")
    parser.add_argument("--old-venv", type=Path, default=Path("/tmp/venv-oldnuvom-cli"))
    args = parser.parse_args()
    if not args.nuvom.exists():
        raise SystemExit(f"{args.nuvom} not found: install nuvom-cli here (pip install -e packages/nuvom-cli)")

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nuvom-bench-cli-") as tmp:
        project = Path(tmp)
        # PYTHONDONTWRITEBYTECODE would make every run compile the editable
        # sources again; an installed wheel has its bytecode compiled by pip.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_") and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(NUVOM_DATA_DIR=str(project / ".nuvom"), COLUMNS="100")
        stored = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(STORE_JOB)], cwd=project, env=env, capture_output=True, text=True
        )
        if stored.returncode != 0:
            raise SystemExit(stored.stderr)
        job_id = stored.stdout.strip()
        nuvom = [str(args.nuvom)]
        py = [sys.executable, "-c"]
        commands = {
            "python -c pass": [*py, "pass"],
            "import typer (the CLI framework)": [*py, "import typer"],
            "import pydantic's BaseModel": [*py, "from pydantic import BaseModel"],
            # What core read settings with until issue 14 (for comparison; no longer imported).
            "import pydantic-settings": [*py, "import pydantic_settings"],
            # What any read command pays before it runs a line of its own: the
            # command-line framework and core's pydantic models. The floor of `status`.
            "import typer, nuvom.job": [*py, "import typer, nuvom.job"],
            "core imports of a read command": [*py, CORE_IMPORTS],
            "nuvom --help": [*nuvom, "--help"],
            "nuvom status <id>": [*nuvom, "status", job_id],
            "nuvom status <id> --format json": [*nuvom, "status", job_id, "--format", "json"],
            "nuvom inspect job <id>": [*nuvom, "inspect", "job", job_id],
            "nuvom history recent": [*nuvom, "history", "recent"],
        }
        old = args.old_venv / "bin" / "nuvom"
        if old.exists():
            commands["nuvom 0.11.2: nuvom --help"] = [str(old), "--help"]
            commands["nuvom 0.11.2: nuvom status <unknown id>"] = [str(old), "status", "0" * 32]
        else:
            print(f"(no {old}: the nuvom 0.11.2 figures are left out)", file=sys.stderr)
        results = time_commands(commands, project, env, args.runs)
        floor = results["python -c pass"]["median_ms"]
        cpu_floor = results["python -c pass"]["cpu_median_ms"]
        for label, r in results.items():
            r["cpu_x_python"] = round(r["cpu_median_ms"] / cpu_floor, 1)
            print(
                f"{label:42} median {r['median_ms']:6.1f} ms  min {r['min_ms']:6.1f}  p90 {r['p90_ms']:6.1f}"
                f"  cpu {r['cpu_median_ms']:6.1f} ms  (x python -c pass: wall {r['median_ms'] / floor:4.1f},"
                f" cpu {r['cpu_x_python']:4.1f})"
            )

    out = ROOT / "results" / "cli.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
