"""``nuvom dashboard``: contributed to the ``nuvom`` command through the
``nuvom.cli`` entry-point group. The only module of this package that imports
typer (it comes with nuvom-cli, the ``cli`` extra); ``python -m nuvom.dashboard``
serves the same way without it."""

from __future__ import annotations

from typing import Annotated

import typer
from nuvom.dashboard._hosts import is_loopback
from nuvom.dashboard._names import ALLOWED_HOSTS_ENV, TOKEN_ENV
from nuvom.dashboard._serve import DEFAULT_HOST, DEFAULT_PORT, hosts_from_setting, serve

__all__ = ["app", "is_loopback"]

app = typer.Typer(add_completion=False, help="Serve the web dashboard.")


@app.command()
def dashboard(
    host: str = typer.Option(DEFAULT_HOST, help="Address to bind; anything but loopback needs a token or --read-only."),
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="Port to listen on."),
    read_only: bool = typer.Option(False, "--read-only", help="Show everything, allow no action."),
    token: str | None = typer.Option(
        None, envvar=TOKEN_ENV, show_envvar=True, help="Require this token (header or sign-in form)."
    ),
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help=f"Another Host name to answer (a reverse proxy's); repeatable. Also {ALLOWED_HOSTS_ENV}, "
            "comma separated.",
        ),
    ] = None,
) -> None:
    """Serve the web dashboard (http://127.0.0.1:8765/ by default)."""
    import os

    extra = [*hosts_from_setting(os.environ.get(ALLOWED_HOSTS_ENV)), *(allowed_host or [])]
    code = serve(host, port, read_only=read_only, token=token, allowed_hosts=extra)
    if code:
        raise typer.Exit(code)
