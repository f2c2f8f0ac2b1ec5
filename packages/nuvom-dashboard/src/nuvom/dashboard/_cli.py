"""``nuvom dashboard``: contributed to the ``nuvom`` command through the
``nuvom.cli`` entry-point group. The only module of this package that imports
typer (it comes with nuvom-cli, the ``cli`` extra)."""

from __future__ import annotations

import ipaddress
import sys

import typer
from nuvom.dashboard._names import TOKEN_ENV

__all__ = ["app", "is_loopback"]

app = typer.Typer(add_completion=False, help="Serve the web dashboard.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


@app.command()
def dashboard(
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs a token or --read-only."),
    port: int = typer.Option(8765, min=0, max=65535, help="Port to listen on."),
    read_only: bool = typer.Option(False, "--read-only", help="Show everything, allow no action."),
    token: str | None = typer.Option(
        None, envvar=TOKEN_ENV, show_envvar=True, help="Require this token (header or sign-in form)."
    ),
) -> None:
    """Serve the web dashboard (http://127.0.0.1:8765/ by default)."""
    if not is_loopback(host) and not token and not read_only:
        sys.stderr.write(
            f"error: binding {host} exposes the dashboard beyond this machine; set {TOKEN_ENV} (or --token) "
            "or pass --read-only\n"
        )
        raise typer.Exit(2)
    import uvicorn
    from nuvom.dashboard._app import create_app
    from nuvom.errors import NuvomError

    try:
        asgi = create_app(read_only=read_only, token=token or "")
    except NuvomError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(5) from None
    shown = f"[{host}]" if ":" in host else host
    mode = " (read-only)" if read_only else ""
    auth = ", token required" if token else ""
    sys.stderr.write(f"nuvom dashboard on http://{shown}:{port}/{mode}{auth}; Ctrl+C stops it\n")
    uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False)
