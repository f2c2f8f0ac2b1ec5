"""The process pool's child: a fresh interpreter running one job at a time.

Started by :class:`nuvom._engine.processes.ProcessPool` as ``python -c`` (a
*spawn* on every OS); it imports nothing of the engine, only what a job needs.
Requests and answers are msgpack frames (a 4-byte length, then the payload).
"""

from __future__ import annotations

import asyncio
import os
import queue as queue_mod
import signal
import struct
import sys
import threading
import traceback
from typing import Any

from nuvom import _context, serialization

__all__ = ["child_main", "read_frame", "write_frame"]


def write_frame(out: Any, payload: bytes) -> None:
    out.write(struct.pack(">I", len(payload)) + payload)
    out.flush()


def _read_exactly(src: Any, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = src.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(src: Any) -> bytes | None:
    """One frame, or ``None`` at end of file."""
    head = _read_exactly(src, 4)
    if head is None:
        return None
    return _read_exactly(src, struct.unpack(">I", head)[0])


def child_main() -> None:
    """The child's loop (``python -c``, started by :class:`ProcessPool`)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # Private copies of the pipes; fd 0 and 1 become /dev/null and stderr, so
    # a task that reads stdin or prints cannot garble the frames.
    src = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests: queue_mod.SimpleQueue[bytes] = queue_mod.SimpleQueue()

    def read() -> None:
        # The worker holds the only writing end: end of file means it stopped
        # us or died (even by SIGKILL). Exit at once, whatever the task is doing.
        while True:
            frame = read_frame(src)
            if frame is None:
                os._exit(0)
            requests.put(frame)

    threading.Thread(target=read, name="nuvom-parent-watch", daemon=True).start()
    from nuvom._registry import import_task

    tasks: dict[str, Any] = {}
    warm = serialization.loads(requests.get())
    for path, file in warm.items():
        try:
            tasks[path] = import_task(path, file=file).fn
        except Exception:
            pass  # reported with the job that needs it
    write_frame(out, serialization.dumps("ready"))
    while True:
        name, path, file, args, kwargs, context = serialization.loads(requests.get())
        token = _context.enter(None if context is None else _context.JobContext(**context))
        try:
            fn = tasks.get(path)
            if fn is None:
                fn = tasks[path] = import_task(path, file=file, name=name).fn
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            answer = serialization.dumps([True, result], what=f"the result of task {name!r}")
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            try:
                message = str(exc)
            except Exception:
                message = f"<exception message could not be rendered: {type(exc).__name__}>"
            message = message.encode("utf-8", "replace").decode("utf-8")
            tb = tb.encode("utf-8", "replace").decode("utf-8")
            answer = serialization.dumps([False, [type(exc).__qualname__, message, tb]])
        finally:
            _context.leave(token)
        write_frame(out, answer)
