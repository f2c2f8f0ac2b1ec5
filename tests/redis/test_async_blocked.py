"""An async job blocking the event loop of a worker on redis (issue 27, item 1):
no job past its deadline is recorded as a success, the blocker fails as timed
out, and the block is logged once at WARNING naming it."""

from __future__ import annotations

import sys
from pathlib import Path

from .conftest import Project

sys.path.insert(0, str(Path(__file__).parents[1]))
from scenarios import async_blocked


def test_a_blocked_event_loop_never_turns_late_jobs_into_successes(project: Project, tmp_path: Path) -> None:
    env = project.env()
    async_blocked.check(*async_blocked.run(tmp_path, env))
