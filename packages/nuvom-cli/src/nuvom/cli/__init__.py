"""The ``nuvom`` command line (typer + rich).

``nuvom.cli.main`` is the console script; ``nuvom.cli.app`` is the typer app,
for embedding and for typer's ``CliRunner`` in tests. Commands are documented
in docs/cli.md; other distributions add sub-commands through the ``nuvom.cli``
entry-point group (see :mod:`nuvom.cli._extensions`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``nuvom`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from nuvom.cli._app import main as _main

    return _main(argv)


def __getattr__(name: str) -> Any:
    if name == "app":
        from nuvom.cli._app import app

        return app
    raise AttributeError(f"module 'nuvom.cli' has no attribute {name!r}")
