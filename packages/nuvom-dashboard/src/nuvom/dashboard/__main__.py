"""``python -m nuvom.dashboard``: the dashboard served with nothing but this
package installed (``nuvom dashboard``, from nuvom-cli, takes the same options)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from nuvom.dashboard._names import ALLOWED_HOSTS_ENV, TOKEN_ENV
from nuvom.dashboard._serve import DEFAULT_HOST, DEFAULT_PORT, hosts_from_setting, serve

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nuvom.dashboard", description="Serve the web dashboard.")
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind; anything but loopback needs a token or --read-only"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument("--read-only", action="store_true", help="show everything, allow no action")
    parser.add_argument("--token", default=None, help=f"require this token (default: {TOKEN_ENV})")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help=f"another Host name to answer (a reverse proxy's); repeatable; also {ALLOWED_HOSTS_ENV}",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port (0 to 65535)")
    extra = [*hosts_from_setting(os.environ.get(ALLOWED_HOSTS_ENV)), *args.allowed_host]
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    return serve(args.host, args.port, read_only=args.read_only, token=token, allowed_hosts=extra)


if __name__ == "__main__":
    raise SystemExit(main())
