"""A failed attempt's log line (issue 30): a retry is a WARNING giving the
wait the retry policy chose, the final failure an ERROR, each naming the job."""

from __future__ import annotations

import logging
import re
import time

import pytest
from nuvom.app import App
from nuvom.config import Settings
from nuvom.errors import JobFailed
from nuvom.worker import Worker


def test_a_retry_is_logged_with_the_back_off_it_waits_and_the_last_failure_as_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App(Settings(queue_backend="memory", result_backend="memory"))

    # retry_delay_secs says 0.05 s; the back-off starts at 0.2 s and doubles: 0.2 s, then 0.4 s.
    @app.task(name="flaky", retries=2, retry_delay_secs=0.05, retry_backoff=0.2, retry_jitter=False)
    def flaky() -> None:
        raise ValueError("not yet")

    caplog.set_level(logging.WARNING, logger="nuvom")
    with Worker(app=app):
        job = flaky.delay()
        with pytest.raises(JobFailed):
            job.get(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(r.levelno == logging.ERROR for r in caplog.records):
        time.sleep(0.01)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if job.id in r.getMessage()]
    retries = [m for level, m in lines if level == logging.WARNING]
    failures = [m for level, m in lines if level == logging.ERROR]
    waits = [float(re.search(r"retrying in ([\d.]+) s", m).group(1)) for m in retries]  # type: ignore[union-attr]
    assert waits == [0.2, 0.4], retries
    assert "(2 retries left)" in retries[0] and "(1 retry left)" in retries[1]
    assert len(failures) == 1 and "failed after 3 attempts: ValueError: not yet" in failures[0]
    app.close()
