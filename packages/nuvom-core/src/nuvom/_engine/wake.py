"""The cheapest wake-up between threads CPython has."""

from __future__ import annotations

import _thread

__all__ = ["Wake"]


class Wake:
    """An auto-reset wake-up on one bare lock, held while not set: ``set()``
    releases it, a ``wait()`` that returns ``True`` took it back. An Event is
    a Condition and two locks, with a Python frame on each side; this is one C
    call on each. A wake-up may be spurious, so whoever waits looks again at
    what it waits for."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # set already

    def clear(self) -> None:
        self._lock.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        return self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout))
