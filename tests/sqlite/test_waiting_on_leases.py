"""A worker with nothing due says how many jobs other workers hold, and until
when (issue 30): one restarted after a crash waits out the dead worker's
leases, and the operator can read why it is idle."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nuvom.app import App
from nuvom.config import Settings
from nuvom.job import JobStatus
from nuvom.sqlite import SQLiteJobQueue
from nuvom.worker import Worker


def test_a_worker_waiting_on_a_dead_workers_leases_says_how_many_and_until_when(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path, queue_backend="sqlite", result_backend="sqlite", lease_secs=1.0, job_timeout_secs=0.5
    )
    app = App(settings)

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    jobs = double.map([(1,), (2,)])
    # A worker that claims both and dies (its claims are never settled).
    dead = SQLiteJobQueue(settings, path=app.queue.path)  # type: ignore[attr-defined]
    assert len(dead.pop_batch_starting(10, timeout=5, start=2)) == 2
    caplog.set_level(logging.INFO, logger="nuvom")
    with Worker(app=app, max_workers=1):
        assert [job.get(timeout=30) for job in jobs] == [2, 4]
    waiting = [r.getMessage() for r in caplog.records if "claimed by other workers" in r.getMessage()]
    assert len(waiting) == 1, waiting
    assert "2 job(s)" in waiting[0] and "the last lease ends in" in waiting[0]
    assert all(app.results.get_full(job.id).status is JobStatus.SUCCESS for job in jobs)  # type: ignore[union-attr]
    dead.close()
    app.close()
