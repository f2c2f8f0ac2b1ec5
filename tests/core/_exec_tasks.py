"""Tasks of the executor tests. A module of its own: process-pool children
import it by name (tests/core is on the worker's sys.path, which children get)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

from nuvom.task import task

# Per-test records, keyed by a test's own key (tests run in parallel processes,
# and several tests of one process share this module).
SEEN: dict[str, list] = {}


@task
async def ex_nap(secs: float) -> str:
    await asyncio.sleep(secs)
    return threading.current_thread().name


@task(timeout_secs=0.3)
async def ex_stuck_async(key: str) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        SEEN.setdefault(key, []).append("cancelled")
        raise


@task(retries=2, retry_delay_secs=0.05)
async def ex_flaky_async(key: str, fail_times: int) -> int:
    SEEN.setdefault(key, []).append(threading.current_thread().name)
    await asyncio.sleep(0.01)
    if len(SEEN[key]) <= fail_times:
        raise RuntimeError(f"attempt {len(SEEN[key])} fails")
    return len(SEEN[key])


@task(executor="thread")
async def ex_async_in_thread() -> str:
    await asyncio.sleep(0.01)
    return threading.current_thread().name


@task
def ex_plain(x: int) -> int:
    return x + 1


@task(executor="process")
def ex_whoami(x: int) -> list[int]:
    return [os.getpid(), x]


@task(executor="process")
async def ex_async_whoami() -> int:
    await asyncio.sleep(0.01)
    return os.getpid()


@task(executor="process", timeout_secs=1)
def ex_spin() -> None:
    while True:
        pass


@task(executor="process", timeout_secs=0.2)
def ex_spin_short() -> None:
    while True:
        pass


@task(executor="process")
def ex_exit_with(code: int) -> None:
    os._exit(code)


@task(executor="process")
def ex_segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)


@task(executor="process")
def ex_sleep_in_child(secs: float) -> int:
    time.sleep(secs)
    return os.getpid()


@task(executor="process", retries=2, retry_delay_secs=0.05)
def ex_flaky_process(counter: str, fail_times: int) -> int:
    # State that must survive a child: a file.
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n <= fail_times:
        raise RuntimeError(f"attempt {n} fails")
    return n


@task(executor="process")
def ex_unencodable() -> object:
    return object()


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


@task
def ex_burn_thread(n: int) -> int:
    return burn(n)


@task(executor="process")
def ex_burn_process(n: int) -> int:
    return burn(n)


@task(executor="process", retries=1, retry_delay_secs=0)
def ex_context_in_child(fail_first: bool) -> list:
    from nuvom.job import current_job

    ctx = current_job()
    if fail_first and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return [ctx.id, ctx.attempt, ctx.retries_left, ctx.queue, os.getpid()]


@task(executor="process")
def ex_wait_in_child(marker: str) -> str:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(60)
    return "never"
