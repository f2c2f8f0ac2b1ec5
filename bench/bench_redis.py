"""nuvom-redis benchmarks, beside huey's RedisHuey and RQ on the same redis-server.

    python bench/bench_redis.py                       # everything (several minutes)
    python bench/bench_redis.py --only e2e --jobs 5000 --rounds 1
    python bench/bench_redis.py --only memory --rows 1000000

Parts:

* ``e2e``: 20,000 trivial jobs, from the first enqueue until every result is
  stored: nuvom with one worker process of 4 threads and with two, each with
  ``.delay()`` one call at a time and with ``.map()``; huey's RedisHuey with its
  thread consumer (4 threads; one and two consumers), ``task()`` one at a time
  and ``task.map()``; RQ's SimpleWorker (one and two processes), ``enqueue()``
  one at a time and ``enqueue_many()``; and the floor (``floor``): bare redis-py,
  ``RPUSH`` one job at a time or 1,000 per call, consumer processes of one
  thread popping up to 64 jobs (``BLMPOP``) and storing each result with one
  ``SET``, a batch in one round trip: no lease, fencing or history, the least
  any Python queue on Redis does. Rounds are interleaved; medians reported.
  For nuvom it also reports CPU per job (producer: ``time.process_time``; workers:
  ``/proc/<pid>/stat``; Redis: ``INFO cpu``), commands and each command's calls
  and usec per call per job (``INFO commandstats``; nested script commands
  included), ``EVALSHA``s per job, and round trips per job (the server's
  ``total_reads_processed``: one per batch of commands a client sent, all
  clients). ``--systems nuvom`` and ``--setups 1`` pick cases.
* ``latency``: enqueue -> start at 50 jobs/s on an idle nuvom worker (p50, p99).
* ``memory``: ``used_memory`` (INFO memory) per stored result, with 1,000,000
  trivial results, and ``list_jobs`` times at that size.

Starts its own redis-server (Debian's, AOF on, ``appendfsync everysec``) on a free
loopback port. Needs nuvom-core, nuvom-redis, huey and rq installed
(``hatch run bench:redis``). Figures go to stdout and ``bench/results/redis.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import free_port, import_fresh, proc_cpu, start_processes, stop_processes, wait_for_count

ROOT = Path(__file__).resolve().parent
# What PYTHONPATH held at start (use_nuvom() rewrites the variable for each run).
BASE_PYTHONPATH = os.environ.get("PYTHONPATH", "")

NUVOM_TASKS = """
from nuvom.task import task

@task
def noop(i):
    return i
"""

NUVOM_WORKER = (
    "import os, pathlib, tasks; from nuvom.worker import Worker; "
    "w = Worker(max_workers={threads}); w.start(); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); w.run_forever()"
)

HUEY_TASKS = """
import os
from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])

@huey.task()
def noop(i):
    return i
"""

HUEY_CONSUMER = (
    "import os, pathlib, hueytasks; "
    "c = hueytasks.huey.create_consumer(workers={threads}, worker_type='thread', periodic=False); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); c.run()"
)

RQ_TASKS = """
def noop(i):
    return i
