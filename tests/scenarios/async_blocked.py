"""An async job blocks the event loop of a real worker process (issue 27, item 1)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

NAPPERS = 20

TASKS = """
import asyncio, time
from nuvom.task import task

@task(timeout_secs=1)
async def nap(i):
    await asyncio.sleep(0.5)
    return i

@task(timeout_secs=0.5)
async def blocker():
    time.sleep(2)  # blocking code on the event loop
    return "blocked"
"""

PRODUCE = """
import json
from nuvom.errors import JobFailed
from tasks import blocker, nap
jobs = [nap.delay(i) for i in range({n})] + [blocker.delay()]
out = []
for job in jobs:
    try:
        out.append([job.id, "SUCCESS", job.get(timeout=60)])
    except JobFailed as exc:
        out.append([job.id, "FAILED", exc.exc_type])
print(json.dumps(out))
"""


def run(root: Path, env: dict[str, str]) -> tuple[list[list[object]], str]:
    """A worker process and a producer on ``env``'s store: the producer's
    outcomes (``[id, status, result or error type]``, the blocker last) and
    what the worker logged."""
    (root / "tasks.py").write_text(textwrap.dedent(TASKS), encoding="utf-8")
    log = root / "worker.log"
    with open(log, "w", encoding="utf-8") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "nuvom.worker", "tasks"], cwd=root, env=env, stdout=out, stderr=out
        )
    try:
        produced = subprocess.run(
            [sys.executable, "-c", PRODUCE.format(n=NAPPERS)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert produced.returncode == 0, produced.stderr
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(30)
    return json.loads(produced.stdout), log.read_text(encoding="utf-8")


def check(rows: list[list[object]], logged: str) -> None:
    """No job past its deadline succeeded; the block was logged once, naming the blocker."""
    assert [row[1:] for row in rows] == [["FAILED", "TimeoutError"]] * (NAPPERS + 1)
    blocker_id = str(rows[-1][0])
    held = [line for line in logged.splitlines() if "has blocked the event loop" in line]
    assert len(held) == 1 and blocker_id in held[0] and " WARNING " in held[0], logged
