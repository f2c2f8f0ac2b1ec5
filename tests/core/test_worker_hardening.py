"""The engine under hostile tasks (issue 12, items 8 and 9): a BaseException
from user code or a raising log handler fails one job and never shrinks the
pool; a timeout holds while the worker stops."""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nuvom.errors import JobFailed
from nuvom.job import Job, JobStatus
from nuvom.testing import isolated_app
from nuvom.worker import Worker

STARTED: dict[str, threading.Event] = {}


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def alive_threads(worker: Worker) -> int:
    return int(worker.metrics()["worker_count"])


def test_a_task_raising_keyboard_interrupt_fails_its_job_and_the_pool_stays_whole() -> None:
    with isolated_app() as app:

        @app.task(name="interrupts")
        def interrupts() -> None:
            raise KeyboardInterrupt("from the task")

        @app.task(name="fine")
        def fine(n: int) -> int:
            return n

        with Worker(max_workers=2, app=app) as worker:
            bad = [interrupts.delay() for _ in range(4)]
            for job in bad:
                with pytest.raises(JobFailed, match="KeyboardInterrupt"):
                    job.get(timeout=10)
            assert [j.get(timeout=10) for j in fine.map(range(20))] == list(range(20))
            assert alive_threads(worker) == 2


def test_a_task_module_calling_sys_exit_at_import_fails_the_job_and_the_pool_stays_whole(tmp_path: Path) -> None:
    module = tmp_path / "exits_at_import.py"
    module.write_text("import sys\nsys.exit('API_KEY is not set')\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with isolated_app() as app:

            @app.task(name="fine2")
            def fine2(n: int) -> int:
                return n

            with Worker(max_workers=2, app=app) as worker:
                jobs = [Job(func_name="exits", task_path="exits_at_import:exits").bind(app) for _ in range(3)]
                app.queue.enqueue_many(jobs)
                for job in jobs:
                    with pytest.raises(JobFailed, match="raised SystemExit\\('API_KEY is not set'\\)"):
                        job.get(timeout=10)
                assert [j.get(timeout=10) for j in fine2.map(range(10))] == list(range(10))
                assert alive_threads(worker) == 2
    finally:
        sys.path.remove(str(tmp_path))


class NoFileDescriptors(logging.Handler):
    """A log handler on a machine out of file descriptors."""

    def emit(self, record: logging.LogRecord) -> None:
        raise OSError(errno.EMFILE, "Too many open files")


def test_a_log_handler_that_raises_never_kills_a_worker_thread() -> None:
    handler = NoFileDescriptors()
    nuvom_log = logging.getLogger("nuvom")
    with isolated_app() as app:

        @app.task(name="fails_loudly")
        def fails_loudly() -> None:
            raise ValueError("logged by a hook")

        @app.task(name="fine3")
        def fine3(n: int) -> int:
            return n

        with Worker(max_workers=2, app=app) as worker:
            nuvom_log.addHandler(handler)
            try:
                # Unknown tasks fail "without running", which logs an error.
                unknown = [Job(func_name="no_such_task").bind(app) for _ in range(4)]
                app.queue.enqueue_many(unknown)
                for job in unknown:
                    with pytest.raises(JobFailed):
                        job.get(timeout=10)
                for job in [fails_loudly.delay() for _ in range(2)]:
                    with pytest.raises(JobFailed):
                        job.get(timeout=10)
                assert [j.get(timeout=10) for j in fine3.map(range(10))] == list(range(10))
                assert alive_threads(worker) == 2
                assert worker._watchdog is not None and worker._watchdog.alive  # the watchdog too
            finally:
                nuvom_log.removeHandler(handler)


def test_a_timeout_holds_while_the_worker_stops() -> None:
    with isolated_app() as app:
        started = STARTED.setdefault("stop-timeout", threading.Event())

        @app.task(name="sleeps_past_timeout", timeout_secs=0.5, timeout_policy="fail")
        def sleeps_past_timeout() -> str:
            started.set()
            time.sleep(2.5)
            return "late"

        worker = Worker(max_workers=1, app=app).start()
        job = sleeps_past_timeout.delay()
        assert started.wait(10)
        worker.stop(grace=5)  # asked to stop while it runs (SIGINT does this)
        record = app.results.get_full(job.id)
        assert record is not None
        assert record.status is JobStatus.FAILED and record.result is None
        assert record.error is not None and record.error.type == "TimeoutError"


def test_a_task_holding_the_gil_past_a_third_of_the_lease_is_reported_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing of the worker's Python runs while one C call holds the GIL, so no
    # lease is renewed meanwhile: the watchdog says so when it runs again.
    with isolated_app(lease_secs=1.5) as app:

        @app.task(name="hogs_the_gil", timeout_secs=60)
        def hogs_the_gil() -> bool:
            # One C call of a second or more: the GIL is never released inside it.
            return sum(range(150_000_000)) > 0

        @app.task(name="warm_up")
        def warm_up() -> bool:
            return True

        caplog.set_level(logging.WARNING, logger="nuvom")
        with Worker(app=app, max_workers=1):
            # One job through first: the watchdog is in its loop before the GIL is taken from it.
            assert warm_up.delay().get(timeout=30) is True
            job = hogs_the_gil.delay()
            assert job.get(timeout=60) is True
        starved = [r.getMessage() for r in caplog.records if "watchdog could not run" in r.getMessage()]
        assert starved and all(job.id in m and "executor='process'" in m for m in starved)
