"""Container health check: `python -m flying.healthcheck TARGET [--service NAME]`.

TARGET is HOST:PORT (a gRPC server; asks grpc.health.v1.Health/Check, "" = the whole server)
or an http(s):// URL (GET; any 2xx is healthy). Exit status 0 when SERVING / 2xx, 1 otherwise
(NOT_SERVING, unknown service, refused, timed out). Meant for Docker HEALTHCHECK and scripts;
Kubernetes uses its own `grpc:` and `httpGet:` probes.
"""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def check_grpc(target: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as e:
        return False, f"{e.code().name}: {e.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, name


def check_http(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (our own URL)
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
    ns = p.parse_args(argv)
    if ns.target.startswith(("http://", "https://")):
        ok, what = check_http(ns.target, ns.timeout)
    else:
        ok, what = check_grpc(ns.target, ns.service, ns.timeout)
    if not ns.quiet:
        print(f"{ns.target}: {what}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
