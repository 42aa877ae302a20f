"""flying/healthcheck.py against a real gRPC health server and a real HTTP server."""
from __future__ import annotations

import http.server
import socket
import threading
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flying import healthcheck

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def grpc_health():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_grpc_serving_and_not_serving(grpc_health, capsys):
    servicer, target = grpc_health
    servicer.set("", NOT_SERVING)
    servicer.set("flying.v1.Agent", NOT_SERVING)
    assert healthcheck.main([target]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    servicer.set("", SERVING)
    assert healthcheck.main([target]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert healthcheck.main([target, "--service", "flying.v1.Agent"]) == 1
    servicer.set("flying.v1.Agent", SERVING)
    assert healthcheck.main([target, "--service", "flying.v1.Agent", "-q"]) == 0
    assert healthcheck.main([target, "--service", "flying.v1.Nope"]) == 1   # NOT_FOUND


def test_grpc_nobody_listening():
    assert healthcheck.main([f"127.0.0.1:{free_port()}", "--timeout", "1", "-q"]) == 1


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_http_health():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert healthcheck.main([base + "/health", "-q"]) == 0
        assert healthcheck.main([base + "/draining", "-q"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main([f"http://127.0.0.1:{free_port()}/health", "-q"]) == 1
