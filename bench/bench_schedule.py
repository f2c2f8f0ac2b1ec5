"""Scheduling delay and the idle cost of the firing loop.

Delay: how late a tick's job is queued after the tick's due time (the job's
``created_at`` minus the tick), with 1 and 3 real worker processes firing one
``interval`` schedule on one SQLite file (or file data dir). Idle: CPU used by
a firing loop alone over an empty schedule table.

    python bench/bench_schedule.py [--backend sqlite|file] [--secs 30] [--interval 0.25]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nuvom.app import App
from nuvom.config import Settings
from nuvom.schedule import Schedule, tick_job_id

TASKS = "from nuvom.task import task\n\n@task\ndef beat():\n    return None\n"
WORKER = (
    "import os, pathlib, tasks; from nuvom.worker import Worker; "
    "w = Worker(max_workers=2); w.start(); pathlib.Path('ready-%d' % os.getpid()).touch(); w.run_forever()"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def delays(backend: str, workers: int, secs: float, interval: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="nuvom-bench-sched-") as tmp:
        root = Path(tmp)
        (root / "tasks.py").write_text(TASKS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        env.update(
            NUVOM_QUEUE_BACKEND=backend,
            NUVOM_RESULT_BACKEND=backend,
            NUVOM_DATA_DIR=str(root / "data"),
            NUVOM_LOG_LEVEL="ERROR",
            PYTHONPATH=str(root),
        )
        app = App(Settings(queue_backend=backend, result_backend=backend, data_dir=root / "data"))
        procs = [subprocess.Popen([sys.executable, "-c", WORKER], cwd=root, env=env) for _ in range(workers)]
        try:
            while not all((root / f"ready-{p.pid}").exists() for p in procs):
                time.sleep(0.05)
            start = time.time() + 1.0
            s = Schedule(key="bench", task="beat", task_path="tasks:beat", interval=interval, anchor=start)
            s.next_run_at = start
            app.queue.upsert_schedule(s)  # type: ignore[attr-defined]
            time.sleep(secs + 1.0)
            app.queue.set_schedule_paused("bench", True)  # type: ignore[attr-defined]
            time.sleep(1.0)
            ticks = {
                tick_job_id("bench", start + k * interval): start + k * interval for k in range(int(secs / interval))
            }
            out = []
            for job_id, tick in ticks.items():
                job = app.get_job(job_id)
                if job is not None:
                    out.append(job.created_at - tick)
            return out
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(30)
            app.close()


def idle_cpu(backend: str, secs: float) -> float:
    """CPU seconds per wall second of a firing loop over an empty table."""
    from nuvom._scheduler import SchedulerLoop

    with tempfile.TemporaryDirectory(prefix="nuvom-bench-idle-") as tmp:
        app = App(Settings(queue_backend=backend, result_backend=backend, data_dir=Path(tmp)))
        loop = SchedulerLoop(app).start()
        time.sleep(0.5)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(secs)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        loop.stop()
        app.close()
        return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "file"])
    parser.add_argument("--secs", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    print(f"backend {args.backend}, interval {args.interval} s, {args.secs:g} s per run")
    for workers in (1, 3):
        d = delays(args.backend, workers, args.secs, args.interval)
        ms = [x * 1e3 for x in d]
        print(
            f"{workers} worker(s): {len(ms)} ticks, delay p50 {statistics.median(ms):.1f} ms, "
            f"p99 {percentile(ms, 0.99):.1f} ms, max {max(ms):.1f} ms"
        )
    cpu = idle_cpu(args.backend, 10.0)
    print(f"idle firing loop, empty schedule table: {cpu * 100:.3f} % of one core")


if __name__ == "__main__":
    main()