"""

RQ_WORKER = (
    "import os, pathlib, redis, rq, rqtasks; "
    "conn = redis.Redis.from_url(os.environ['BENCH_REDIS_URL']); "
    "w = rq.SimpleWorker([rq.Queue('bench', connection=conn)], connection=conn); "
    "pathlib.Path('ready-%d' % os.getpid()).touch(); w.work(logging_level='WARNING')"
)

# The floor: the least any Python queue on Redis does for a job (no lease, no
# fencing, no history index): one RPUSH to queue it, a consumer popping up to 64
# at a time and storing each result with one SET, a batch's SETs in one round trip.
FLOOR_CONSUMER = (
    "import os, pathlib, redis; "
    "r = redis.Redis.from_url(os.environ['BENCH_REDIS_URL']); "
    "pathlib.Path('ready-%d' % os.getpid()).touch()\n"
    "while True:\n"
    "    got = r.blmpop(1, 1, 'floor:q', direction='LEFT', count=64)\n"
    "    if not got: continue\n"
    "    pipe = r.pipeline(transaction=False)\n"
    "    for payload in got[1]: pipe.set(b'floor:res:' + payload[:12], payload[12:])\n"
    "    pipe.incrby('floor:done', len(got[1]))\n"
    "    pipe.execute()\n"
)


# -- helpers --------------------------------------------------------------------
def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--appendonly", "yes",
         "--save", "", "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def server_stats(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    info = client.info("cpu")
    stats = client.info("stats")
    return {
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        # Reads the server processed (one per batch of commands a client sent): round trips.
        "reads": int(stats.get("total_reads_processed", 0)),
        "cmd": {k: (int(v["calls"]), int(v["usec"])) for k, v in client.info("commandstats").items()},
    }


def cost_per_job(before: dict[str, Any], after: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Redis's CPU per job, commands per job (nested script commands included) and each command's
    calls and usec per call."""
    cmds: dict[str, Any] = {}
    calls_total = 0
    for name, (calls, usec) in after["cmd"].items():
        c0, u0 = before["cmd"].get(name, (0, 0))
        if calls - c0 <= 0 or name in ("cmdstat_info", "cmdstat_ping", "cmdstat_flushall"):
            continue
        calls_total += calls - c0
        cmds[name.removeprefix("cmdstat_")] = {
            "per_job": round((calls - c0) / jobs, 2),
            "usec_per_call": round((usec - u0) / (calls - c0), 1),
        }
    return {
        "server_us_per_job": round((after["cpu"] - before["cpu"]) / jobs * 1e6),
        "commands_per_job": round(calls_total / jobs, 2),
        "evalsha_per_job": cmds.get("evalsha", {}).get("per_job", 0.0),
        "round_trips_per_job": round((after["reads"] - before["reads"]) / jobs, 2),
        "commands": cmds,
    }


def nuvom_env(workdir: Path, url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(
        NUVOM_QUEUE_BACKEND="redis",
        NUVOM_RESULT_BACKEND="redis",
        NUVOM_REDIS_URL=url,
        NUVOM_REDIS_PREFIX=prefix,
        NUVOM_DATA_DIR=str(workdir / "data"),
        NUVOM_LOG_LEVEL="WARNING",
        # Kept after the tasks' folder: a before/after run points PYTHONPATH at an older nuvom-redis.
        PYTHONPATH=os.pathsep.join(p for p in (str(workdir), BASE_PYTHONPATH) if p),
    )
    return env


def use_nuvom(workdir: Path, url: str, prefix: str) -> Any:
    """Point this process's nuvom at a fresh prefix and import the tasks."""
    os.environ.update(nuvom_env(workdir, url, prefix))
    from nuvom.registry import get_registry
    from nuvom.testing import reset_process_state

    reset_process_state()
    get_registry().unregister("noop")
    return import_fresh("tasks", workdir)


def flush(url: str) -> None:
    import redis

    # ASYNC: freeing a million keys must not hold the reply past the socket timeout.
    redis.Redis.from_url(url).flushall(asynchronous=True)


def e2e_row(
    names: tuple[str, str, str], succeeded: int, jobs: int, done: int, t_enq: float, elapsed: float
) -> dict[str, Any]:
    """The fields every system's end-to-end run reports; ``names``: system, workers, enqueue."""
    return {
        "system": names[0],
        "workers": names[1],
        "enqueue": names[2],
        "succeeded": succeeded,
        "complete": done == jobs,
        "enqueue_secs": round(t_enq, 3),
        "jobs_per_sec": round(jobs / elapsed),
    }


# -- end to end -----------------------------------------------------------------
def e2e_nuvom(base: Path, url: str, jobs: int, workers: int, use_map: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="nuvom-", dir=base))
    (workdir / "tasks.py").write_text(NUVOM_TASKS)
    prefix = f"b{uuid.uuid4().hex[:8]}"
    tasks = use_nuvom(workdir, url, prefix)
    from nuvom.backends import get_result_backend

    results = get_result_backend()
    procs = start_processes(NUVOM_WORKER.format(threads=4), workers, workdir, nuvom_env(workdir, url, prefix))
    try:
        stats0, cpu0 = server_stats(url), [proc_cpu(p.pid) for p in procs]
        t0, p0 = time.perf_counter(), time.process_time()
        if use_map:
            tasks.noop.map(range(jobs))
        else:
            for i in range(jobs):
                tasks.noop.delay(i)
        t_enq, p_enq = time.perf_counter() - t0, time.process_time() - p0
        done = wait_for_count(results.count, jobs)
        elapsed = time.perf_counter() - t0
        worker_cpu = sum(proc_cpu(p.pid) for p in procs) - sum(cpu0)
        cost = cost_per_job(stats0, server_stats(url), jobs)
    finally:
        stop_processes(procs)
    ok = len(results.list_jobs(status="SUCCESS", limit=jobs + 1))
    names = ("nuvom-redis", f"{workers} x 4 threads", ".map()" if use_map else ".delay() loop")
    return {
        **e2e_row(names, ok, jobs, done, t_enq, elapsed),
        "producer_us_per_job": round(p_enq / jobs * 1e6),
        "worker_us_per_job": round(worker_cpu / jobs * 1e6),
        **cost,
    }


