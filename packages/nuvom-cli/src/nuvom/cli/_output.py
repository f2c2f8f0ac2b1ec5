"""Printing: rich tables for people, one JSON document for scripts.

``--format json`` writes exactly one JSON document to stdout (sorted keys,
two-space indent) and nothing else; notes and warnings go to stderr. The
shapes are documented in docs/cli.md and are kept stable.

rich is imported on first use, never at start-up: ``nuvom --help`` must stay fast.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nuvom.job import Job
    from rich.console import Console

__all__ = [
    "UNLIMITED_WIDTH",
    "Format",
    "attempt_secs",
    "console",
    "err_console",
    "fmt_duration",
    "fmt_time",
    "fmt_time_short",
    "is_whole",
    "job_document",
    "last_attempt_secs",
    "note",
    "print_json",
    "short_repr",
    "status_value",
    "styled_status",
]


class Format(str, Enum):
    table = "table"
    json = "json"


#: Line width when stdout is not a terminal: wide enough that no id, task name
#: or error message is cut or folded (a file or a pipe has no width to fit).
UNLIMITED_WIDTH = 1_000_000


def console() -> Console:
    """A rich console on stdout (created per call: CliRunner swaps sys.stdout).

    On a terminal, tables fit its width; anywhere else (a file, a pipe) values
    are printed whole: see :func:`is_whole`."""
    from rich.console import Console

    out = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if not out.is_terminal:
        out.width = UNLIMITED_WIDTH
    return out


def is_whole(out: Console) -> bool:
    """Whether ``out`` prints whole values (not a terminal): no truncation, no folding."""
    return not out.is_terminal


def err_console() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False, stderr=True)


def note(message: str) -> None:
    """A remark for the person at the terminal: stderr, so stdout stays data."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "__fspath__"):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="python")
    return repr(value)


def print_json(document: Any) -> None:
    text = json.dumps(document, indent=2, sort_keys=True, default=_default, ensure_ascii=False)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except UnicodeEncodeError:
        # A stored string holding a lone surrogate (bytes that were not UTF-8),
        # or a terminal that cannot show a character: \u escapes are valid JSON.
        text = json.dumps(document, indent=2, sort_keys=True, default=_default, ensure_ascii=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fmt_time(ts: float | None, *, utc: bool = False) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmm`` in local time, or in UTC (then suffixed ``UTC``)."""
    if ts is None:
        return "-"
    lt = time.gmtime(ts) if utc else time.localtime(ts)
    text = time.strftime("%Y-%m-%d %H:%M:%S", lt) + f".{int((ts % 1) * 1000):03d}"
    return f"{text} UTC" if utc else text


def fmt_time_short(ts: float | None, *, utc: bool = False) -> str:
    """``HH:MM:SS`` today, ``YYYY-MM-DD HH:MM`` otherwise, in local time or in UTC
    (``utc``: the caller says so, e.g. in the column's header)."""
    if ts is None:
        return "-"
    now = time.gmtime() if utc else time.localtime()
    lt = time.gmtime(ts) if utc else time.localtime(ts)
    if time.strftime("%Y-%m-%d", lt) == time.strftime("%Y-%m-%d", now):
        return time.strftime("%H:%M:%S", lt)
    return time.strftime("%Y-%m-%d %H:%M", lt)


def fmt_duration(secs: float | None) -> str:
    if secs is None:
        return "-"
    if secs < 0.001:
        return f"{secs * 1_000_000:.0f} µs"
    if secs < 1:
        return f"{secs * 1000:.1f} ms"
    if secs < 120:
        return f"{secs:.2f} s"
    return f"{secs / 60:.1f} min"


def attempt_secs(attempt: Any) -> float | None:
    """How long one attempt ran; ``None`` while it runs."""
    if attempt.finished_at is None:
        return None
    return max(0.0, float(attempt.finished_at) - float(attempt.started_at))


def last_attempt_secs(job: Job) -> float | None:
    """How long the job's last attempt ran: the last recorded attempt, or, for
    a record without attempts, from ``started_at`` to ``finished_at``. Every
    duration the CLI prints for a job comes from here or :func:`attempt_secs`,
    so ``status``, ``inspect`` and the JSON agree."""
    if job.history and job.history[-1].finished_at is not None:
        return attempt_secs(job.history[-1])
    if job.started_at is not None and job.finished_at is not None:
        return max(0.0, job.finished_at - job.started_at)
    return None


def _rounded(secs: float | None) -> float | None:
    return None if secs is None else round(secs, 6)


def _error_document(error: Any) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def job_document(job: Job) -> dict[str, Any]:
    """The stable JSON shape of a job (docs/cli.md, "Job document")."""
    return {
        "id": job.id,
        "task": job.func_name,
        "task_path": job.task_path,
        "status": job.status.value,
        "args": job.args,
        "kwargs": job.kwargs,
        "result": job.result,
        "error": _error_document(job.error),
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "retry_delay_secs": job.retry_delay_secs,
        "timeout_secs": job.timeout_secs,
        "timeout_policy": job.timeout_policy,
        "store_result": job.store_result,
        "tags": list(job.tags),
        "created_at": job.created_at,
        "not_before": job.not_before,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration_secs": _rounded(last_attempt_secs(job)),
        "worker_id": job.worker_id,
        "executor": job.executor,
        "retry_of": job.retry_of,
        "schedule_key": job.schedule_key,
        "queue": job.queue,
        "priority": job.priority,
        "unique_key": job.unique_key,
        "flow": None if job.flow is None else job.flow.model_dump(),
        "history": [
            {
                "number": a.number,
                "outcome": a.outcome,
                "executor": a.executor,
                "worker_id": a.worker_id,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "duration_secs": _rounded(attempt_secs(a)),
                "error": _error_document(a.error),
            }
            for a in job.history
        ],
    }


STATUS_STYLE = {
    "SUCCESS": "bold green",
    "FAILED": "bold red",
    "RUNNING": "bold cyan",
    "PENDING": "yellow",
    "RETRYING": "bold yellow",
    "WAITING": "magenta",
}


def styled_status(status: str) -> str:
    """``status`` in rich markup, coloured by :data:`STATUS_STYLE`."""
    return f"[{STATUS_STYLE.get(status, 'bold')}]{status}[/]"


def status_value(status: str) -> list[tuple[str, str]]:
    """``status`` as a styled value for :mod:`nuvom.cli._render`."""
    return [(status, STATUS_STYLE.get(status, "bold"))]


def short_repr(value: Any, limit: int | None = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (``None``: whole)."""
    text = repr(value)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
