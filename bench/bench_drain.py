"""How fast one worker process drains a queue: jobs/s, per store, per interpreter.

    python bench/bench_drain.py                                   # this checkout, sqlite and file
    python bench/bench_drain.py --python /venv-a/bin/python --python /venv-b/bin/python --rounds 5

Each round queues ``--jobs`` no-op jobs with one ``.map()``, then starts one
``python -m nuvom.worker tasks --threads 4`` process and waits until every job
is stored. Each job returns the time it ran, so the rate is the jobs between
the first and the last run divided by that time: start-up and the final
polling are not counted. On a shared, loaded machine wall time swings widely,
so the worker's CPU time per job is reported too (Linux: ``/proc/<pid>/stat``,
from its first stored job to its last): it moves far less with other load.
Rounds are interleaved (every interpreter and store once per round); medians
are printed. Give two interpreters (two virtualenvs with different checkouts
installed) to compare a change with its base.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import proc_cpu

TASKS = """
import time
from nuvom.task import task


@task
def stamp(i):
    return time.time()
"""

QUEUE = """
import sys, tasks
tasks.stamp.map([(i,) for i in range(int(sys.argv[1]))])
"""

COUNT = """
from nuvom.app import default_app

print(default_app().results.count())
"""

RATE = """
from nuvom.app import default_app

times = [job.result for job in default_app().results.list_jobs(limit=10**9)]
print((len(times) - 1) / (max(times) - min(times)))
"""


def one_round(python: str, backend: str, jobs: int) -> tuple[float, float]:
    """(jobs/s, worker CPU microseconds a job)."""
    root = Path(tempfile.mkdtemp(prefix="nuvom-drain-"))
    try:
        (root / "tasks.py").write_text(TASKS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env.update(
            NUVOM_QUEUE_BACKEND=backend,
            NUVOM_RESULT_BACKEND=backend,
            NUVOM_DATA_DIR=str(root / ".nuvom"),
            NUVOM_LOG_LEVEL="WARNING",
            PYTHONPATH=str(root),
        )
        subprocess.run([python, "-c", QUEUE, str(jobs)], cwd=root, env=env, check=True)
        worker = subprocess.Popen([python, "-m", "nuvom.worker", "tasks", "--threads", "4"], cwd=root, env=env)

        def count() -> int:
            out = subprocess.run([python, "-c", COUNT], cwd=root, env=env, capture_output=True, text=True, check=True)
            return int(out.stdout)

        try:
            first: tuple[int, float] | None = None
            while True:
                time.sleep(0.2)  # polling interval while the worker drains
                cpu, done = proc_cpu(worker.pid), count()
                if first is None and done > 0:
                    first = (done, cpu)
                if done >= jobs:
                    break
            assert first is not None
            rate = subprocess.run([python, "-c", RATE], cwd=root, env=env, capture_output=True, text=True, check=True)
            return float(rate.stdout), (cpu - first[1]) / max(1, done - first[0]) * 1e6
        finally:
            worker.terminate()
            worker.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", help="interpreter to run (repeat to compare)")
    parser.add_argument("--backend", action="append", choices=("sqlite", "file"), help="store (repeatable)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pythons = args.python or [sys.executable]
    backends = args.backend or ["sqlite", "file"]
    rates: dict[tuple[str, str], list[float]] = {(p, b): [] for p in pythons for b in backends}
    cpus: dict[tuple[str, str], list[float]] = {(p, b): [] for p in pythons for b in backends}
    for r in range(args.rounds):
        order = pythons if r % 2 == 0 else pythons[::-1]
        for backend in backends:
            for python in order:
                rate, cpu = one_round(python, backend, args.jobs)
                rates[python, backend].append(rate)
                cpus[python, backend].append(cpu)
                print(f"round {r + 1} {backend:6} {python}: {rate:,.0f} jobs/s, {cpu:.0f} us CPU a job", flush=True)
    print(f"\n{args.jobs} jobs a round, {args.rounds} rounds, one worker with 4 threads; medians:")
    for backend in backends:
        base: tuple[float, float] | None = None
        for python in pythons:
            rate, cpu = statistics.median(rates[python, backend]), statistics.median(cpus[python, backend])
            ratio = "" if base is None else f"  ({rate / base[0]:.2f}x the jobs/s, {cpu / base[1]:.2f}x the CPU)"
            base = base or (rate, cpu)
            print(f"  {backend:6} {python}: {rate:,.0f} jobs/s, {cpu:.0f} us CPU a job{ratio}")


if __name__ == "__main__":
    main()