def e2e_huey(base: Path, url: str, jobs: int, workers: int, use_map: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="huey-", dir=base))
    (workdir / "hueytasks.py").write_text(HUEY_TASKS)
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(workdir)}
    os.environ["BENCH_REDIS_URL"] = url
    mod = import_fresh("hueytasks", workdir)
    procs = start_processes(HUEY_CONSUMER.format(threads=4), workers, workdir, env)
    try:
        t0, p0 = time.perf_counter(), time.process_time()
        if use_map:
            mod.noop.map(range(jobs))
        else:
            for i in range(jobs):
                mod.noop(i)
        t_enq, p_enq = time.perf_counter() - t0, time.process_time() - p0
        done = wait_for_count(mod.huey.result_count, jobs)
        elapsed = time.perf_counter() - t0
    finally:
        stop_processes(procs, signal.SIGINT)
    names = ("huey RedisHuey", f"{workers} x 4 threads", "task.map()" if use_map else "task() loop")
    return {
        **e2e_row(names, mod.huey.result_count(), jobs, done, t_enq, elapsed),
        "producer_us_per_job": round(p_enq / jobs * 1e6),
    }


def e2e_rq(base: Path, url: str, jobs: int, workers: int, use_map: bool) -> dict[str, Any]:
    import redis
    import rq

    workdir = Path(tempfile.mkdtemp(prefix="rq-", dir=base))
    (workdir / "rqtasks.py").write_text(RQ_TASKS)
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(workdir)}
    conn = redis.Redis.from_url(url)
    queue = rq.Queue("bench", connection=conn)
    registry = rq.registry.FinishedJobRegistry(queue=queue)
    procs = start_processes(RQ_WORKER, workers, workdir, env)
    try:
        t0 = time.perf_counter()
        if use_map:
            queue.enqueue_many([rq.Queue.prepare_data("rqtasks.noop", args=(i,)) for i in range(jobs)])
        else:
            for i in range(jobs):
                queue.enqueue("rqtasks.noop", i)
        t_enq = time.perf_counter() - t0
        done = wait_for_count(registry.get_job_count, jobs)
        elapsed = time.perf_counter() - t0
    finally:
        stop_processes(procs)
    names = ("RQ SimpleWorker", f"{workers} process(es)", "enqueue_many()" if use_map else "enqueue() loop")
    return e2e_row(names, registry.get_job_count(), jobs, done, t_enq, elapsed)


def floor_payloads(jobs: int) -> list[bytes]:
    """What the floor queues: ~200 bytes each, like a small job's encoded record; the first 12 name the job."""
    return [b"%012d" % i + b"x" * 188 for i in range(jobs)]


