"""Import boundaries, read from the source files with `ast` (nothing is imported or run).

agent/ and router/ are separate services: neither imports the other (what both need lives in
flying/). Proto types stay at the edges: only the wire module and the gRPC servicers/clients
import `flying.v1`; the worker group (flying_core/) imports no service, no proto and no gRPC.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "router", "flying", "flying_core", "bench")

# every module outside flying/v1 that may import flying.v1, and why
PROTO_EDGES = {
    "flying/wire.py": "the one proto <-> plain-type conversion module",
    "agent/main.py": "registers the Agent servicer",
    "agent/service.py": "the Agent servicer (and its ExportKV client for KV pulls)",
    "agent/session.py": "the Agent's Session stream: requests in, SessionEvents out",
    "router/main.py": "registers the Router servicer",
    "router/service.py": "the Router servicer",
    "router/agents.py": "the router's agent client: stubs and status polling",
    "router/session.py": "the router's end of the agent Session stream",
    "router/dispatch.py": "forwards GenerateRequests to the agents (client side)",
    "router/micro.py": "sets split/resume fields of the forwarded GenerateRequest",
    "flying/demo.py": "`flying up --demo`: a Router gRPC client",
    "bench/systems.py": "the benchmark drives an agent over gRPC",
    "bench/sim/micro.py": "the GenerateRequest the simulator hands router.micro.plan_split",
}


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "v1" not in p.parts)


def imported(path: Path) -> set[str]:
    """Every absolute module name `path` imports, also inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return out


def imports_any(path: Path, *packages: str) -> list[str]:
    return sorted(m for m in imported(path)
                  if any(m == p or m.startswith(p + ".") for p in packages))


def test_the_scan_sees_imports():
    assert imports_any(ROOT / "agent" / "service.py", "flying.v1")
    assert imports_any(ROOT / "flying" / "cli.py", "agent", "router")   # lazy, inside main()


def test_agent_and_router_do_not_import_each_other():
    bad = {str(p.relative_to(ROOT)): imports_any(p, other)
           for pkg, other in (("agent", "router"), ("router", "agent"))
           for p in sources(pkg) if imports_any(p, other)}
    assert not bad, bad


def test_proto_types_only_at_the_edges():
    users = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in sources(pkg)
             if imports_any(p, "flying.v1")}
    assert users == set(PROTO_EDGES), (sorted(users - set(PROTO_EDGES)),
                                       sorted(set(PROTO_EDGES) - users))


def test_worker_group_imports_no_service_and_no_proto():
    banned = ("agent", "router", "flying.v1", "flying.wire", "grpc")
    bad = {str(p.relative_to(ROOT)): imports_any(p, *banned)
           for p in sources("flying_core") if imports_any(p, *banned)}
    assert not bad, bad
