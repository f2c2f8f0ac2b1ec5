"""The nuvom demo: queue a few thousand jobs, run `nuvom runworker`, watch them go.

    python examples/checksums/run_demo.py [--files 3000] [--workers 4]

It makes a folder of files, queues a checksum job per file plus uploads (each
fails once, then succeeds on retry), thumbnails (a few time out) and a few
checksums of missing files (they fail), starts a real worker process on the
embedded default store (SQLite when nuvom-sqlite is installed), shows progress,
prints a summary and stops the worker with SIGINT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    work = HERE / ".demo"
    shutil.rmtree(work, ignore_errors=True)
    (work / "files").mkdir(parents=True)
    os.environ["NUVOM_DATA_DIR"] = str(work / ".nuvom")
    os.environ.setdefault("NUVOM_LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(HERE))

    import tasks
    from nuvom.backends import get_result_backend, resolve_backend_names
    from nuvom.config import get_settings
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    backends = resolve_backend_names(get_settings())
    console.print(
        f"[bold]nuvom demo[/] — queue: {backends['queue'][0]} ({backends['queue'][1]}), data in {work / '.nuvom'}"
    )

    for i in range(args.files):
        (work / "files" / f"file-{i:05d}.txt").write_bytes(os.urandom(2048))

    started = time.perf_counter()
    jobs = tasks.checksum.map(str(p) for p in sorted((work / "files").iterdir()))
    jobs += tasks.checksum.map(str(work / "files" / f"missing-{i}.txt") for i in range(10))
    jobs += tasks.upload.map(f"file-{i:05d}.txt" for i in range(200))
    jobs += tasks.thumbnail.map([(f"img-{i}", i < 3) for i in range(100)])
    total = len(jobs)
    console.print(f"queued {total} jobs in {time.perf_counter() - started:.2f} s")

    worker = subprocess.Popen(
        [sys.executable, "-m", "nuvom.cli", "runworker", "--workers", str(args.workers)],
        cwd=HERE,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = get_result_backend()
    try:
        with Progress(
            TextColumn("running"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            bar = progress.add_task("jobs", total=total)
            deadline = time.monotonic() + 120
            done = 0
            while done < total:
                if worker.poll() is not None:
                    console.print(f"[red]the worker exited early ({worker.returncode}):[/] {worker.stderr.read()}")
                    return 1
                if time.monotonic() > deadline:
                    console.print("[red]not finished after 120 s[/]")
                    return 1
                done = results.count()
                progress.update(bar, completed=done)
                time.sleep(0.1)
        elapsed = time.perf_counter() - started
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = -9

    records = [results.get_full(j.id) for j in jobs]
    succeeded = sum(1 for r in records if r and r.status.value == "SUCCESS")
    retried = sum(1 for r in records if r and r.status.value == "SUCCESS" and r.attempts > 1)
    timed_out = sum(1 for r in records if r and r.history and r.history[-1].outcome == "timeout")
    failed = sum(1 for r in records if r and r.status.value == "FAILED")
    table = Table(title="nuvom demo summary")
    for column in ("jobs", "succeeded", "of which retried", "failed", "of which timed out", "jobs/s"):
        table.add_column(column, justify="right")
    table.add_row(str(total), str(succeeded), str(retried), str(failed), str(timed_out), f"{total / elapsed:,.0f}")
    console.print(table)
    console.print(f"worker stopped with SIGINT, exit code {code}")
    ok = succeeded + failed == total and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
