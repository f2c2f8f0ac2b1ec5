"""The project a command runs in: its directory, settings, logging and backends.

Commands call these on demand, so that nothing heavy (pydantic-settings,
backends, plugins) is imported before a command needs it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom.cli._errors import options

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["backend_report", "load_project_settings", "project_on_path", "setup_logging"]


def project_on_path(root: Path | None = None) -> Path:
    """Put the project directory (default: the working directory) first on
    ``sys.path``, so ``tasks.py`` and packages beside it import without
    ``PYTHONPATH``, as they do for ``python -m``."""
    root = (root or Path.cwd()).resolve()
    entry = str(root)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    return root


def load_project_settings() -> Settings:
    """Read the settings afresh (environment, then ``.env``, then defaults) and
    make them the process-wide ones; a bad value raises ``ConfigError``."""
    from nuvom.config import load_settings, reset_settings

    settings = load_settings()  # a .env that is not UTF-8 is a ConfigError naming line and column
    reset_settings(settings)
    return settings


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        text = f"{level}: {record.getMessage()}"
        if record.exc_info and options.debug:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str = "WARNING", *, rich: bool = False, quiet: bool = False, log_format: str = "text") -> None:
    """Send the ``nuvom`` loggers to stderr: plain ``level: message`` lines for
    one-shot commands, a rich handler (time, level, tracebacks) for the worker,
    or, for the worker with ``log_format="json"`` (``NUVOM_LOG_FORMAT``), one
    JSON object a line for log shippers. ``quiet`` (one-shot commands) raises
    INFO to WARNING, so that only problems are reported. Only the CLI installs
    handlers; the library never does."""
    if quiet and level == "INFO":
        level = "WARNING"
    logger = logging.getLogger("nuvom")
    for old in list(logger.handlers):
        if getattr(old, "_nuvom_cli", False):
            logger.removeHandler(old)
    handler: logging.Handler
    if rich and log_format == "json":
        from nuvom._logformat import make_handler

        handler = make_handler("json", sys.stderr)
    elif rich:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=sys.stderr, stderr=True),
            show_path=False,
            rich_tracebacks=True,
            tracebacks_show_locals=False,
            log_time_format="%H:%M:%S",
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    setattr(handler, "_nuvom_cli", True)  # noqa: B010 - marks handlers this module may replace
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def backend_report(settings: Settings) -> dict[str, dict[str, Any]]:
    """Which queue and result backends the settings select, why, and whether
    they are installed: ``{"queue": {"name", "why", "installed"}, "result": ...}``."""
    from nuvom.app import default_app

    app = default_app()
    names = app.backend_names()
    return {
        role: {"name": name, "why": why, "installed": name.lower() in app.backends.names(role)}
        for role, (name, why) in names.items()
    }
