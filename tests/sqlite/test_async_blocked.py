"""An async job blocking the event loop of a worker on sqlite (issue 27, item 1):
no job past its deadline is recorded as a success, the blocker fails as timed
out, and the block is logged once at WARNING naming it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from scenarios import async_blocked


def test_a_blocked_event_loop_never_turns_late_jobs_into_successes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(NUVOM_QUEUE_BACKEND="sqlite", NUVOM_RESULT_BACKEND="sqlite", NUVOM_DATA_DIR=str(tmp_path / "data"))
    async_blocked.check(*async_blocked.run(tmp_path, env))
