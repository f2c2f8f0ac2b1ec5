"""A worker that runs out of file descriptors (a task that leaks them, a
neighbour holding them) keeps its threads, loses no job, and goes on once
descriptors are free again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is POSIX; the worker code is not")

TASKS = """
    import os
    import time

    from nuvom.task import task

    @task
    def hog(secs):
        # Take every free descriptor, hold them, give them back.
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        time.sleep(secs)
        for fd in held:
            os.close(fd)
        return len(held)

    @task
    def echo(x):
        return x
"""


def _limit_descriptors() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


@pytest.mark.parametrize("backend", [None, "file"], ids=["sqlite", "file"])
def test_a_worker_out_of_descriptors_recovers_and_loses_nothing(make_project, wait_for, backend):
    p = make_project(backend)
    p.write("tasks.py", TASKS)
    worker = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", "--threads", "4", "tasks"],
        cwd=p.root,
        env=p.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_limit_descriptors,  # tests only: the limit a crowded host would impose
    )
    p.workers.append(worker)
    ids = json.loads(
        p.python(
            """
            import json
            from tasks import echo, hog
            first = hog.delay(2)
            print(json.dumps([first.id] + [j.id for j in echo.map(range(40))]))
            """
        ).stdout
    )

    def all_final():
        records = p.records(ids)
        return all(r is not None and r["status"] in ("SUCCESS", "FAILED") for r in records.values()) and records

    records = wait_for(all_final, timeout=90, what="every job to reach a final state")
    assert worker.poll() is None, "the worker died"
    assert records[ids[0]]["status"] == "SUCCESS" and records[ids[0]]["result"] > 0
    echoes = [records[i] for i in ids[1:]]
    assert [r["result"] for r in echoes] == list(range(40))
    assert all(r["status"] == "SUCCESS" and r["attempts"] == 1 for r in echoes), echoes
