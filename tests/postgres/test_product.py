"""The `nuvom` command, the SDK and the dashboard on PostgreSQL, unchanged:
they see the jobs of a real worker process through the contract alone.
The command and the dashboard are other distributions: these tests skip where
they are not installed (the postgres environment) and run in the e2e one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nuvom import sdk
from nuvom.job import JobStatus

from .conftest import Project, jobs_for, wait_until


def nuvom(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    env = project.env(COLUMNS="200", NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "nuvom.cli", *args],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_nuvom_command_reads_jobs_run_on_postgres(project, queue, results):
    pytest.importorskip("nuvom.cli", reason="nuvom-cli is not installed (the e2e environment runs this)")
    project.start_workers(1)
    ok, bad = jobs_for("record", ["a"])[0], jobs_for("flaky", ["b"], 5, max_retries=0)[0]
    queue.enqueue_many([ok, bad])
    wait_until(lambda: results.count() == 2, 30, "both recorded")
    status = nuvom(project, "status", ok.id, "--format", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "SUCCESS"
    failed = json.loads(nuvom(project, "history", "recent", "--status", "FAILED", "--format", "json").stdout)
    rows = failed if isinstance(failed, list) else failed.get("jobs", failed)
    assert [r["id"] for r in rows] == [bad.id]
    inspect = nuvom(project, "inspect", "job", bad.id)
    assert inspect.returncode == 0 and "attempt 1 of b fails" in inspect.stdout
    missing = nuvom(project, "status", "f" * 32)
    assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1


def test_the_sdk_reads_and_steers_jobs_on_postgres(pg_env, queue, results):
    [waiting] = jobs_for("record", ["w"])
    queue.enqueue(waiting)
    assert [j.id for j in sdk.queued_jobs()] == [waiting.id]
    assert sdk.job_counts()["queued"] == 1
    cancelled = sdk.cancel_job(waiting.id)
    assert cancelled is not None and sdk.get_job(waiting.id).status is JobStatus.FAILED
    assert sdk.queue_size() == 0


def test_the_dashboard_shows_jobs_workers_and_queues_on_postgres(project, pg_env, queue, results, tmp_path: Path):
    pytest.importorskip("nuvom.dashboard", reason="nuvom-dashboard is not installed (the e2e environment runs this)")
    pytest.importorskip("httpx", reason="Starlette's test client needs httpx")
    from nuvom.dashboard import create_app
    from starlette.testclient import TestClient

    project.start_workers(1, NUVOM_HEARTBEAT_SECS="0.2")
    [job] = jobs_for("record", ["shown"], tags=["dash"])
    queue.enqueue(job)
    wait_until(lambda: results.get_full(job.id), 30, "the job recorded")
    wait_until(lambda: queue.list_workers(), 10, "the worker's presence")
    os.environ.pop("NUVOM_DASHBOARD_TOKEN", None)
    with TestClient(create_app(token="")) as client:
        client.app.state.dashboard.sampler.take()  # type: ignore[attr-defined]
        assert client.get("/").status_code == 200
        jobs = client.get("/jobs?tag=dash")
        assert jobs.status_code == 200 and job.id in jobs.text
        detail = client.get(f"/jobs/{job.id}")
        assert detail.status_code == 200 and "shown" in detail.text
        workers = client.get("/workers")
        assert workers.status_code == 200 and "postgres postgresql://127.0.0.1:" in workers.text
        assert client.get("/queues").status_code == 200
