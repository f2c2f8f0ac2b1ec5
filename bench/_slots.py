"""Floor (c) of a drain, for any store: a fused step run by a few threads.

``step(done)`` is one round trip (a transaction, a script call) that stores the
outcomes of the jobs in ``done`` and claims the next ones start-marked; it
returns those. :func:`drain_by_slots` runs it from ``slots`` threads, each
running one (empty) job at a time and waiting for its start mark before the
next: the thread whose job ends last in a round makes the round's step and hands
the others their jobs. What any worker with that many threads and durable start
marks pays on top of its store's round trips: a wake-up of a waiting thread per
job, and the GIL passed between them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["drain_by_slots"]

Row = TypeVar("Row")


def drain_by_slots(slots: int, step: Callable[[list[Row]], Sequence[Row]]) -> None:
    """Until a step claims nothing. A step may claim fewer jobs than there are
    slots: the slots left without one wait for a later step."""
    wakes = [threading.Lock() for _ in range(slots)]
    for lock in wakes:
        lock.acquire()
    jobs: list[Row | None] = [None] * slots
    ended: list[Row] = []
    guard = threading.Lock()
    round_size = [0]

    def commit(rows_done: list[Row]) -> Sequence[Row]:
        rows = step(rows_done)
        round_size[0] = len(rows)
        return rows

    def hand_out(rows: Sequence[Row], me: int) -> Row | None:
        """The step's jobs to ``me`` (the slot that made it; -1: none) and to
        slots waiting; a slot given none waits on. No jobs: every slot stops."""
        if not rows:
            for k in range(slots):
                if k != me:
                    jobs[k] = None
                    wakes[k].release()
            return None
        mine = None
        order = [me, *(k for k in range(slots) if k != me)] if me >= 0 else list(range(slots))
        for k, row in zip(order, rows):
            if k == me:
                mine = row
            else:
                jobs[k] = row
                wakes[k].release()
        return mine

    def slot(k: int) -> None:
        wakes[k].acquire()
        row = jobs[k]
        while row is not None:
            with guard:
                ended.append(row)
                last = len(ended) == round_size[0]
                done_rows = ended[:] if last else []
                if last:
                    ended.clear()
            if last:
                row = hand_out(commit(done_rows), k)
            else:
                wakes[k].acquire()
                row = jobs[k]

    threads = [threading.Thread(target=slot, args=(k,)) for k in range(slots)]
    for thread in threads:
        thread.start()
    hand_out(commit([]), -1)
    for thread in threads:
        thread.join()
