"""Exit codes and the one-line error report.

Every :class:`~nuvom.errors.NuvomError` that reaches the command line becomes a
single ``error: ...`` line on stderr and a non-zero exit code chosen by its
class; ``nuvom --debug`` adds the traceback. The table is repeated in
docs/cli.md, which scripts rely on: change both or neither.
"""

from __future__ import annotations

import sys
import traceback

__all__ = [
    "EXIT_BACKEND",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PLUGIN",
    "EXIT_USAGE",
    "CliError",
    "NotFound",
    "exit_code_for",
    "options",
    "report",
    "report_usage",
]

EXIT_OK = 0
#: The thing run or checked failed: the job of ``runtestworker``, a ``plugin test``
#: check; also any other nuvom error without a code of its own.
EXIT_FAILED = 1
EXIT_USAGE = 2  # bad option or argument (also what click/typer use)
EXIT_NOT_FOUND = 3  # no job with that id
EXIT_INVALID = 4  # malformed input: job id, job file, a job in the wrong state
EXIT_CONFIG = 5  # a setting (environment or .env) has an unusable value
EXIT_BACKEND = 6  # a backend is not installed or cannot be opened
EXIT_PLUGIN = 7  # .nuvom_plugins.toml is malformed, a plugin cannot be loaded
EXIT_INTERNAL = 70  # a bug: an unexpected exception (EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C outside `runworker`


class _Options:
    """Global flags of the invocation (set by the root callback)."""

    debug: bool = False


options = _Options()


def _nuvom_error() -> type[Exception]:
    from nuvom.errors import NuvomError

    return NuvomError


class CliError(Exception):
    """An error found by the CLI itself, with the exit code to use."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotFound(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NOT_FOUND)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, CliError):
        return exc.exit_code
    from nuvom import errors

    table: tuple[tuple[type[BaseException], int], ...] = (
        (errors.InvalidJobId, EXIT_INVALID),
        (errors.ConfigError, EXIT_CONFIG),
        (errors.BackendError, EXIT_BACKEND),
        (errors.PluginError, EXIT_PLUGIN),
    )
    for cls, code in table:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, errors.NuvomError):
        return EXIT_FAILED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL


def is_expected(exc: BaseException) -> bool:
    """Errors that are the user's to fix (no traceback unless ``--debug``)."""
    return isinstance(exc, (CliError, _nuvom_error()))


def one_line(text: str) -> str:
    # Multi-line messages (pydantic, TOML) would break "one line on stderr".
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def report(exc: BaseException, *, debug: bool) -> int:
    """Print ``exc`` as one ``error:`` line on stderr (plus the traceback when
    ``debug``) and return the exit code to use."""
    code = exit_code_for(exc)
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        message = "interrupted"
    elif is_expected(exc):
        message = one_line(str(exc)) or type(exc).__name__
    else:
        hint = "" if debug else " (run `nuvom --debug ...` for the traceback)"
        message = f"unexpected {type(exc).__name__}: {one_line(str(exc))}{hint}"
    return _write(message, code)


def report_usage(exc: BaseException) -> int:
    """A typer/click usage error (unknown option, value out of range, missing
    argument) as one ``error:`` line naming the command; returns its exit code."""
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "nuvom"
    message = one_line(str(exc.format_message()))  # type: ignore[attr-defined]
    return _write(f"{path}: {message} (see `{path} --help`)", int(getattr(exc, "exit_code", EXIT_USAGE)))


def _write(message: str, code: int) -> int:
    prefix = "\x1b[1;31merror:\x1b[0m" if _colour(sys.stderr) else "error:"
    sys.stderr.write(f"{prefix} {message}\n")
    sys.stderr.flush()
    return code


def _colour(stream: object) -> bool:
    import os

    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except Exception:
        return False
