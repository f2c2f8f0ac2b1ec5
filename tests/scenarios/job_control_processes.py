"""Job control (issue 29) with real worker processes, the parts shared by the
durable stores' tests (``tests/<store>/test_job_control_processes.py``): the
tasks they run, producers, and a SIGKILL timed to cut a run short.

``project`` is the store's own test project (its conftest's ``Project``):
``root``, ``env()`` and ``run_lines()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from scenarios.job_control import wait_until

# Tasks added to the project's tasks.py. Each run appends "<key> <pid> <time>
# <job id>" to runs.log; ``once`` also appends an "end" line when it returns.
FLOW_TASKS = """
import asyncio

from nuvom.job import current_job


@task(unique=True, timeout_secs=2)
def once(key, secs):
    log_run(key, os.getpid(), time.time(), current_job().id)
    time.sleep(secs)
    log_run("end", os.getpid(), time.time(), current_job().id)
    return key


@task(timeout_secs=2)
def part(i):
    log_run(f"part{i}", os.getpid(), time.time(), current_job().id)
    time.sleep(0.2)
    return i * i


@task
def gather(values):
    log_run("gather", os.getpid(), time.time(), current_job().id)
    return values


@task(timeout_secs=2)
def link(value, chain, step):
    log_run(f"{chain}-{step}", os.getpid(), time.time(), current_job().id)
    time.sleep(0.2)
    return value + 1


@task(timeout_secs=60)
def spin(key):
    log_run(key, os.getpid(), time.time(), current_job().id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not current_job().cancelled:
        time.sleep(0.01)
    return "returned"


@task(timeout_secs=60)
async def nap(key):
    log_run(key, os.getpid(), time.time(), current_job().id)
    await asyncio.sleep(30)
    return "slept"
"""

# A claim lives max(NUVOM_LEASE_SECS, timeout 2 s x 1.1 + 2 s) = 4.2 s: a killed worker's jobs come back soon.
LEASE = {"NUVOM_LEASE_SECS": "1", "NUVOM_BATCH_SIZE": "4"}


def flow_project(project: Any, tasks: str) -> Any:
    """The project, its tasks.py the store's ``tasks`` and :data:`FLOW_TASKS`."""
    (project.root / "tasks.py").write_text(tasks + FLOW_TASKS)
    return project


def produce(project: Any, code: str) -> dict:
    """Run ``code`` in a producer process; what it printed, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=project.root, env=project.env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def kill_mid_run(project: Any, victim: subprocess.Popen[bytes]) -> str:
    """SIGKILL ``victim`` right after one of its runs started (every run here
    lasts four times longer than that): the kill cuts that run short."""
    pid = str(victim.pid)

    def just_started() -> bool:
        now = time.time()
        return any(f[1] == pid and now - float(f[2]) < 0.05 for f in project.run_lines() if f[0] != "end")

    wait_until(just_started, 60, "a run starting on the worker to kill")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    return pid


def runs_by_job(project: Any) -> dict[str, list[list[str]]]:
    """Job id -> its runs (lines ``key pid time job_id``), "end" lines left out."""
    out: dict[str, list[list[str]]] = defaultdict(list)
    for fields in project.run_lines():
        if fields[0] != "end" and len(fields) == 4:
            out[fields[3]].append(fields)
    return out
