"""Pieces the bench scripts share: child processes, what /proc says of them, the machine and its load.

Imported by the scripts beside it (``python bench/<script>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import importlib
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple


# -- child processes --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_beside(target: Callable[..., None], *args: Any) -> Any:
    """``target(*args, ready)`` in a spawned process, returned once it set ``ready``
    (a floor's worker, started before the producer beside it is timed)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError(f"{getattr(target, '__name__', target)}: the floor's worker did not start")
    return proc


def join_beside(proc: Any) -> None:
    """Wait for a process of :func:`start_beside`; an error if it failed."""
    proc.join(60)
    if proc.exitcode != 0:
        proc.kill()
        raise RuntimeError(f"the floor's worker ended with {proc.exitcode}")


def start_processes(code: str, n: int, workdir: Path, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """``n`` processes running ``python -c code`` in ``workdir``, each of which
    touches ``ready-<pid>`` when it is ready; returns once all have."""
    for old in workdir.glob("ready-*"):
        old.unlink()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"process-{i}.log", "ab"),  # noqa: SIM115
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + 60
    while len(list(workdir.glob("ready-*"))) < n:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"process exited early; see {workdir}/process-*.log")
        if time.monotonic() > deadline:
            raise RuntimeError("processes did not become ready")
        time.sleep(0.01)
    return procs


def spawn(args: Sequence[str], workdir: Path, env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    """``python <args>`` in ``workdir``, its stderr appended to ``workdir/log``."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / log, "ab"),
    )


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    """Signal each process by its PID, wait; kill one that is still there after 30 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for_count(count: Callable[[], int], jobs: int, stall_secs: float = 30.0) -> int:
    """Poll ``count()`` until it reaches ``jobs``; give up when it stops growing
    for ``stall_secs`` (a system that lost jobs) and return what it reached."""
    last, last_change = -1, time.monotonic()
    while True:
        n = count()
        if n >= jobs:
            return n
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > stall_secs:
            return n
        time.sleep(0.005)


def import_fresh(module: str, workdir: Path) -> Any:
    """Import ``module`` from ``workdir``, again if an earlier run imported one of that name."""
    sys.modules.pop(module, None)
    sys.path.insert(0, str(workdir))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(workdir))


# -- what /proc says (Linux) --------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0.0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    """Resident set size of a process in bytes (``VmRSS``); 0 where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sample(NamedTuple):
    t: float  # time.perf_counter()
    done: int  # what count() returned
    cpu: float  # CPU seconds of the watched processes, summed
    rss: int  # their resident bytes, summed


def sample_until(
    count: Callable[[], int],
    n: int,
    pids: Sequence[int],
    interval: float,
    *,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    stall_secs: float = 60.0,
) -> list[Sample]:
    """Read ``count()`` and the CPU and RSS of ``pids`` every ``interval`` seconds
    until ``count()`` reaches ``n``. Raises RuntimeError when one of ``procs``
    exits or the count stops moving for ``stall_secs``."""
    samples: list[Sample] = []
    last_change = time.monotonic()
    while True:
        t, done = time.perf_counter(), count()
        samples.append(Sample(t, done, sum(map(proc_cpu, pids)), sum(map(proc_rss, pids))))
        if done >= n:
            return samples
        if len(samples) > 1 and done != samples[-2].done:
            last_change = time.monotonic()
        elif time.monotonic() - last_change > stall_secs:
            raise RuntimeError(f"stalled at {done} of {n} for {stall_secs:.0f} s")
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"process {p.pid} exited with {p.returncode} at {done} of {n}")
        time.sleep(interval)


# -- the machine ----------------------------------------------------------------------
def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine() -> dict[str, str]:
    """What a figure depends on: CPU model and cores, RAM, kernel, Python, SQLite, redis-server."""

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
        except OSError:
            return ""

    model = next(
        (line.split(":", 1)[1].strip() for line in run("lscpu").splitlines() if line.startswith("Model name")),
        platform.processor() or "unknown CPU",
    )
    ram = "?"
    try:
        kib = next(
            int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
        )
        ram = f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    redis = next((w[2:] for w in run("redis-server", "--version").split() if w.startswith("v=")), "not installed")
    return {
        "cpu": f"{platform.machine()}, {model}, {os.cpu_count()} cores",
        "ram": ram,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "redis-server": redis,
    }


def replace_block(path: Path, begin: str, end: str, lines: Sequence[str], heading: str) -> None:
    """Put ``lines`` between the markers ``begin`` and ``end`` of the file at
    ``path``; where the markers are missing, append ``heading`` and the block."""
    text = path.read_text()
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n" + block + "\n"
    path.write_text(text)
