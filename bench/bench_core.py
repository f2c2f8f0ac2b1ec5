"""Memory-backend engine vs a bare ThreadPoolExecutor: 20,000 trivial jobs end to end.

    python bench/bench_core.py [--jobs 20000] [--rounds 7] [--workers 4]

Each round times, in the same process and alternating, (a) nuvom: ``.map()``
of N jobs onto the memory queue, a running ``Worker`` executing them, until
every result is stored; (b) ``ThreadPoolExecutor``: submit N calls of the same
function, until every future has its result. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from nuvom.backends import set_backends
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.task import task
from nuvom.worker import Worker


def work(x: int) -> int:
    return x + 1


trivial = task(work)


def run_nuvom(n: int, workers: int) -> float:
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    set_backends(queue, results)
    with Worker(max_workers=workers, queue=queue, results=results):
        # The previous round's jobs are garbage in cycles: collected here, not in
        # the next round's timing (often the executor's, which made its figure lower).
        gc.collect()
        start = time.perf_counter()
        jobs = trivial.map(range(n))
        last = jobs[-1].id
        results.wait(last, timeout=120)
        for job in jobs:
            results.wait(job.id, timeout=120)
        elapsed = time.perf_counter() - start
    assert results.count() == n
    return elapsed


def run_executor(n: int, workers: int) -> float:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        gc.collect()
        start = time.perf_counter()
        futures = [pool.submit(work, i) for i in range(n)]
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - start
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run_nuvom(1000, args.workers)  # warm up imports and code paths
    run_executor(1000, args.workers)
    ours, bare = [], []
    for _ in range(args.rounds):
        ours.append(run_nuvom(args.jobs, args.workers))
        bare.append(run_executor(args.jobs, args.workers))
    m_ours, m_bare = statistics.median(ours), statistics.median(bare)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"jobs={args.jobs} workers={args.workers} rounds={args.rounds}")
    print(f"nuvom memory engine : median {m_ours:.3f} s = {args.jobs / m_ours:,.0f} jobs/s")
    print(f"ThreadPoolExecutor  : median {m_bare:.3f} s = {args.jobs / m_bare:,.0f} jobs/s")
    print(f"ratio nuvom/executor throughput: {m_bare / m_ours:.2f}")


if __name__ == "__main__":
    main()
