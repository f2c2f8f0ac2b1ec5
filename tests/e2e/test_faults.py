"""Faults, each with real processes: kill -9, SIGTERM, hung tasks, bad
exceptions, a full or read-only disk, and a long mixed run with an audit."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

BACKENDS = ["sqlite", "file"]

WORK_TASKS = """
    import os, random, time
    from pathlib import Path

    from nuvom.task import task

    RUNS = Path(os.environ["E2E_RUNS_FILE"])

    def _record(kind, n):
        # One line per execution, appended atomically enough for short lines (O_APPEND).
        with open(RUNS, "a") as f:
            f.write(f"{kind} {n} {os.getpid()}\\n")

    @task
    def work(n, secs=0.01):
        _record("work", n)
        time.sleep(secs)
        return n * 2

    @task(timeout_secs=0.5)
    def hang(n):
        _record("hang", n)
        time.sleep(30)

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no text for you")

    @task
    def leaks_bad_exception(kind):
        if kind == "surrogate":
            raise ValueError("bad text \\udcff here")
        if kind == "unprintable":
            raise Unprintable()
        raise ValueError(object())

    @task(retries=3, retry_delay_secs=0.05)
    def chaos(n, secs, fail):
        _record("chaos", n)
        time.sleep(secs)
        if fail:
            raise RuntimeError(f"chaos {n} fails")
        return n
"""


def _project(make_project, backend, **env):
    p = make_project(backend)
    p.write("tasks.py", WORK_TASKS)
    p.env["E2E_RUNS_FILE"] = str(p.root / "runs.txt")
    p.env.update(env)
    return p


def _enqueue(p, code):
    return json.loads(p.python("import json\nfrom tasks import *\n" + code).stdout)


def _executions(p, kind="work"):
    try:
        lines = (p.root / "runs.txt").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.startswith(kind + " ")]


def _statuses(p, ids):
    return {i: (r or {}).get("status") for i, r in p.records(ids).items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_batch_loses_no_job(make_project, wait_for, backend):
    # Short timeouts make short leases, so recovery is quick.
    p = _project(make_project, backend, NUVOM_JOB_TIMEOUT_SECS="1", NUVOM_LEASE_SECS="1")
    ids = _enqueue(p, "print(json.dumps([j.id for j in work.map([(i, 0.02) for i in range(300)])]))")
    victim = p.start_worker("--workers", "4", "--batch-size", "16")
    wait_for(lambda: len(_executions(p)) >= 40, what="the first worker to be busy")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    victim_pid = str(victim.pid)
    p.start_worker("--workers", "4")
    wait_for(lambda: set(_statuses(p, ids).values()) == {"SUCCESS"}, timeout=90, what="every job to succeed")
    runs = _executions(p)
    ran = [int(line.split()[1]) for line in runs]
    assert set(ran) == set(range(300))
    # Only jobs the killed worker held may have run twice.
    twice = {n for n in ran if ran.count(n) > 1}
    killed_held = {int(line.split()[1]) for line in runs if line.split()[2] == victim_pid}
    assert twice <= killed_held


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_with_jobs_in_flight_finishes_them_or_hands_them_back(make_project, wait_for, backend):
    p = _project(make_project, backend)
    ids = _enqueue(p, "print(json.dumps([j.id for j in work.map([(i, 0.5) for i in range(8)])]))")
    worker = p.start_worker("--workers", "2", "--batch-size", "4")
    wait_for(lambda: len(_executions(p)) >= 2, what="two jobs running")
    code, out = p.stop_worker(worker, signal.SIGTERM)
    assert code == 0, out
    statuses = _statuses(p, ids)
    assert set(statuses.values()) <= {"SUCCESS", "PENDING"}, statuses
    assert list(statuses.values()).count("SUCCESS") >= 2  # the running ones finished
    started = {int(line.split()[1]) for line in _executions(p)}
    for n, job_id in enumerate(ids):
        if statuses[job_id] == "PENDING":
            assert n not in started  # handed back before it ran: nothing half-done
    p.start_worker("--workers", "2")
    wait_for(lambda: set(_statuses(p, ids).values()) == {"SUCCESS"}, timeout=60, what="the rest to run")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hung_task_times_out_and_the_pool_keeps_its_size(make_project, wait_for, backend):
    p = _project(make_project, backend)
    hung = _enqueue(p, "print(json.dumps([hang.delay(i).id for i in range(2)]))")
    quick = _enqueue(p, "print(json.dumps([j.id for j in work.map(range(10))]))")
    p.start_worker("--workers", "1")
    # One thread, two hung jobs ahead of the quick ones: they only run if each hung
    # thread is abandoned and replaced.
    wait_for(
        lambda: (
            set(_statuses(p, hung + quick).values()) == {"SUCCESS", "FAILED"}
            and None not in _statuses(p, hung + quick).values()
            and all(s == "SUCCESS" for i, s in _statuses(p, quick).items())
        ),
        timeout=60,
        what="all jobs settled",
    )
    for record in p.records(hung).values():
        assert record["status"] == "FAILED" and record["error"]["type"] == "TimeoutError"
        assert record["history"][-1]["outcome"] == "timeout"


def test_exceptions_that_cannot_be_encoded_fail_the_job_cleanly(make_project, wait_for):
    p = _project(make_project, "sqlite")
    ids = _enqueue(
        p, "print(json.dumps([leaks_bad_exception.delay(k).id for k in ('surrogate', 'unprintable', 'object')]))"
    )
    after = _enqueue(p, "print(json.dumps([work.delay(1).id]))")
    p.start_worker("--workers", "2")
    wait_for(lambda: all(s in ("SUCCESS", "FAILED") for s in _statuses(p, ids + after).values()), what="settled")
    records = p.records(ids)
    assert [records[i]["status"] for i in ids] == ["FAILED"] * 3
    assert "bad text" in records[ids[0]]["error"]["message"]
    assert "could not be rendered" in records[ids[1]]["error"]["message"]
    assert records[ids[2]]["error"]["type"] == "ValueError"
    assert _statuses(p, after)[after[0]] == "SUCCESS"


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs as the data directory, to fill up and make read-only for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}); needs root")

    def remount(options):
        subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)

    yield mount, remount
    subprocess.run(["umount", "-l", str(mount)], check=False)


FILL = """
    import json
    from tasks import work
    ids, error = [], None
    try:
        for i in range(100000):
            ids.append(work.delay("x" * 4000).id)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"ids": ids, "error": error}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_disk_is_a_clear_error_and_stored_jobs_survive(make_project, wait_for, small_disk, backend):
    mount, remount = small_disk
    p = _project(make_project, backend, NUVOM_DATA_DIR=str(mount / "data"))
    out = json.loads(p.python(FILL, timeout=300).stdout)
    assert out["error"] and out["ids"], out
    assert any(w in out["error"].lower() for w in ("full", "space")), out["error"]
    assert "Traceback" not in out["error"]
    remount("size=64m")
    p.start_worker("--workers", "4")
    ids = out["ids"]
    wait_for(lambda: set(_statuses(p, ids).values()) == {"SUCCESS"}, timeout=120, what="every accepted job to run")


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_data_dir_is_a_clear_error_and_nothing_is_lost(make_project, wait_for, small_disk, backend):
    mount, remount = small_disk
    remount("size=16m")  # room for SQLite's write-ahead log: this test is about read-only, not full
    p = _project(make_project, backend, NUVOM_DATA_DIR=str(mount / "data"))
    before = _enqueue(p, "print(json.dumps([j.id for j in work.map(range(20))]))")
    remount("ro")
    failed = p.python("from tasks import work\nwork.delay(1)", check=False)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("nuvom.errors.BackendError") and any(w in last.lower() for w in ("read-only", "writable")), (
        last
    )
    remount("rw")
    p.start_worker("--workers", "2")
    wait_for(lambda: set(_statuses(p, before).values()) == {"SUCCESS"}, timeout=60, what="the earlier jobs to run")


