"""How values are shown (the templates' filters) and how query strings are read."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any
from urllib.parse import quote

from nuvom.errors import InvalidJobId
from nuvom.job import validate_job_id
from starlette.requests import Request

__all__ = [
    "FILTER_KEYS",
    "STATUSES",
    "ago",
    "brief",
    "filter_query",
    "filters_of",
    "local_zone",
    "parse_cursor",
    "pretty",
    "secs",
    "span",
    "trim_traceback",
    "when",
]

#: The job list's status filter: finished ones, or QUEUED (waiting in the queue).
STATUSES = ("SUCCESS", "FAILED", "QUEUED")
FILTER_KEYS = ("status", "task", "tag", "since", "until")


def local_zone() -> str:
    """The name of the time zone the pages' times are shown in (the server's)."""
    return dt.datetime.now().astimezone().tzname() or "local time"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def ago(seconds: float | None) -> str:
    """A duration as people say it: ``4 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def span(seconds: float | None) -> str:
    """An interval without its zero parts: ``90 s``, ``1 min 30 s``, ``1 h``, ``2 d 12 h``, ``0.5 s``."""
    if seconds is None:
        return "-"
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g} s"
    s = int(seconds)
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "min"), (s % 60, "s")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n) or "0 s"


def brief(value: Any, limit: int = 80) -> str:
    """A value on one line, cut at ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


# -- tracebacks -------------------------------------------------------------
_FRAME = re.compile(r'^  File "(?P<file>[^"]*)", line \d+')
_PACKAGE_ROOTS = ("site-packages", "dist-packages", "src")


def _internal(path: str) -> bool:
    """Whether a traceback frame's file is one of nuvom's own modules: inside a
    ``nuvom`` folder that is an installed package (``site-packages/nuvom/...``)
    or a source checkout's (``src/nuvom/...``). Read from the text alone: the
    worker that wrote it may have run on another machine."""
    parts = re.split(r"[\\/]", path)
    return any(
        part == "nuvom" and i > 0 and parts[i - 1] in _PACKAGE_ROOTS and i < len(parts) - 1
        for i, part in enumerate(parts)
    )


def trim_traceback(text: str | None) -> str | None:
    """The traceback without its leading frames in nuvom's own modules (the
    runner, the executors), so it starts at the user's first frame. Every
    traceback of a chain (``During handling of the above exception...``) is
    trimmed alike; a traceback made only of nuvom's frames is kept whole."""
    if not text:
        return text
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not line.startswith("Traceback (most recent call last):"):
            continue
        start = i
        frames: list[tuple[int, int, bool]] = []  # (first line, end line, internal) of each frame
        while i < len(lines) and lines[i].startswith("  "):
            match = _FRAME.match(lines[i])
            if match is not None:
                if frames:
                    frames[-1] = (frames[-1][0], i, frames[-1][2])
                frames.append((i, i + 1, _internal(match["file"])))
            i += 1
        if frames:
            frames[-1] = (frames[-1][0], i, frames[-1][2])
        keep_from = next((k for k, frame in enumerate(frames) if not frame[2]), None)
        if keep_from is None or keep_from == 0:
            out.extend(lines[start:i])
            continue
        skipped = keep_from
        out.append(f"  [{skipped} frame{'s' if skipped > 1 else ''} in nuvom's own modules hidden]\n")
        out.extend(lines[frames[keep_from][0] : i])
    return "".join(out)


# -- query strings ----------------------------------------------------------
def _parse_time(value: str | None, field: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not a time; use YYYY-MM-DDTHH:MM or a Unix timestamp") from None


def parse_cursor(value: str | None) -> tuple[float, str] | None:
    if not value:
        return None
    at, _, job_id = value.partition(":")
    try:
        return float(at), validate_job_id(job_id)
    except (ValueError, InvalidJobId):
        raise ValueError(f"page cursor {value!r} is malformed; start again from the first page") from None


def filters_of(request: Request) -> dict[str, Any]:
    """The job filters of a query string, validated."""
    q = request.query_params
    status = (q.get("status") or "").upper() or None
    if status is not None and status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return {
        "status": status,
        "task": q.get("task") or None,
        "tag": q.get("tag") or None,
        "since": _parse_time(q.get("since"), "since"),
        "until": _parse_time(q.get("until"), "until"),
    }


def filter_query(request: Request) -> str:
    """The filter part of the current query string, for links and forms."""
    keep = {k: v for k, v in request.query_params.items() if k in FILTER_KEYS and v}
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in keep.items())
