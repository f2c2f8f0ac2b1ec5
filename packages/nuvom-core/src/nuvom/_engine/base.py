"""What every executor (threads, the event loop, the process pool) offers the engine."""

from __future__ import annotations

from typing import Protocol

from nuvom.job import Job

__all__ = ["Executor"]


class Executor(Protocol):
    """A place where claimed jobs run. The claim loop asks each for room and
    hands it jobs; the watchdog asks it to enforce timeouts and for the claims
    it holds; a stopping worker asks it to hand back what has not started and
    to let the rest finish."""

    @property
    def slots(self) -> int:
        """How many jobs it runs at once."""
        ...

    def start(self) -> None: ...

    def room(self) -> int:
        """How many more jobs it takes now (free slots plus its prefetch)."""
        ...

    def hungry(self) -> bool:
        """Whether fewer jobs wait here than it runs at once."""
        ...

    def idle(self) -> int:
        """How many of its slots would start a job the moment it arrives."""
        ...

    def submit(self, jobs: list[Job]) -> None:
        """Run ``jobs`` (claimed; those the claim start-marked are in the outcome writer's ``premarked``)."""
        ...

    def held_ids(self) -> list[str]:
        """Ids of the jobs it holds, waiting or running: their leases are renewed."""
        ...

    def running(self, since: float | None = None) -> list[Job]:
        """The jobs running now; with ``since`` (monotonic), also those whose run
        ended at or after it, where the executor keeps that (thread slots)."""
        ...

    def cancel(self, job_id: str) -> None:
        """Stop a running job if this executor can (a coroutine, a child process)."""
        ...

    def check(self, now: float) -> float:
        """Enforce what is due at ``now`` (monotonic): timeouts. Returns when to look again."""
        ...

    def begin_stop(self) -> None:
        """Take no more jobs; hand back the ones that have not started."""
        ...

    def wait(self, deadline: float) -> bool:
        """Wait until running jobs end or ``deadline`` (monotonic); ``True`` if all did."""
        ...

    def interrupt(self) -> int:
        """Hand back what still runs after the grace period; returns how many."""
        ...

    def close(self) -> None: ...
