"""The README quickstart, followed literally in separate processes."""

from __future__ import annotations

import signal

import pytest

TASKS = """
    from pathlib import Path

    from nuvom.task import task

    @task(retries=2, retry_delay_secs=0.1, timeout_secs=3, store_result=True)
    def add(x, y):
        return x + y

    @task
    def fragile(marker):
        # Fails until the marker file exists: the user fixes the cause, then retries.
        if not Path(marker).exists():
            raise RuntimeError("the marker is missing")
        return "fixed"
"""


# sqlite is the default when nuvom-sqlite is installed: None leaves the backend unset.
@pytest.mark.parametrize("backend", [None, "file"], ids=["default-sqlite", "file"])
def test_quickstart_as_written_in_the_readme(make_project, wait_for, backend):
    p = make_project(backend)
    p.write("tasks.py", TASKS)

    discovered = p.nuvom_json("discover", "tasks")
    assert {t["name"] for t in discovered["tasks"]} >= {"add", "fragile"}
    listed = p.nuvom_json("list", "tasks")
    assert {t["name"] for t in listed["tasks"]} >= {"add", "fragile"}

    # 2. Queue a job from a separate process.
    job_id = p.python("from tasks import add\njob = add.delay(5, 7)\nprint(job.id)").stdout.strip()
    assert p.nuvom_json("status", job_id)["status"] == "PENDING"

    # 3. Start the worker pool.
    worker = p.start_worker("--workers", "2")
    wait_for(lambda: p.nuvom_json("status", job_id)["status"] == "SUCCESS", what="the job to succeed")

    # 4. Check the job result.
    inspected = p.nuvom_json("inspect", "job", job_id)
    assert inspected["result"] == 12 and inspected["attempts"] == 1 and inspected["worker_id"]

    # 5. A failed job, retried from the CLI after the cause is fixed.
    marker = p.root / "marker"
    failed_id = p.python(f"from tasks import fragile\nprint(fragile.delay({str(marker)!r}).id)").stdout.strip()
    wait_for(lambda: p.nuvom_json("status", failed_id)["status"] == "FAILED", what="the job to fail")
    assert "marker is missing" in p.nuvom_json("inspect", "job", failed_id)["error"]["message"]
    marker.touch()
    retried = p.nuvom_json("retry", "job", failed_id)
    new_id = retried["job"]["id"]
    wait_for(lambda: p.nuvom_json("status", new_id)["status"] == "SUCCESS", what="the retried job")

    # Several results at once.
    history = p.nuvom_json("history", "recent", "--limit", "10")
    assert [j["id"] for j in history["jobs"]][:3] == [new_id, failed_id, job_id]
    assert [j["id"] for j in p.nuvom_json("history", "recent", "--status", "FAILED")["jobs"]] == [failed_id]

    # Retry from the SDK, as the README shows.
    sdk_retry = p.python(f"from nuvom.sdk import retry_job\nprint(retry_job({failed_id!r}).id)").stdout.strip()
    wait_for(lambda: p.nuvom_json("status", sdk_retry)["status"] == "SUCCESS", what="the SDK retry")

    # 6. Ctrl+C stops the worker gracefully.
    code, out = p.stop_worker(worker, signal.SIGINT)
    assert code == 0, out
