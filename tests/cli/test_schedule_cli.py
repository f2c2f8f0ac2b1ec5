"""`nuvom schedule ...` and `nuvom runscheduler`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from nuvom.backends.memory import MemoryJobQueue
from nuvom.schedule import Schedule

from .conftest import clean_env, nuvom_command


def stored(queue: MemoryJobQueue, key: str = "nightly") -> Schedule:
    now = time.time()
    s = Schedule(key=key, task="add", task_path="tasks:add", args=[1, 2], interval=60.0, anchor=now + 60)
    s.next_run_at = s.anchor
    return queue.upsert_schedule(s)


def test_schedule_list_and_show_json(cli, mem):
    queue, _ = mem
    stored(queue)
    out = cli("schedule", "list", "--format", "json")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["count"] == 1 and doc["schedules"][0]["key"] == "nightly"
    assert doc["schedules"][0]["timing"] == "every 60s" and doc["schedules"][0]["paused"] is False
    shown = json.loads(cli("schedule", "show", "nightly", "--format", "json").stdout)
    assert shown["args"] == [1, 2] and shown["next_run_at"] == doc["schedules"][0]["next_run_at"]


def test_pause_resume_run_now_and_cancel(cli, mem):
    queue, _ = mem
    stored(queue)
    assert json.loads(cli("schedule", "pause", "nightly", "--format", "json").stdout)["schedule"]["paused"] is True
    assert queue.get_schedule("nightly").paused  # type: ignore[union-attr]
    assert json.loads(cli("schedule", "resume", "nightly", "--format", "json").stdout)["schedule"]["paused"] is False
    doc = json.loads(cli("schedule", "run-now", "nightly", "--format", "json").stdout)
    assert doc["job"]["schedule_key"] == "nightly" and queue.get(doc["job"]["id"]) is not None
    out = cli("schedule", "cancel", "nightly")
    assert out.exit_code == 0 and "cancelled schedule nightly" in out.stdout
    assert queue.get_schedule("nightly") is None


def test_unknown_key_is_one_line_and_exit_3(cli, mem):
    for verb in ("show", "pause", "resume", "cancel", "run-now"):
        out = cli("schedule", verb, "nope")
        assert out.exit_code == 3, (verb, out.stdout, out.stderr)
        assert out.stderr.strip().count("\n") == 0 and "no schedule with key 'nope'" in out.stderr


def test_history_and_inspect_show_the_schedule_key(cli, mem):
    from nuvom.job import Job, JobStatus

    _, results = mem
    now = time.time()
    job = Job(
        func_name="add", status=JobStatus.SUCCESS, result=3, schedule_key="nightly", finished_at=now, started_at=now
    )
    results.store([job])
    assert "nightly" in cli("history", "recent").stdout
    assert "nightly" in cli("inspect", "job", job.id).stdout


def test_runscheduler_fires_a_declared_schedule_and_stops_on_sigterm(tmp_path: Path):
    (tmp_path / "tasks.py").write_text(
        "from nuvom.task import task\nfrom nuvom.schedule import every\n\n"
        "@task(schedule=every(0.2))\ndef beat():\n    return 1\n"
    )
    env = clean_env(tmp_path, NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file", NUVOM_TASK_MODULES="tasks")
    proc = subprocess.Popen([*nuvom_command(), "runscheduler"], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        queued: list[str] = []
        while time.monotonic() < deadline and len(queued) < 3:
            queue_dir = tmp_path / ".nuvom" / "queue"
            queued = [p.name for p in queue_dir.glob("*.msgpack")] if queue_dir.is_dir() else []
            time.sleep(0.05)
        assert len(queued) >= 3, "runscheduler queued no jobs"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    listed = subprocess.run(
        [*nuvom_command(), "schedule", "list", "--format", "json"], cwd=tmp_path, env=env, capture_output=True
    )
    doc = json.loads(listed.stdout)
    assert [s["task"] for s in doc["schedules"]] == ["beat"] and doc["schedules"][0]["declared"] is True


def test_schedule_list_and_show_say_their_times_are_utc(cli, mem, monkeypatch):
    import pytest

    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset() (changing this process's time zone) is POSIX only")
    queue, _ = mem
    s = stored(queue)
    # A local zone seven hours east of UTC, by POSIX rule (no tz database needed).
    monkeypatch.setenv("TZ", "NUV-07")
    time.tzset()
    try:
        listed = cli("schedule", "list")
        shown = cli("schedule", "show", "nightly")
        doc = json.loads(cli("schedule", "list", "--format", "json").stdout)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert s.next_run_at is not None
    utc = time.gmtime(s.next_run_at)
    header, row = listed.stdout.splitlines()[:2]
    assert "next run (UTC)" in header
    # HH:MM:SS on the same UTC day, else the date and HH:MM (a run just after UTC midnight).
    assert time.strftime("%H:%M:%S", utc) in row or time.strftime("%Y-%m-%d %H:%M", utc) in row
    assert f"{time.strftime('%Y-%m-%d %H:%M:%S', utc)}." in shown.stdout and " UTC" in shown.stdout
    # JSON stays machine-readable: Unix time, which has no zone.
    assert doc["schedules"][0]["next_run_at"] == s.next_run_at
