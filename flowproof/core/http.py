"""The small HTTP server every long-running command runs: /metrics, plus /healthz and /readyz
(and the verifier's status page).

It runs in a daemon thread so a busy event loop never delays a scrape.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from flowproof.core.logging import get_logger

TEXT = "text/plain; charset=utf-8"


class Reply(NamedTuple):
    """What a route answers when its body is not plain text."""

    status: int
    body: str
    content_type: str = TEXT


# A route answers (status code, body text), or a Reply naming its content type.
Route = Callable[[], tuple[int, str] | Reply]

log = get_logger(__name__)


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def ephemeral_floor() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released), for a child process.

    Taken below the kernel's ephemeral range, never twice by this process: a port the kernel
    hands out for port 0 can become the local end of some outgoing connection before the child
    binds it ("Address already in use"); one below that range cannot.
    """
    high = ephemeral_floor()
    low = max(1024, high - 12000)
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port found in {low}-{high - 1}")


class MetricsServer:
    """Serves the Prometheus registry at /metrics and any extra routes given."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Route] | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._routes = dict(routes or {})
        self._registry = registry
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics.serving", url=f"http://{self.host}:{self.port}/metrics")
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        routes = self._routes
        registry = self._registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in routes:
                    reply = Reply(*routes[path]())
                    self._send(reply.status, reply.body.encode(), reply.content_type)
                else:
                    self._send(404, b"not found\n", TEXT)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Scrapes every few seconds would drown the structured log.
                return

        return Handler