SOAK_SECS = float(os.environ.get("NUVOM_E2E_SOAK_SECS", "60"))

PRODUCER = """
    import json, random, time
    from tasks import chaos
    random.seed(7)
    ids, n, end = [], 0, time.monotonic() + {secs}
    while time.monotonic() < end:
        batch = [(n + i, random.choice([0, 0, 0.001, 0.01, 0.05]), random.random() < 0.2) for i in range(20)]
        n += len(batch)
        ids += [j.id for j in chaos.map(batch)]
        time.sleep(0.05)
    print(json.dumps(ids))
"""


def test_producer_and_three_workers_then_every_job_ends_in_exactly_one_state(make_project, wait_for):
    p = _project(make_project, "sqlite")
    for _ in range(3):
        p.start_worker("--workers", "4")
    ids = json.loads(p.python(PRODUCER.replace("{secs}", str(SOAK_SECS)), timeout=SOAK_SECS + 120).stdout)
    assert len(ids) > 500
    wait_for(
        lambda: all(s in ("SUCCESS", "FAILED") for s in _statuses(p, ids).values()),
        timeout=120,
        interval=0.5,
        what="every job to finish",
    )
    records = p.records(ids)
    audit = json.loads(
        p.python(
            """
            import json, sys
            from nuvom.sdk import list_jobs
            ids = set(json.load(sys.stdin))
            rows = [j for j in list_jobs(limit=10**9) if j.id in ids]
            print(json.dumps({"rows": len(rows), "distinct": len({j.id for j in rows})}))
            """,
            input=json.dumps(ids),
        ).stdout
    )
    # Exactly one terminal record per job, no job missing.
    assert audit == {"rows": len(ids), "distinct": len(ids)}
    for job_id, record in records.items():
        args = record["args"]
        if record["status"] == "SUCCESS":
            assert record["result"] == args[0] and not args[2]
        else:
            # chaos fails every attempt of a failing item: retries used up, then FAILED.
            assert args[2] and record["attempts"] == 4 and record["error"]["message"] == f"chaos {args[0]} fails"
    for proc in p.workers:
        code, out = p.stop_worker(proc, signal.SIGINT)
        assert code == 0, out[-2000:]
