"""Adaptive polling, for backends whose store cannot wake a waiter (files, SQLite)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Poller"]

T = TypeVar("T")


class Poller:
    """Adaptive sleep for backends that must poll (files, SQLite).

    The interval starts at ``min_interval`` after work was found and doubles
    while nothing is found, up to ``max_interval``: quick pickup right after
    activity, near-zero CPU when idle.
    """

    def __init__(self, min_interval: float = 0.001, max_interval: float = 0.05) -> None:
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._interval = min_interval

    def reset(self) -> None:
        self._interval = self.min_interval

    def next_interval(self) -> float:
        current = self._interval
        self._interval = min(self._interval * 2, self.max_interval)
        return current

    def until(self, check: Callable[[], T | None], timeout: float | None) -> T | None:
        """Call ``check`` until it returns something other than ``None``, pausing
        by this poller between calls; ``None`` once ``timeout`` seconds pass
        (``None``: wait forever; ``0``: one call)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = check()
            if result is not None:
                return result
            pause = self.next_interval()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            time.sleep(pause)
