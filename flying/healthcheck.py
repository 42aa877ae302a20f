"""Container health check: `python -m flying.healthcheck TARGET [--service NAME]`.

TARGET is HOST:PORT (a gRPC server; asks grpc.health.v1.Health/Check, "" = the whole server)
or an http(s):// URL (GET; any 2xx is healthy). Exit status 0 when SERVING / 2xx, 1 otherwise
(NOT_SERVING, unknown service, refused, timed out). Meant for Docker HEALTHCHECK and scripts;
Kubernetes uses its own `grpc:` and `httpGet:` probes, or this one as an `exec:` probe when the
servers use TLS (`--tls-ca`, and `--tls-cert`/`--tls-key` for an agent asking client
certificates).
"""
from __future__ import annotations

import argparse
import ssl
import sys
import urllib.error
import urllib.request


def _channel(target: str, ca: str, cert: str, key: str):
    import grpc
    if not ca:
        return grpc.insecure_channel(target)
    read = lambda p: open(p, "rb").read() if p else None   # noqa: E731
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(read(ca), read(key),
                                                                    read(cert)))


def check_grpc(target: str, service: str = "", timeout: float = 3.0, ca: str = "",
               cert: str = "", key: str = "") -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with _channel(target, ca, cert, key) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as e:
        return False, f"{e.code().name}: {e.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, name


def check_http(url: str, timeout: float = 3.0, ca: str = "") -> tuple[bool, str]:
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=timeout,  # noqa: S310 (our own URL)
                                    context=context) as reply:
            return 200 <= reply.status < 300, f"HTTP {reply.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return False, str(getattr(e, "reason", e))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flying.healthcheck", description=__doc__)
    p.add_argument("target", help="HOST:PORT (gRPC health) or http://HOST:PORT/health")
    p.add_argument("--service", default="", help="gRPC service name (default: the server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--tls-ca", default="", help="PEM CA: connect over TLS, verify with it")
    p.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    ns = p.parse_args(argv)
    if ns.target.startswith(("http://", "https://")):
        ok, what = check_http(ns.target, ns.timeout, ns.tls_ca)
    else:
        ok, what = check_grpc(ns.target, ns.service, ns.timeout, ns.tls_ca, ns.tls_cert,
                              ns.tls_key)
    if not ns.quiet:
        print(f"{ns.target}: {what}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
