"""Which ``Host`` headers the dashboard answers: the defence against DNS rebinding.

A page on another site can have the browser resolve that site's own name to
127.0.0.1 (DNS rebinding) and then talk to a loopback dashboard as if it were
a page of its own origin: same-origin rules, ``SameSite`` cookies and CORS all
hold, because the browser believes it talks to the attacker's site. What gives
it away is the ``Host`` header, which carries the attacker's name. So the served
dashboard answers only the names it is reached by, and anything else gets 400
before any handler runs: no page, no cookie, no action.

Pure standard library: the ``nuvom dashboard`` command imports this module
while ``nuvom --help`` runs.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["LOOPBACK_NAMES", "AllowedHosts", "HostGuard", "hosts_for_bind", "is_loopback", "split_host"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The names of this machine's loopback interface a browser may use.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def split_host(value: str) -> tuple[str, str | None]:
    """``(name, port)`` of a ``Host`` header value: the name lowercased, an IPv6
    address in brackets, the port ``None`` when absent. A value that is not a
    well-formed host comes back whole as the name (and matches nothing)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        name, rest = value[: end + 1], value[end + 1 :]
        if not rest:
            return name, None
        return (name, rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else (value, None)
    name, sep, port = value.partition(":")
    if not sep:
        return name, None
    return (name, port) if port.isdigit() else (value, None)


def _bracketed(host: str) -> str:
    """An address as it appears in a Host header (IPv6 in brackets)."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


class AllowedHosts:
    """The names a request's ``Host`` may carry. An entry ``name`` accepts that
    name with or without a port; ``name:port`` only that pair; ``*`` anything
    (no check)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.any = False
        self.names: set[str] = set()
        self.pairs: set[tuple[str, str]] = set()
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            if entry == "*":
                self.any = True
                continue
            name, port = split_host(_bracketed(entry) if entry.count(":") > 1 else entry)
            if port is None:
                self.names.add(name)
            else:
                self.pairs.add((name, port))

    def __contains__(self, host: object) -> bool:
        if self.any:
            return True
        if not isinstance(host, str) or not host:
            return False
        name, port = split_host(host)
        return name in self.names or (port is not None and (name, port) in self.pairs)

    def describe(self) -> str:
        if self.any:
            return "any host"
        shown = sorted(self.names) + sorted(f"{n}:{p}" for n, p in self.pairs)
        return ", ".join(shown) or "no host"


def hosts_for_bind(host: str) -> list[str]:
    """The names a server bound to ``host`` is reached by: the loopback names for
    a loopback bind; for a wildcard bind (``0.0.0.0``, ``::``) those plus this
    machine's host name and addresses; otherwise the bound address or name itself."""
    if is_loopback(host):
        return sorted({*LOOPBACK_NAMES, _bracketed(host)})
    if host.strip() in _WILDCARDS:
        names = {*LOOPBACK_NAMES, socket.gethostname().lower(), socket.getfqdn().lower()}
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None)
        except OSError:
            infos = []
        names.update(_bracketed(str(info[4][0]).split("%")[0]) for info in infos)
        return sorted(n for n in names if n)
    return [_bracketed(host)]


class HostGuard:
    """ASGI middleware, outermost: a request whose ``Host`` is not allowed gets
    400 and reaches nothing else. ``allowed=None`` checks nothing (an app that
    mounts the dashboard checks hosts itself)."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = ""
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
                break
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        body = (
            f"Invalid Host header. This dashboard answers to {self.allowed.describe()}; a reverse proxy's name "
            "is added with --allowed-host or NUVOM_DASHBOARD_ALLOWED_HOSTS.\n"
        ).encode()
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
