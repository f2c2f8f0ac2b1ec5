"""``nuvom runworker`` serving thread, async and process tasks at once: the
banner says which executors exist, ``inspect`` says which one ran each job."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

BANNER = "Ctrl+C to stop"

EXEC_TASKS_PY = textwrap.dedent(
    """
    import asyncio
    import os

    from nuvom.task import task


    @task
    def add(x, y):
        return x + y


    @task
    async def nap(x):
        await asyncio.sleep(0.05)
        return x


    @task(executor="process")
    def child_pid():
        return os.getpid()


    @task(executor="process", timeout_secs=1)
    def spin():
        while True:
            pass
    """
)

QUEUE = """
from tasks import add, nap, child_pid, spin
print(add.delay(1, 2).id, nap.delay(3).id, child_pid.delay().id, spin.delay().id)
"""

WAIT = """
import sys
from nuvom.backends import get_result_backend
for job_id in sys.argv[1:]:
    assert get_result_backend().wait(job_id, timeout=90) is not None, job_id
"""


def inspect_json(nuvom, project: Path, env: dict[str, str], job_id: str) -> dict:
    proc = nuvom(["inspect", "job", job_id, "--format", "json"], project, env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_one_worker_serves_every_executor_and_inspect_names_it(nuvom, python, background, project, durable):
    import subprocess
    import sys

    (project / "tasks.py").write_text(EXEC_TASKS_PY, encoding="utf-8")
    worker = background(["runworker", "-w", "2", "--processes", "1"], project, durable)
    worker.wait_for(BANNER)
    assert "executors" in worker.stderr and "process pool of 1" in worker.stderr

    produced = python(QUEUE, project, durable)
    assert produced.returncode == 0, produced.stderr
    ids = produced.stdout.split()
    waited = subprocess.run(
        [sys.executable, "-c", WAIT, *ids], cwd=project, env=durable, capture_output=True, text=True, timeout=120
    )
    assert waited.returncode == 0, waited.stderr

    docs = [inspect_json(nuvom, project, durable, job_id) for job_id in ids]
    assert [d["history"][-1]["executor"] for d in docs] == ["thread", "async", "process", "process"]
    assert [d["status"] for d in docs] == ["SUCCESS", "SUCCESS", "SUCCESS", "FAILED"]
    assert docs[2]["result"] != worker.proc.pid
    assert docs[3]["history"][0]["outcome"] == "timeout" and docs[3]["executor"] == "process"

    table = nuvom(["inspect", "job", ids[3]], project, durable)
    assert table.returncode == 0 and "executor" in table.stdout and "process" in table.stdout

    assert worker.stop(signal.SIGTERM) == 0
    assert "Traceback" not in worker.stderr


def test_pool_process_puts_every_task_in_the_children(nuvom, python, background, project, durable):
    worker = background(["runworker", "--pool", "process", "--processes", "1"], project, durable)
    worker.wait_for(BANNER)
    assert "every task in the process pool of 1" in worker.stderr
    produced = python("from tasks import add\nprint(add.delay(2, 3).id)", project, durable)
    job_id = produced.stdout.strip()
    doc = None
    import time

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        doc = inspect_json(nuvom, project, durable, job_id)
        if doc["status"] == "SUCCESS":
            break
        time.sleep(0.2)
    assert doc is not None and doc["result"] == 5 and doc["history"][0]["executor"] == "process"
    assert worker.stop(signal.SIGINT) == 0


def test_an_unknown_pool_is_one_line_on_stderr(nuvom, project, env_for, tmp_path):
    proc = nuvom(["runworker", "--pool", "greenlet"], project, env_for(tmp_path))
    assert proc.returncode != 0
    assert "--pool 'greenlet' is not an executor: choose thread or process" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