def e2e_floor(base: Path, url: str, jobs: int, workers: int, use_map: bool) -> dict[str, Any]:
    import redis

    workdir = Path(tempfile.mkdtemp(prefix="floor-", dir=base))
    env = {**os.environ, "BENCH_REDIS_URL": url}
    client = redis.Redis.from_url(url)
    payloads = floor_payloads(jobs)
    procs = start_processes(FLOOR_CONSUMER, workers, workdir, env)
    try:
        stats0, cpu0 = server_stats(url), [proc_cpu(p.pid) for p in procs]
        t0, p0 = time.perf_counter(), time.process_time()
        if use_map:
            for k in range(0, jobs, 1000):
                client.rpush("floor:q", *payloads[k : k + 1000])
        else:
            for payload in payloads:
                client.rpush("floor:q", payload)
        t_enq, p_enq = time.perf_counter() - t0, time.process_time() - p0
        done = wait_for_count(lambda: int(client.get("floor:done") or 0), jobs)
        elapsed = time.perf_counter() - t0
        worker_cpu = sum(proc_cpu(p.pid) for p in procs) - sum(cpu0)
        cost = cost_per_job(stats0, server_stats(url), jobs)
    finally:
        stop_processes(procs)
    names = ("floor: bare redis-py", f"{workers} process(es), 1 thread", "RPUSH of 1,000" if use_map else "RPUSH loop")
    return {
        **e2e_row(names, int(client.get("floor:done") or 0), jobs, done, t_enq, elapsed),
        "producer_us_per_job": round(p_enq / jobs * 1e6),
        "worker_us_per_job": round(worker_cpu / jobs * 1e6),
        "server_us_per_job": cost["server_us_per_job"],
        "round_trips_per_job": cost["round_trips_per_job"],
    }


def run_e2e(
    base: Path, url: str, jobs: int, rounds: int, rq_jobs: int, systems: list[str], setups: list[int]
) -> list[dict[str, Any]]:
    cases = [
        (system, workers, use_map)
        for system in ("nuvom", "huey", "rq", "floor")
        if system in systems
        for workers in setups
        for use_map in (False, True)
    ]
    runs: dict[tuple[str, int, bool], list[dict[str, Any]]] = {c: [] for c in cases}
    for r in range(rounds):
        for case in cases:
            system, workers, use_map = case
            flush(url)
            if system == "nuvom":
                out = e2e_nuvom(base, url, jobs, workers, use_map)
            elif system == "huey":
                out = e2e_huey(base, url, jobs, workers, use_map)
            elif system == "floor":
                out = e2e_floor(base, url, jobs, workers, use_map)
            else:
                out = e2e_rq(base, url, rq_jobs, workers, use_map)
            print(f"  round {r + 1}: {out}", flush=True)
            runs[case].append(out)
    summary = []
    for case, outs in runs.items():
        best = dict(outs[0])
        best["jobs"] = rq_jobs if case[0] == "rq" else jobs
        best["jobs_per_sec"] = round(statistics.median(o["jobs_per_sec"] for o in outs))
        best["enqueue_secs"] = round(statistics.median(o["enqueue_secs"] for o in outs), 3)
        best["complete"] = all(o["complete"] for o in outs)
        best["rounds"] = len(outs)
        for key in (
            "producer_us_per_job",
            "worker_us_per_job",
            "server_us_per_job",
            "commands_per_job",
            "evalsha_per_job",
            "round_trips_per_job",
        ):
            if key in best:
                best[key] = statistics.median(o[key] for o in outs)
        summary.append(best)
    by = {(s["system"], s["workers"].split()[0], s["enqueue"]): s for s in summary}
    peers = {
        "x_huey": ("huey RedisHuey", "task.map()", "task() loop"),
        "x_rq": ("RQ SimpleWorker", "enqueue_many()", "enqueue() loop"),
        "of_floor": ("floor: bare redis-py", "RPUSH of 1,000", "RPUSH loop"),
    }
    for s in summary:
        if s["system"] != "nuvom-redis":
            continue
        w = s["workers"].split()[0]
        mapped = s["enqueue"] == ".map()"
        for field, (system, batch, loop) in peers.items():
            peer = by.get((system, w, batch if mapped else loop))
            if peer is not None:
                s[field] = round(s["jobs_per_sec"] / peer["jobs_per_sec"], 2)
    return summary


# -- latency --------------------------------------------------------------------
def run_latency(base: Path, url: str, rate: float, seconds: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="latency-", dir=base))
    (workdir / "tasks.py").write_text(NUVOM_TASKS)
    prefix = f"l{uuid.uuid4().hex[:8]}"
    tasks = use_nuvom(workdir, url, prefix)
    from nuvom.backends import get_result_backend

    results = get_result_backend()
    procs = start_processes(NUVOM_WORKER.format(threads=4), 1, workdir, nuvom_env(workdir, url, prefix))
    jobs = []
    try:
        time.sleep(1.0)  # let the worker settle into its idle wait
        n = int(rate * seconds)
        t_next = time.perf_counter()
        for i in range(n):
            t_next += 1 / rate
            time.sleep(max(0.0, t_next - time.perf_counter()))
            job = tasks.noop.delay(i)
            jobs.append(job)
        wait_for_count(results.count, n)
    finally:
        stop_processes(procs)
    lat = sorted((results.get_full(j.id).started_at - j.created_at) * 1000 for j in jobs)
    return {
        "rate_per_sec": rate,
        "jobs": len(lat),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
    }


