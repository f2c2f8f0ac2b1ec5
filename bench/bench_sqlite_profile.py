"""Where a sqlite worker process spends its time: py-spy on a worker draining a full queue.

    pip install py-spy
    python bench/bench_sqlite_profile.py [--jobs 60000] [--secs 4]

Prints the functions with the most samples (own time, and time including
callees), grouped by file, so that engine cost and backend cost can be told apart.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sqlite import NUVOM_TASKS, NUVOM_WORKER, nuvom_env, start_processes, stop_processes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=60_000)
    parser.add_argument("--secs", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (CPU in Python)")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="nuvom-profile-"))
    (workdir / "tasks.py").write_text(NUVOM_TASKS)
    from nuvom.job import Job
    from nuvom.sqlite import SQLiteJobQueue

    queue = SQLiteJobQueue(path=workdir / "data" / "nuvom.db")
    queue.enqueue_many([Job(func_name="noop", task_path="tasks:noop", args=[i]) for i in range(args.jobs)])
    procs = start_processes(NUVOM_WORKER.format(threads=args.threads), 1, workdir, nuvom_env(workdir))
    out = workdir / "profile.txt"
    try:
        time.sleep(0.3)
        subprocess.run(
            [
                spy,
                "record",
                "--pid",
                str(procs[0].pid),
                "--duration",
                str(int(args.secs)),
                "--rate",
                "400",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            check=True,
            capture_output=True,
        )
        left = queue.qsize()
    finally:
        stop_processes(procs)
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        thread = frames[0] if frames else "?"
        frames = frames[1:]
        if not frames:
            continue
        samples += n
        leaf = frames[-1]
        own[leaf] += n
        by_file[_file_of(leaf)] += n
        for f in set(frames):
            total[f] += n
        del thread
    print(f"{samples} samples; queue still held {left} jobs when sampling ended (must be > 0)")
    print("\n-- own time by file --")
    for f, n in by_file.most_common(15):
        print(f"{100 * n / samples:5.1f}%  {f}")
    print("\n-- own time by function --")
    for f, n in own.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {f}")
    print("\n-- inclusive time by function --")
    for f, n in total.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {f}")
    print(f"\nraw profile: {out}")
    os.environ.pop("NUVOM_DATA_DIR", None)


def _file_of(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    if "(" in frame:
        loc = frame.rsplit("(", 1)[1].rstrip(")")
        path = loc.rsplit(":", 1)[0]
        parts = Path(path).parts
        return "/".join(parts[-3:])
    return frame


if __name__ == "__main__":
    main()
