"""nuvom-postgres benchmarks, beside PgQueuer and procrastinate on the same server.

    python bench/bench_postgres.py                           # every part, every system
    python bench/bench_postgres.py --only history --rows 1000000
    python bench/bench_postgres.py --only e2e,drain,latency --jobs 2000 --systems nuvom

Parts (docs/postgres.md has the table they fill):

* ``e2e`` (``--e2e-rounds`` interleaved rounds, medians, and nuvom's ratios as
  the median of each round's): one worker process running (nuvom: ``--threads 4``; PgQueuer:
  ``QueueManager.run(batch_size=100)``; procrastinate: ``run_worker(concurrency=10)``),
  a producer loops ``--e2e-jobs`` single-job calls (``.delay()``, ``enqueue``,
  ``defer``), then waits for each job's result (nuvom: ``get()`` of each; the
  peers: their finished rows counted): jobs per second from the first call to
  the last result, and the worker's CPU per job. With nuvom, its floor in the
  same run (``_postgres_floors.py``): ``calls``, bare psycopg, no worker, one
  committed ``INSERT`` a call, then the results read 256 to a ``SELECT``; and
  ``beside``, the same calls with a bare worker of durable start marks (one
  statement per 4 jobs) in another process at once.
* ``drain``: ``--jobs`` jobs queued first, then one worker process drains them
  (nuvom with ``NUVOM_BATCH_SIZE=100``, PgQueuer with ``batch_size=100``,
  procrastinate with ``concurrency=10``): jobs per second from the first
  result to the last, and the worker's CPU per job (``/proc/<pid>/stat``).
  With nuvom, two floors in the same run (``_postgres_floors.py``): bare psycopg
  on nuvom's schema, no task run, claiming and completing 100 at a time
  (PgQueuer's shape), and one transaction per 4 jobs with durable start marks.
* ``latency``: enqueue to start on an idle worker, one job every 20 ms (p50, p99).
* ``history``: ``--rows`` finished jobs stored, then each history query shape
  timed (median of 20, a page of 50), first page and a deep keyset page.

Starts its own server (Debian's PostgreSQL: ``initdb`` + ``pg_ctl`` into a
temporary folder, run as an unprivileged user under root) on a free loopback
port, with the server's defaults (``synchronous_commit = on``) for every system.
Peers are skipped, said so, when not installed (``hatch run bench:postgres``
installs them). Figures and nuvom's ratios to each peer go to stdout and
``bench/results/postgres.json``, with the load average before and after.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _postgres_floors
import _postgres_peers
from _common import load_average, proc_cpu

ROOT = Path(__file__).resolve().parent
USER = "nuvompg"

NUVOM_TASKS = """
from nuvom.task import task

