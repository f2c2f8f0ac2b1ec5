"""The worker engine, behind :class:`nuvom.worker.Worker`. Private: may change without notice.

::

    queue --claims.ClaimLoop--> executors (threads.ThreadSlots, asyncloop.AsyncExecutor,
      ^        (one claim step       processes.ProcessPool): each runs attempts through
      |         for free slots        nuvom._runner.JobRunner; nuvom._fate decides what
      |         plus a prefetch)      each attempt's end means
      |                                    |
      +--- outcomes.OutcomeWriter <--------+   outcomes, retries and start marks of
           (one queue.settle() per group)      every executor, written together

    watchdog.Watchdog: timeouts, lease renewal, the event loop's health, presence

Every part talks to the store only through the contract
(:mod:`nuvom.plugins.contracts`); none names a concrete backend.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["safe_log"]


def safe_log(fn: Callable[..., None], *args: object, **kwargs: object) -> None:
    """Log, ignoring a log handler that raises: a broken handler (a full disk,
    no file descriptors left) must not end the thread that logs."""
    try:
        fn(*args, **kwargs)
    except BaseException:
        pass
