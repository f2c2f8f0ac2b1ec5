"""nuvom-discovery benchmark, beside the earlier nuvom's scanner on the same tree.

    python bench/bench_discovery.py                         # nuvom-discovery only
    python bench/bench_discovery.py --old-venv /tmp/venv-oldnuvom --runs 7

The tree (``bench_discovery_tree.py``): a copy of this Python's standard
library plus generated application modules defining four tasks each, 5,000
``.py`` files in all. Measured, each ``--runs`` times, medians reported:

* ``cold``: no manifest; every file is read, hashed and (when it may define
  a task) parsed, and the manifest is written;
* ``warm``: the same scan again with nothing changed;
* ``one changed``: warm, with one task module edited in between.

Each is timed in-process (the ``discover_tasks`` call) and end to end (a new
``python`` process that imports nuvom.discovery and scans: what a command
costs). The earlier nuvom (PyPI ``nuvom==0.11.2``, installed in its own
virtual environment given with ``--old-venv``, e.g. ``python -m venv
/tmp/venv-oldnuvom && /tmp/venv-oldnuvom/bin/pip install nuvom==0.11.2``) is
timed the same two ways: its ``discover_tasks`` + manifest update in-process,
and its ``nuvom discover tasks`` command. The OS file cache is warm for every
run of both ("cold" means no manifest, not an empty page cache).

Figures go to stdout and to ``bench/results/discovery.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_discovery_tree import build_tree  # noqa: E402

# Run by the old nuvom's interpreter: its scanner and manifest update, timed in-process.
OLD_INPROCESS = r"""
import json, os, sys, time, logging
from pathlib import Path
logging.disable(logging.CRITICAL)
from nuvom.discovery.discover_tasks import discover_tasks
from nuvom.discovery.manifest import ManifestManager
root, manifest, runs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
out = {"cold": [], "warm": []}
for kind in ("cold", "warm"):
    for _ in range(runs):
        if kind == "cold" and manifest.exists():
            manifest.unlink()
        t = time.perf_counter()
        refs = discover_tasks(root_path=root, include=[], exclude=[])
        ManifestManager(manifest).diff_and_save(refs)
        out[kind].append(time.perf_counter() - t)
out["tasks"] = len(refs)
print(json.dumps(out))
"""

NEW_PROCESS = r"""
import sys
from nuvom.discovery import discover_tasks
report = discover_tasks(sys.argv[1], sys.argv[2])
print(len(report.tasks), report.files_scanned)
"""


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}


def timed_process(cmd: list[str], cwd: Path | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def bench_new(tree: Path, work: Path, runs: int) -> dict[str, Any]:
    from nuvom.discovery import discover_tasks

    manifest = work / "manifest-new.json"
    res: dict[str, Any] = {}
    cold, warm, one = [], [], []
    report = None
    for _ in range(runs):
        manifest.unlink(missing_ok=True)
        report = discover_tasks(tree, manifest)
        cold.append(report.elapsed)
    assert report is not None
    files, tasks = report.files_scanned, len(report.tasks)
    for _ in range(runs):
        report = discover_tasks(tree, manifest)
        assert report.files_parsed == 0, "warm scan parsed files"
        warm.append(report.elapsed)
    victim = next((tree / "app").rglob("jobs_*.py"))
    original = victim.read_text()
    try:
        for i in range(runs):
            victim.write_text(original + f"\n# edit {i}\n")
            report = discover_tasks(tree, manifest)
            one.append(report.elapsed)
    finally:
        victim.write_text(original)
        discover_tasks(tree, manifest)
    res["in_process"] = {"cold": summary(cold), "warm": summary(warm), "one_changed": summary(one)}
    proc_cold, proc_warm = [], []
    cmd = [sys.executable, "-c", NEW_PROCESS, str(tree), str(manifest)]
    for _ in range(runs):
        manifest.unlink(missing_ok=True)
        proc_cold.append(timed_process(cmd))
    for _ in range(runs):
        proc_warm.append(timed_process(cmd))
    res["process"] = {"cold": summary(proc_cold), "warm": summary(proc_warm)}
    res["files"], res["tasks"] = files, tasks
    return res


def bench_old(tree: Path, work: Path, venv: Path, runs: int) -> dict[str, Any]:
    python, nuvom = venv / "bin" / "python", venv / "bin" / "nuvom"
    out = subprocess.run(
        [str(python), "-c", OLD_INPROCESS, str(tree), str(work / "manifest-old.json"), str(runs)],
        check=True,
        capture_output=True,
        text=True,
    )
    inproc = json.loads(out.stdout.strip().splitlines()[-1])
    res: dict[str, Any] = {
        "in_process": {"cold": summary(inproc["cold"]), "warm": summary(inproc["warm"])},
        "tasks": inproc["tasks"],
    }
    # Its command writes .nuvom/manifest.json in the working directory: the tree.
    old_manifest = tree / ".nuvom" / "manifest.json"
    cold, warm = [], []
    try:
        for _ in range(runs):
            old_manifest.unlink(missing_ok=True)
            cold.append(timed_process([str(nuvom), "discover", "tasks"], cwd=tree))
        for _ in range(runs):
            warm.append(timed_process([str(nuvom), "discover", "tasks"], cwd=tree))
    finally:
        old_manifest.unlink(missing_ok=True)
    res["command"] = {"cold": summary(cold), "warm": summary(warm)}
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=5000, help="size of the tree in .py files")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "nuvom-bench-discovery-tree")
    parser.add_argument("--old-venv", type=Path, help="virtual environment with nuvom==0.11.2 installed")
    args = parser.parse_args()

    counts = build_tree(args.tree, args.files)
    print(f"tree {args.tree}: {counts['stdlib']} stdlib + {counts['generated']} generated files")
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # Other work on the machine skews every figure: recorded to read them by.
            "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "tree": counts,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        new = bench_new(args.tree, work, args.runs)
        results["nuvom_discovery"] = new
        files = new["files"]
        ip = new["in_process"]
        print(f"nuvom-discovery: {files} files, {new['tasks']} tasks")
        print(
            f"  in-process  cold {ip['cold']['median']:.3f} s ({files / ip['cold']['median']:,.0f} files/s)"
            f"  warm {ip['warm']['median']:.3f} s  one changed {ip['one_changed']['median']:.3f} s"
        )
        pr = new["process"]
        print(f"  process     cold {pr['cold']['median']:.3f} s  warm {pr['warm']['median']:.3f} s")
        if args.old_venv:
            old = bench_old(args.tree, work, args.old_venv, args.runs)
            results["nuvom_0_11_2"] = old
            oi, oc = old["in_process"], old["command"]
            print(f"nuvom 0.11.2: {old['tasks']} tasks")
            print(
                f"  in-process  cold {oi['cold']['median']:.3f} s ({files / oi['cold']['median']:,.0f} files/s)"
                f"  warm {oi['warm']['median']:.3f} s"
            )
            print(f"  command     cold {oc['cold']['median']:.3f} s  warm {oc['warm']['median']:.3f} s")
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_end"] = os.getloadavg()
        print(f"load average (1, 5, 15 min) at start {results['machine']['load_average_start']}, end {os.getloadavg()}")
    out = HERE / "results" / "discovery.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
