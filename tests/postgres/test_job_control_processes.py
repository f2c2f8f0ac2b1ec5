"""Job control (issue 29) with real worker processes on one real PostgreSQL, some
of them killed with SIGKILL: unique keys raced by two producers, a fan-in
group, chains of three, and a running job cancelled from another process."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
from nuvom.job import JobStatus

from .conftest import TASKS, Project, wait_until

sys.path.insert(0, str(Path(__file__).parents[1]))
from scenarios import job_control_processes as shared
from scenarios.job_control_processes import LEASE, kill_mid_run, produce, runs_by_job


def flow_project(project: Project) -> Project:
    return shared.flow_project(project, TASKS)


def test_unique_jobs_raced_by_two_producers_through_killed_workers_stay_one_per_key(project, results, queue):
    flow_project(project)
    keys = [f"u{i}" for i in range(12)]
    producer = (
        "import sys, time, tasks\n"
        f"keys = {keys!r}\n"
        "for _ in range(8):\n"
        "    for key in keys:\n"
        "        job = tasks.once.delay(key, 0.3)\n"
        "        print(key, job.id, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    (victim,) = project.start_workers(1, **LEASE)
    # Every few milliseconds, from the test's own connection: never two queued-or-running jobs of one key.
    stop, doubles = threading.Event(), []

    def watch() -> None:
        with psycopg.connect(project.url, autocommit=True) as conn:
            while not stop.is_set():
                doubles.extend(
                    conn.execute(
                        f"SELECT unique_key, count(*) FROM {queue.sql.queue} "  # type: ignore[arg-type]
                        "WHERE unique_key IS NOT NULL GROUP BY 1 HAVING count(*) > 1"
                    ).fetchall()
                )
                time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", producer], cwd=project.root, env=project.env(), stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        killed = kill_mid_run(project, victim)
        killed_at = time.time()
        project.start_workers(2, **LEASE)
        outputs = [p.communicate(timeout=120)[0] for p in producers]
        assert [p.returncode for p in producers] == [0, 0]
        returned = [line.split() for out in outputs for line in out.splitlines()]
        ids = {job_id for _, job_id in returned}
        wait_until(lambda: all(results.get_full(job_id) is not None for job_id in ids), 120, "every job's outcome")
    finally:
        stop.set()
        watcher.join()
    project.stop()
    assert doubles == []
    records = {job_id: results.get_full(job_id) for job_id in ids}
    assert {r.status for r in records.values()} == {JobStatus.SUCCESS}
    assert {r.args[0] for r in records.values()} == set(keys)  # every key's job ran to an outcome
    assert all(r.unique_key is not None for r in records.values())
    # Two producers asking for a key at once got the same job: far fewer jobs than calls.
    assert len(ids) < len(returned) / 2
    # Runs of one key never overlap: the next job of a key is queued only once
    # the last has left the queue. A run the kill cut short ends at the kill.
    ends = {(f[3], f[1]): float(f[2]) for f in project.run_lines() if f[0] == "end"}
    by_key: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for job_id, runs in runs_by_job(project).items():
        for key, pid, start, _ in runs:
            assert (job_id, pid) in ends or pid == killed
            by_key[key].append((float(start), ends.get((job_id, pid), killed_at), job_id))
    for key, spans in by_key.items():
        for (start_a, end_a, a), (start_b, end_b, b) in itertools.combinations(spans, 2):
            assert a == b or end_a <= start_b or end_b <= start_a, (key, a, b)
    # A job ran twice only if the killed worker had started it; the kill cut runs short.
    for job_id, runs in runs_by_job(project).items():
        if len(runs) > 1:
            assert killed in {pid for _, pid, _, _ in runs}, runs
    assert any(
        pid == killed and (job_id, pid) not in ends
        for job_id, runs in runs_by_job(project).items()
        for _, pid, _, _ in runs
    )


def test_a_fan_in_callback_runs_once_with_every_result_through_killed_workers(project, results, queue):
    flow_project(project)
    (victim,) = project.start_workers(1, **LEASE)
    made = produce(
        project,
        "import json, tasks\n"
        "from nuvom.workflow import group\n"
        "parts = tasks.part.map([(i,) for i in range(24)])\n"
        "callback = group(parts).then(tasks.gather)\n"
        "print(json.dumps({'parts': [p.id for p in parts], 'callback': callback.id}))\n",
    )
    killed = kill_mid_run(project, victim)
    project.start_workers(2, **LEASE)
    record = wait_until(lambda: results.get_full(made["callback"]), 120, "the callback's outcome")
    project.stop()
    assert record.status is JobStatus.SUCCESS and record.result == [i * i for i in range(24)]
    assert record.attempts == 1 and project.executions()["gather"] == 1  # exactly once
    parts = [results.get_full(job_id) for job_id in made["parts"]]
    assert all(p is not None and p.status is JobStatus.SUCCESS for p in parts)
    rerun = [job_id for job_id, runs in runs_by_job(project).items() if len(runs) > 1]
    for job_id in rerun:
        assert job_id in made["parts"] and killed in {f[1] for f in runs_by_job(project)[job_id]}
    assert rerun  # the kill cut parts short: they ran again elsewhere


def test_chains_of_three_run_each_link_once_its_parent_succeeded_through_killed_workers(project, results, queue):
    flow_project(project)
    (victim,) = project.start_workers(1, **LEASE)
    made = produce(
        project,
        "import json, tasks\n"
        "chains = {}\n"
        "for c in range(12):\n"
        "    first = tasks.link.delay(0, f'c{c}', 0)\n"
        "    second = first.then(tasks.link, f'c{c}', 1)\n"
        "    third = second.then(tasks.link, f'c{c}', 2)\n"
        "    chains[f'c{c}'] = [first.id, second.id, third.id]\n"
        "print(json.dumps(chains))\n",
    )
    killed = kill_mid_run(project, victim)
    project.start_workers(2, **LEASE)
    ends = [ids[-1] for ids in made.values()]
    wait_until(lambda: all(results.get_full(job_id) for job_id in ends), 120, "every chain's end")
    project.stop()
    records = {job_id: results.get_full(job_id) for ids in made.values() for job_id in ids}
    assert all(r is not None and r.status is JobStatus.SUCCESS for r in records.values())  # none lost
    assert [records[ids[-1]].result for ids in made.values()] == [3] * 12
    runs = runs_by_job(project)
    for ids in made.values():
        for parent, child in itertools.pairwise(ids):
            # Every run of a link started after its parent's outcome was stored.
            assert min(float(start) for _, _, start, _ in runs[child]) >= records[parent].finished_at
    rerun = [job_id for job_id, job_runs in runs.items() if len(job_runs) > 1]
    for job_id in rerun:  # duplicates come only from the killed worker
        assert killed in {pid for _, pid, _, _ in runs[job_id]}, runs[job_id]
    assert rerun  # the kill cut links short: they ran again elsewhere
    assert set(Counter(fields[0] for ids in runs.values() for fields in ids)) == {
        f"{chain}-{step}" for chain in made for step in range(3)
    }


def test_a_running_job_is_cancelled_from_another_process(project, results, queue):
    flow_project(project)
    project.start_workers(1)
    made = produce(
        project,
        "import json, tasks\nprint(json.dumps([tasks.spin.delay('spin').id, tasks.nap.delay('nap').id]))\n",
    )
    wait_until(lambda: {f[0] for f in project.run_lines()} >= {"spin", "nap"}, 60, "both jobs running")
    cancel = "import sys\nfrom nuvom.sdk import cancel_job\njob = cancel_job(sys.argv[1])\nprint(job.status.value)\n"
    for job_id in made:
        out = subprocess.run(
            [sys.executable, "-c", cancel, job_id], cwd=project.root, env=project.env(), capture_output=True, text=True
        )
        assert out.returncode == 0 and out.stdout.strip() == "RUNNING", out.stderr
    for job_id in made:
        record = results.wait(job_id, timeout=30)
        assert record is not None and record.status is JobStatus.FAILED, record
        assert record.error.type == "Cancelled" and record.attempts == 1
    assert Counter(f[0] for f in project.run_lines()) == {"spin": 1, "nap": 1}  # never retried
    assert queue.qsize() == 0 and queue.running() == 0  # the requests went with the jobs
    assert queue.cancel_requested(made) == set()
    # Asking again, once the jobs are finished: nothing to cancel.
    out = subprocess.run(
        [sys.executable, "-c", cancel.replace("job.status.value", "job"), made[0]],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "None", out.stderr