# -- memory ---------------------------------------------------------------------
def run_memory(url: str, rows: int) -> dict[str, Any]:
    import redis
    from nuvom.config import load_settings
    from nuvom.job import Attempt, Job, JobStatus
    from nuvom.redis import RedisResultBackend, RedisSettings

    flush(url)
    client = redis.Redis.from_url(url)
    before = int(client.info("memory")["used_memory"])
    results = RedisResultBackend(load_settings(), redis=RedisSettings(redis_url=url, redis_prefix="mem"))
    now = time.time()
    batch = []
    t0 = time.perf_counter()
    for i in range(rows):
        # What a trivial job's record holds: args, result, one attempt, timings, worker id.
        at = now + i * 1e-4
        job = Job(
            func_name=f"tasks.t{i % 10}",
            task_path="tasks:noop",
            args=[i],
            status=JobStatus.FAILED if i % 20 == 0 else JobStatus.SUCCESS,
            attempts=1,
            created_at=at - 0.01,
            started_at=at - 0.005,
            finished_at=at,
            worker_id="host-1:12345:abcdef",
            result=i,
            history=[Attempt(number=1, started_at=at - 0.005, finished_at=at)],
        )
        batch.append(job)
        if len(batch) == 5000:
            results.store(batch)
            batch = []
    if batch:
        results.store(batch)
    fill_secs = time.perf_counter() - t0
    after = int(client.info("memory")["used_memory"])
    sample = results.list_jobs(limit=1)[0]
    timings = {}
    for name, kwargs in {
        "newest 100": {},
        "newest 100 FAILED": {"status": "FAILED"},
        "newest 100 of one task": {"task": "tasks.t3"},
        "newest 100 SUCCESS of one task": {"status": "SUCCESS", "task": "tasks.t3"},
    }.items():
        samples = []
        for _ in range(20):
            t = time.perf_counter()
            listed = results.list_jobs(limit=100, **kwargs)
            samples.append((time.perf_counter() - t) * 1000)
            assert len(listed) == 100
        timings[name] = round(statistics.median(samples), 2)
    t = time.perf_counter()
    count = results.count()
    count_ms = (time.perf_counter() - t) * 1000
    results.close()
    flush(url)
    return {
        "rows": rows,
        "count": count,
        "record_bytes_encoded": len(sample.to_bytes()),
        "used_memory_mb": round((after - before) / 2**20, 1),
        "bytes_per_result": round((after - before) / rows),
        "mb_per_1m_results": round((after - before) / rows * 1_000_000 / 2**20),
        "fill_secs": round(fill_secs, 1),
        "list_jobs_ms_median": timings,
        "count_ms": round(count_ms, 2),
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "redis": version}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["e2e", "latency", "memory"], action="append")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rq-jobs", type=int, default=None, help="jobs per RQ run (default: --jobs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--systems", default="nuvom,huey,rq,floor", help="e2e: which systems (comma-separated)")
    parser.add_argument("--setups", default="1,2", help="e2e: worker process counts (comma-separated)")
    args = parser.parse_args()
    parts = args.only or ["e2e", "latency", "memory"]
    out: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        base = Path(tmp)
        server, url = start_redis(base)
        try:
            if "e2e" in parts:
                print("e2e:", flush=True)
                out["e2e"] = run_e2e(
                    base,
                    url,
                    args.jobs,
                    args.rounds,
                    args.rq_jobs or args.jobs,
                    args.systems.split(","),
                    [int(n) for n in args.setups.split(",")],
                )
                for row in out["e2e"]:
                    print(row)
            if "latency" in parts:
                out["latency"] = run_latency(base, url, 50.0, 6.0)
                print("latency:", out["latency"])
            if "memory" in parts:
                out["memory"] = run_memory(url, args.rows)
                print("memory:", out["memory"])
        finally:
            server.terminate()
            server.wait()
    results_dir = ROOT / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "redis.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
