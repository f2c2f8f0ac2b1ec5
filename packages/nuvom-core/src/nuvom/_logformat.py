"""How a worker's log lines look: text for people, one JSON object a line for
log shippers (``NUVOM_LOG_FORMAT=json``).

The library never installs handlers; the two programs that run a worker do,
both through :func:`install_handler` (``python -m nuvom.worker``) or
:class:`JsonFormatter` (``nuvom runworker``, whose text lines are Rich's).
Standard library only: this runs in every worker process.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["JOB_FIELDS", "TEXT_FORMAT", "JsonFormatter", "install_handler", "make_handler"]

#: The ``extra=`` fields of a record copied into its JSON object, when present.
#: The engine logs a job's events with ``extra={"job_id": ..., "task": ..., "worker": ...}``.
JOB_FIELDS = ("job_id", "task", "worker")

#: The text lines of ``python -m nuvom.worker``.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``timestamp`` (ISO 8601, UTC, milliseconds),
    ``level``, ``logger``, ``message``; ``job_id``, ``task`` and ``worker``
    when the record carries them; ``exception`` (the traceback's text) when
    there is one. A message's own newlines stay inside the JSON string."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        out: dict[str, Any] = {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in JOB_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        # default=str: an extra value that is not JSON (a Path, an enum) is still one line.
        return json.dumps(out, ensure_ascii=False, default=str)


def make_handler(log_format: str, stream: TextIO) -> logging.Handler:
    """A stream handler writing ``log_format`` (``"text"`` or ``"json"``) lines to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def install_handler(settings: Settings, stream: TextIO) -> logging.Handler:
    """Send the ``nuvom`` loggers to ``stream`` in ``settings.log_format`` at
    ``settings.log_level``, replacing a handler this function installed before.
    Returns the handler."""
    logger = logging.getLogger("nuvom")
    for old in list(logger.handlers):
        if getattr(old, "_nuvom_logformat", False):
            logger.removeHandler(old)
    handler = make_handler(settings.log_format, stream)
    setattr(handler, "_nuvom_logformat", True)  # noqa: B010 - marks the handler a later call replaces
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    return handler
