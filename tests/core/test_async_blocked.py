"""An async job that blocks the event loop (issue 27, item 1): no job past its
deadline is ever recorded as a success, the blocking job fails as timed out,
and the block is logged at WARNING naming the job, once, and counted."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

import pytest
from nuvom.app import App
from nuvom.config import Settings
from nuvom.errors import JobFailed
from nuvom.worker import Worker

sys.path.insert(0, str(Path(__file__).parents[1]))
from scenarios import async_blocked

NAPPERS = async_blocked.NAPPERS


def test_a_blocked_event_loop_never_turns_late_jobs_into_successes_in_process(caplog: pytest.LogCaptureFixture) -> None:
    app = App(Settings(queue_backend="memory", result_backend="memory"))

    @app.task(name="nap", timeout_secs=1)
    async def nap(i: int) -> int:
        await asyncio.sleep(0.5)
        return i

    @app.task(name="blocker", timeout_secs=0.5)
    async def blocker() -> str:
        time.sleep(2)
        return "blocked"

    caplog.set_level(logging.WARNING, logger="nuvom")
    with Worker(app=app) as worker:
        jobs = [nap.delay(i) for i in range(NAPPERS)]
        blocking = blocker.delay()
        outcomes = []
        for job in [*jobs, blocking]:
            with pytest.raises(JobFailed) as failed:
                job.get(timeout=30)
            outcomes.append(failed.value.exc_type)
        assert worker.metrics()["loop_blocked_total"] == 1
    # Every one ran past its deadline while the loop was held: none is a success.
    assert outcomes == ["TimeoutError"] * (NAPPERS + 1)
    held = [r.getMessage() for r in caplog.records if "has blocked the event loop" in r.getMessage()]
    assert len(held) == 1 and blocking.id in held[0] and "(blocker)" in held[0]
    app.close()


def test_a_blocked_event_loop_never_turns_late_jobs_into_successes_on_files(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file", NUVOM_DATA_DIR=str(tmp_path / "data"))
    async_blocked.check(*async_blocked.run(tmp_path, env))