@task
def noop(i):
    return i
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A PostgreSQL server in a temporary folder, trust auth on loopback."""

    def __init__(self) -> None:
        found = shutil.which("pg_ctl") or (sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [None])[-1]
        if found is None:
            sys.exit("bench_postgres: PostgreSQL's server programs are not installed (apt-get install postgresql)")
        self.bin = Path(found).parent
        self.folder = Path(tempfile.mkdtemp(prefix="nuvom-pg-bench-"))
        self.port = free_port()
        self.account: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", USER], check=True)
                entry = pwd.getpwnam(USER)
            self.account = (entry.pw_uid, entry.pw_gid)
            os.chown(self.folder, *self.account)
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "bench", "-A", "trust", "--no-locale", "-E", "UTF8")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )
        self.pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        self.url = f"postgresql://bench@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        extra: dict[str, Any] = {}
        if self.account is not None:
            extra = {"user": self.account[0], "group": self.account[1], "extra_groups": []}
        subprocess.run([str(self.bin / program), *args], check=True, capture_output=True, cwd=self.folder, **extra)

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGINT)
            for _ in range(600):
                if not Path(f"/proc/{self.pid}").exists():
                    break
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# -- nuvom --------------------------------------------------------------------------
class Nuvom:
    name = "nuvom"

    def __init__(self, url: str, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tasks.py").write_text(NUVOM_TASKS)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
        self.env.update(
            NUVOM_QUEUE_BACKEND="postgres",
            NUVOM_RESULT_BACKEND="postgres",
            NUVOM_POSTGRES_URL=url,
            NUVOM_POSTGRES_SCHEMA=f"b{uuid.uuid4().hex[:8]}",
            NUVOM_DATA_DIR=str(folder / "data"),
            NUVOM_LOG_LEVEL="WARNING",
            # The caller's path after the tasks' folder: workers import the same nuvom as this process.
            PYTHONPATH=os.pathsep.join(filter(None, (str(folder), os.environ.get("PYTHONPATH")))),
        )
        os.environ.update(self.env)
        sys.path.insert(0, str(folder))
        import tasks  # type: ignore[import-not-found]
        from nuvom.backends import get_queue_backend, get_result_backend

        self.task = tasks.noop
        self.queue, self.results = get_queue_backend(), get_result_backend()
        self.queue.qsize()  # the schema, created before anything is timed

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nuvom.worker", "tasks", "--threads", "4"],
            cwd=self.folder,
            env={**self.env, **env},
        )
        self.task.delay(-1).get(timeout=60)  # its imports and first claim: not part of any measure
        return proc

    def e2e(self, n: int) -> dict[str, float]:
        """A ``.delay()`` loop of ``n`` jobs, then ``get()`` of each."""
        proc = self.worker()
        try:
            cpu0 = proc_cpu(proc.pid)
            t0 = time.perf_counter()
            jobs = [self.task.delay(i) for i in range(n)]
            for job in jobs:
                job.get(timeout=60)
            secs = time.perf_counter() - t0
            cpu = proc_cpu(proc.pid) - cpu0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        return {"jobs_per_sec": n / secs, "worker_cpu_us_per_job": cpu / n * 1e6}

    def fill(self, n: int) -> None:
        for k in range(0, n, 5000):
            self.task.map(range(k, min(n, k + 5000)))

    def drain(self, n: int) -> dict[str, float]:
        self.fill(n)
        before = self.results.count()
        proc = subprocess.Popen(
            [sys.executable, "-m", "nuvom.worker", "tasks", "--threads", "4"],
            cwd=self.folder,
            env={**self.env, "NUVOM_BATCH_SIZE": "100"},
        )
        try:
            while self.results.count() == before:
                time.sleep(0.01)
            t0, cpu0, done0 = time.perf_counter(), proc_cpu(proc.pid), self.results.count() - before
            while (done := self.results.count() - before) < n:
                time.sleep(0.05)
            secs, cpu = time.perf_counter() - t0, proc_cpu(proc.pid) - cpu0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        return {"jobs_per_sec": (done - done0) / secs, "worker_cpu_us_per_job": cpu / (done - done0) * 1e6}

    def latency(self, n: int) -> dict[str, float]:
        proc = self.worker()
        waits: list[float] = []
        try:
            for i in range(n):
                t0 = time.time()
                job = self.task.delay(i)
                record = self.results.wait(job.id, 30)
                assert record is not None and record.started_at is not None
                waits.append(record.started_at - t0)
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        return {"p50_ms": pct(waits, 0.5) * 1e3, "p99_ms": pct(waits, 0.99) * 1e3}


def history(url: str, rows: int) -> dict[str, Any]:
    """``rows`` results stored (status, task, tags as the docs' table says), then each query shape timed."""
    from nuvom.config import load_settings
    from nuvom.job import Job, JobError, JobStatus
    from nuvom.postgres import PostgresResultBackend, PostgresSettings

    ps = PostgresSettings(postgres_url=url, postgres_schema=f"h{uuid.uuid4().hex[:8]}")
    results = PostgresResultBackend(load_settings(), postgres=ps)
    now = time.time()
    t0 = time.perf_counter()
    batch: list[Job] = []
    for i in range(rows):
        failed = i % 100 == 0
        tags = ["half"] if i % 2 else []
        if i % 1000 == 0:
            tags.append("rare")
        job = Job(
            func_name=f"task{i % 7}",
            args=[i],
            status=JobStatus.FAILED if failed else JobStatus.SUCCESS,
            finished_at=now - (rows - i) * 0.01,
            started_at=now - (rows - i) * 0.01 - 0.002,
            tags=tags,
            result=None if failed else i,
            error=JobError(type="ValueError", message="no") if failed else None,
        )
        batch.append(job)
        if len(batch) == 5000:
            results.store(batch)
            batch = []
    if batch:
        results.store(batch)
    fill = time.perf_counter() - t0
    results.db.run("analyze", lambda c: c.execute(f"VACUUM ANALYZE {results.sql.results}"))
    results.db.run("analyze", lambda c: c.execute(f"VACUUM ANALYZE {results.sql.tags}"))
    deep = (now - (rows // 2) * 0.01, "f" * 32)

    def timed(**query: Any) -> float:
        results.query(limit=50, **query)  # warm
        runs = []
        for _ in range(20):
            t = time.perf_counter()
            page = results.query(limit=50, **query)
            runs.append(time.perf_counter() - t)
        assert page, query
        return statistics.median(runs) * 1e3

    shapes: dict[str, dict[str, Any]] = {
        "newest": {},
        "newest_deep": {"before": deep},
        "failed": {"status": "FAILED"},
        "failed_deep": {"status": "FAILED", "before": deep},
        "task": {"task": "task3"},
        "task_deep": {"task": "task3", "before": deep},
        "tag_half": {"tag": "half"},
        "tag_half_deep": {"tag": "half", "before": deep},
        "tag_rare": {"tag": "rare"},
        "range": {"since": now - rows * 0.005, "until": now - rows * 0.005 + 60},
    }
    out: dict[str, Any] = {"rows": rows, "fill_secs": fill}
    out.update({name: timed(**shape) for name, shape in shapes.items()})
    counts_t = time.perf_counter()
    results.counts()
    out["counts_ms"] = (time.perf_counter() - counts_t) * 1e3
    results.close()
    return out


def ratios(out: dict[str, Any]) -> dict[str, float]:
    """The drain's: nuvom's jobs per second over each peer's and each floor's (the
    e2e's are ``e2e_round_ratios``, the median of each round's ratio)."""
    ours = out.get("nuvom_drain")
    if ours is None:
        return {}
    got: dict[str, float] = {}
    for other in (*_postgres_peers.PEERS, "floor_batch100", "floor_durable4"):
        theirs = out.get(f"{other}_drain") or out.get("nuvom_drain_floors", {}).get(other.removeprefix("floor_"))
        if theirs:
            got[f"drain_vs_{other}"] = round(ours["jobs_per_sec"] / theirs["jobs_per_sec"], 3)
    return got


def e2e_rounds(args: argparse.Namespace, url: str, nuvom: Nuvom | None, where: dict[str, Path]) -> dict[str, Any]:
    """The e2e part, ``--e2e-rounds`` interleaved rounds (each system once a round, the
    order rotated): each system's medians, its rounds, and nuvom's ratio to each
    other system as the median of the rounds' ratios."""
    systems: list[str] = [*(["nuvom", "floor_calls", "floor_beside"] if nuvom is not None else []), *where]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    for r in range(args.e2e_rounds):
        for name in systems[r % len(systems) :] + systems[: r % len(systems)]:
            if name == "nuvom":
                assert nuvom is not None
                runs[name].append(nuvom.e2e(args.e2e_jobs))
            elif name in ("floor_calls", "floor_beside"):
                assert nuvom is not None
                schema = nuvom.env["NUVOM_POSTGRES_SCHEMA"]
                floor = _postgres_floors.calls if name == "floor_calls" else _postgres_floors.beside
                runs[name].append(floor(url, schema, args.e2e_jobs))
            else:
                runs[name].append(_postgres_peers.e2e(name, url, args.e2e_jobs, where[name]))
        print(f"e2e round {r + 1}/{args.e2e_rounds} done", file=sys.stderr, flush=True)
    out: dict[str, Any] = {}
    for name, figures in runs.items():
        key = {"floor_calls": "nuvom_e2e_floor", "floor_beside": "nuvom_e2e_floor_beside"}.get(name, f"{name}_e2e")
        out[key] = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
        out[key]["rounds"] = [round(f["jobs_per_sec"]) for f in figures]
    if nuvom is not None:
        ours = [f["jobs_per_sec"] for f in runs["nuvom"]]
        out["e2e_round_ratios"] = {
            name: round(statistics.median(a / f["jobs_per_sec"] for a, f in zip(ours, runs[name], strict=True)), 3)
            for name in systems
            if name != "nuvom"
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="e2e,drain,latency,history")
    parser.add_argument("--systems", default="nuvom,pgqueuer,procrastinate")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--e2e-jobs", type=int, default=2_000)
    parser.add_argument("--e2e-rounds", type=int, default=5, help="interleaved rounds of the e2e part (medians)")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    parts, systems = set(args.only.split(",")), args.systems.split(",")
    server = Server()
    folder = Path(tempfile.mkdtemp(prefix="nuvom-bench-"))
    out: dict[str, Any] = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    out["load_average_before"] = load_average()
    try:
        nuvom = (
            Nuvom(server.url, folder / "nuvom") if "nuvom" in systems and parts & {"e2e", "drain", "latency"} else None
        )
        where: dict[str, Path] = {}
        for peer in _postgres_peers.PEERS:
            if peer not in systems or not parts & {"e2e", "drain"}:
                continue
            try:
                __import__(peer)
            except ImportError:
                print(f"{peer}: not installed, skipped (hatch run bench:postgres installs it)")
                continue
            where[peer] = _postgres_peers.setup(peer, server.url, folder / peer)
        if "e2e" in parts:
            out.update(e2e_rounds(args, server.url, nuvom, where))
        if nuvom is not None and "drain" in parts:
            out["nuvom_drain"] = nuvom.drain(args.jobs)
            out["nuvom_drain_floors"] = _postgres_floors.floors(
                server.url, nuvom.env["NUVOM_POSTGRES_SCHEMA"], nuvom.fill, args.jobs
            )
        if nuvom is not None and "latency" in parts:
            out["nuvom_latency"] = nuvom.latency(args.latency_jobs)
        if "drain" in parts:
            for peer, peer_folder in where.items():
                out[f"{peer}_drain"] = _postgres_peers.drain(peer, server.url, args.jobs, peer_folder)
        if "history" in parts:
            out["history"] = history(server.url, args.rows)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    out["ratios"] = ratios(out)
    out["load_average_after"] = load_average()
    print(json.dumps(out, indent=2))
    results_dir = ROOT / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "postgres.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
