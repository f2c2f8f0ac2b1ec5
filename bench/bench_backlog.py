"""A long backlog: one worker draining N queued jobs, 1k vs 200k (issue 12, item 1).

    python bench/bench_backlog.py [--backend file|sqlite] [--queued 1000 200000] [--rounds 3]

Each round, in a fresh data dir: this process queues N trivial jobs with
``.map()`` (in chunks of 10,000) before any worker runs; then one worker
process (``python -m nuvom.worker tasks``, 4 threads, batch 16) is started
and timed until every job has run and no claim is left. Reported per N: jobs/s
while draining (from the first runs seen, so start-up is not counted) and with start-up (medians),
the worker's peak RSS (VmHWM), the most files seen in ``claimed/`` (file
backend; sampled every 50 ms), jobs run more than once (every run appends
its key to a log) and "claim expired" lines in the worker's log.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TASKS = """
import os
from nuvom.task import task

RUNS = os.environ["BENCH_RUNS"]


@task
def work(x):
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\\n" % x)
    finally:
        os.close(fd)
    return x + 1
"""


def _rss_peak_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def one_round(backend: str, queued: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="nuvom-backlog-"))
    (root / "tasks.py").write_text(TASKS)
    env = {
        **os.environ,
        "NUVOM_QUEUE_BACKEND": backend,
        "NUVOM_RESULT_BACKEND": backend,
        "NUVOM_DATA_DIR": str(root / ".nuvom"),
        "NUVOM_MAX_WORKERS": "4",
        "NUVOM_BATCH_SIZE": "16",
        "NUVOM_LOG_LEVEL": "WARNING",
        "BENCH_RUNS": str(root / "runs.log"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
    }
    code = (
        "import sys, os; sys.path.insert(0, os.getcwd())\n"
        "import tasks\n"
        f"n = {queued}\n"
        "for start in range(0, n, 10000):\n"
        "    tasks.work.map(range(start, min(n, start + 10000)))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True, capture_output=True)
    log = (root / "worker.log").open("wb")
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "nuvom.worker", "tasks"]
    worker = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=log)
    claimed_dir = root / ".nuvom" / "claimed"
    most_claimed, rss = 0, 0
    probe = _probe(backend, root)
    first: tuple[float, int] | None = None  # when the first runs were seen, and how many
    try:
        while (done := probe()) < queued or (backend == "file" and any(os.scandir(claimed_dir))):
            if first is None and done > 0:
                first = (time.perf_counter(), done)
            if backend == "file" and claimed_dir.is_dir():
                with os.scandir(claimed_dir) as entries:
                    most_claimed = max(most_claimed, sum(1 for _ in entries))
            rss = max(rss, _rss_peak_kib(worker.pid))
            time.sleep(0.05)
        end = time.perf_counter()
        elapsed = end - started
        # Per-job cost while draining: from the first runs seen to the end, so
        # the worker's start-up does not weigh on 1k more than on 200k.
        t0, n0 = first or (started, 0)
        drain_rate = (queued - n0) / max(1e-9, end - t0)
        rss = max(rss, _rss_peak_kib(worker.pid))
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
    runs = Counter((root / "runs.log").read_text().split())
    twice = sum(1 for c in runs.values() if c > 1)
    expired = (root / "worker.log").read_text(errors="replace").count("claim expired")
    return {
        "rate": queued / elapsed,
        "drain_rate": drain_rate,
        "rss_mib": rss / 1024,
        "most_claimed": most_claimed,
        "twice": twice,
        "expired": expired,
    }


def _probe(backend: str, root: Path):  # type: ignore[no-untyped-def]
    """Runs so far, read from the end of the runs log: cheap at any queue
    length (counting result files would cost a listing of 200k entries)."""
    runs = root / "runs.log"
    seen = [0, 0]  # bytes read, lines counted

    def count() -> int:
        try:
            with runs.open("rb") as f:
                f.seek(seen[0])
                chunk = f.read()
        except FileNotFoundError:
            return 0
        seen[0] += len(chunk)
        seen[1] += chunk.count(b"\n")
        return seen[1]

    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="file", choices=["file", "sqlite"])
    parser.add_argument("--queued", type=int, nargs="+", default=[1000, 200000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, {args.backend}")
    for queued in args.queued:
        rounds = [one_round(args.backend, queued) for _ in range(args.rounds)]
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        worst = {k: max(r[k] for r in rounds) for k in ("twice", "expired", "most_claimed")}
        print(
            f"queued {queued:>7,}: {med['drain_rate']:,.0f} jobs/s draining ({med['rate']:,.0f} with start-up), "
            f"peak RSS {med['rss_mib']:.0f} MiB, "
            f"claimed/ at most {worst['most_claimed']}, ran twice {worst['twice']}, "
            f"claim expired {worst['expired']} (medians / worst of {args.rounds})",
            flush=True,
        )


if __name__ == "__main__":
    main()
