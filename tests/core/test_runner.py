from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from nuvom.app import default_app
from nuvom.job import Job, JobStatus
from nuvom.task import task

COUNT: dict[str, int] = {}


@task(retries=1)
def sync_flaky(key):
    COUNT[key] = COUNT.get(key, 0) + 1
    if COUNT[key] == 1:
        raise ValueError("once")
    return COUNT[key]


def test_run_job_runs_synchronously_with_retries(request):
    job = sync_flaky.make_job([request.node.nodeid], {})
    done = default_app().run_locally(job)
    assert done.status is JobStatus.SUCCESS and done.result == 2 and done.attempts == 2


def test_run_job_reports_an_unknown_task_as_failed():
    done = default_app().run_locally(Job(func_name="not_a_task_anywhere"))
    assert done.status is JobStatus.FAILED and "not_a_task_anywhere" in done.error.message


WORKER_SCRIPT = textwrap.dedent("""
    import sys, threading
    from nuvom.task import task
    from nuvom.worker import Worker
    from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend

    started = threading.Event()

    @task
    def slow():
        started.set()
        threading.Event().wait(0.5)
        return "done"

    queue, results = MemoryJobQueue(), MemoryResultBackend()
    worker = Worker(max_workers=2, queue=queue, results=results)
    from nuvom.backends import set_backends
    set_backends(queue, results)
    job = slow.delay()
    def report():
        started.wait(10)
        print("RUNNING", flush=True)
    threading.Thread(target=report, daemon=True).start()
    code = worker.run_forever()
    record = results.get_full(job.id)
    print("OUTCOME", record.status.value if record else None, flush=True)
    sys.exit(code)
""")


def _run_and_signal(tmp_path, sig):
    script = tmp_path / "worker_script.py"
    script.write_text(WORKER_SCRIPT)
    env = {**os.environ, "NUVOM_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 20
    line = proc.stdout.readline()
    assert line.strip() == "RUNNING", line
    assert time.monotonic() < deadline
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_sigint_stops_gracefully_finishing_the_running_job(tmp_path):
    code, out = _run_and_signal(tmp_path, signal.SIGINT)
    assert code == 0 and "OUTCOME SUCCESS" in out


def test_sigterm_stops_gracefully_too(tmp_path):
    code, out = _run_and_signal(tmp_path, signal.SIGTERM)
    assert code == 0 and "OUTCOME SUCCESS" in out


def test_the_signal_handler_takes_no_lock_the_main_thread_may_hold(mem):
    # Regression: the handler used to call Event.set() on the Event that
    # run_forever() waits on; a signal landing while the main thread held that
    # Event's lock deadlocked the worker (seen about once in twenty stops).
    from nuvom.worker import Worker

    worker = Worker(max_workers=1)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker._install_signal_handlers()
        handler = signal.getsignal(signal.SIGINT)
        done = threading.Event()

        def deliver():
            # Every lock run_forever() and stop() might be holding when a signal lands.
            with worker._stopping._cond:
                handler(signal.SIGINT, None)
            done.set()

        threading.Thread(target=deliver, daemon=True).start()
        assert done.wait(5), "the signal handler blocked on a lock"
        assert worker._stop_requested
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
