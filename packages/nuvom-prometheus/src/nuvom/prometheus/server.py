"""A small HTTP server: ``/metrics`` in the Prometheus text format (or
OpenMetrics when asked), and a human page at ``/``."""

from __future__ import annotations

import errno
import gzip
import html
import logging
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nuvom.errors import PluginError
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["IDLE_TIMEOUT_SECS", "MAX_CONNECTIONS", "MetricsServer", "PortUnavailable"]

log = logging.getLogger("nuvom.prometheus")


class PortUnavailable(PluginError, OSError):
    """No port of the configured port or range could be bound."""


#: At most this many connections are served at once; more are closed on
#: arrival. Each holds a thread and a descriptor, and a client of the metrics
#: port must never use up what the worker needs to run jobs.
MAX_CONNECTIONS = 16
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT_SECS = 5.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Threads of finished requests are not kept for joining (socketserver would
    # keep one entry per request for the life of the server).
    block_on_close = False
    # On POSIX, SO_REUSEADDR only allows rebinding a port left in TIME_WAIT by a
    # restarted worker; on Windows it would let two listeners share a port.
    allow_reuse_address = sys.platform != "win32"
    registry: CollectorRegistry
    title: str
    before_scrape: Callable[[], None] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics port: %d connections open; closing one from %s", MAX_CONNECTIONS, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a reverse DNS query
        # that can stall start-up for seconds on machines without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "nuvom-prometheus"
    # HTTP/1.0: one request per connection, so no kept-alive connection outlives stop().
    protocol_version = "HTTP/1.0"
    # The socket timeout of each connection: an idle client is dropped.
    timeout = IDLE_TIMEOUT_SECS

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/metrics":
            self._metrics(parse_qs(url.query))
        elif url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self._index().encode("utf-8"))
        elif url.path == "/favicon.ico":
            self._send(204, "text/plain", b"")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: the metrics are at /metrics\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _metrics(self, params: dict[str, list[str]]) -> None:
        registry: Any = self.server.registry
        if "name[]" in params:
            registry = registry.restricted_registry(params["name[]"])
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            if self.server.before_scrape is not None:
                self.server.before_scrape()
            body = encoder(registry)
        except Exception:
            log.exception("building the metrics page failed")
            self._send(500, "text/plain; charset=utf-8", b"building the metrics failed; see the worker's log\n")
            return
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 1024:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self._send(200, content_type, body, headers)

    def _index(self) -> str:
        title = html.escape(self.server.title)
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>nuvom exporter</title></head>\n'
            "<body><h1>nuvom Prometheus exporter</h1>\n"
            f"<p>The exporter of {title} is running.</p>\n"
            '<p>Metrics: <a href="/metrics">/metrics</a></p>\n'
            "</body></html>\n"
        )

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer:
    """Serves one registry from a daemon thread; :meth:`stop` closes the port."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread: threading.Thread | None = None

    @classmethod
    def bind(
        cls,
        host: str,
        ports: tuple[int, int],
        registry: CollectorRegistry,
        *,
        title: str = "this worker",
        before_scrape: Callable[[], None] | None = None,
    ) -> MetricsServer:
        """Bind the first free port of ``ports`` (inclusive) on ``host``; raises
        :class:`PortUnavailable` when none is free. ``before_scrape`` is called
        before each ``/metrics`` answer is built."""
        family = _family(host)
        first, last = ports
        server_cls = type("_BoundServer", (_Server,), {"address_family": family})
        errors: list[str] = []
        for port in range(first, last + 1):
            try:
                server = server_cls((host, port), _Handler)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    errors.append(f"{port}: {exc.strerror}")
                    continue
                raise PortUnavailable(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            server.registry = registry
            server.title = title
            server.before_scrape = before_scrape
            return cls(server)
        where = f"port {first}" if first == last else f"ports {first}-{last}"
        raise PortUnavailable(
            errno.EADDRINUSE,
            f"cannot listen on {host} {where} ({'; '.join(errors)}); another process (another worker?) "
            "holds it. Give each worker process its own port (NUVOM_PROMETHEUS_PORT=9151) or a range "
            "(NUVOM_PROMETHEUS_PORT=9150-9157)",
        )

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.25}, name="nuvom-prometheus", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()


def _family(host: str) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortUnavailable(errno.EADDRNOTAVAIL, f"NUVOM_PROMETHEUS_HOST={host!r} cannot be resolved: {exc}") from exc
    return infos[0][0] if infos else socket.AF_INET
