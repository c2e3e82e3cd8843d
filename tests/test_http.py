"""The /metrics server every long-running command runs."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from flowproof.core import http
from flowproof.core.http import MetricsServer


def test_serves_metrics_and_routes_on_a_free_port() -> None:
    registry = CollectorRegistry()
    Counter("flowproof_test_things", "things", registry=registry).inc(3)
    server = MetricsServer("127.0.0.1", 0, {"/readyz": lambda: (503, "not ready\n")}, registry)
    server.start()
    try:
        assert server.port > 0
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert "flowproof_test_things_total 3.0" in body
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert info.value.code == 503
        info.value.close()
    finally:
        server.stop()


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    # A port from the ephemeral range can be taken by an outgoing connection's own end before
    # the child process binds it (a private Kafka broker once failed so: "Address already in use").
    low = http.ephemeral_floor()
    ports = [http.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= port < low for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
