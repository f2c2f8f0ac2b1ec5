"""Serving the dashboard with uvicorn: what ``nuvom dashboard`` (nuvom-cli) and
``python -m nuvom.dashboard`` (nothing but this package) both run.

Pure standard library at import: the command's module imports this one while
``nuvom --help`` runs; Starlette, uvicorn and the store load in :func:`serve`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from nuvom.dashboard._hosts import AllowedHosts, hosts_for_bind, is_loopback
from nuvom.dashboard._names import ALLOWED_HOSTS_ENV, TOKEN_ENV

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "bind_refusal", "hosts_from_setting", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def bind_refusal(host: str, token: str | None, read_only: bool) -> str | None:
    """Why binding ``host`` is refused (one line), or ``None``: an address other
    than loopback exposes the dashboard beyond this machine, so it needs a token
    or read-only mode."""
    if is_loopback(host) or token or read_only:
        return None
    return f"binding {host} exposes the dashboard beyond this machine; set {TOKEN_ENV} (or --token) or pass --read-only"


def hosts_from_setting(value: str | None) -> list[str]:
    """The names of ``NUVOM_DASHBOARD_ALLOWED_HOSTS`` (comma separated)."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def serve(host: str, port: int, *, read_only: bool, token: str | None, allowed_hosts: Iterable[str] = ()) -> int:
    """Serve until interrupted; returns the exit code (2 a refused bind, 5 a bad
    setting or store). Errors are one line on stderr."""
    refusal = bind_refusal(host, token, read_only)
    if refusal is not None:
        sys.stderr.write(f"error: {refusal}\n")
        return 2
    import uvicorn
    from nuvom.dashboard._app import create_app
    from nuvom.errors import NuvomError

    hosts = [*hosts_for_bind(host), *allowed_hosts]
    try:
        asgi = create_app(read_only=read_only, token=token or "", allowed_hosts=hosts)
    except NuvomError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 5
    shown = f"[{host}]" if ":" in host else host
    mode = " (read-only)" if read_only else ""
    auth = ", token required" if token else ""
    sys.stderr.write(
        f"nuvom dashboard on http://{shown}:{port}/{mode}{auth}; answering Host {AllowedHosts(hosts).describe()} "
        f"(more with --allowed-host or {ALLOWED_HOSTS_ENV}); Ctrl+C stops it\n"
    )
    uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False)
    return 0
