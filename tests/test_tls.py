"""Transport security over real processes: a router serving gRPC and REST over TLS, dialling an
agent over mutual TLS; certificates made here (a CA, the servers' and a client's); request size
limits on both servers; a missing certificate file refused at start with one line."""
from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flying.healthcheck import check_grpc
from flying.v1 import flying_pb2 as pb
from flying.v1 import flying_pb2_grpc as pb_grpc
from tests.agentkit import free_port


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(d: Path, name: str, cert, key) -> tuple[str, str]:
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(d / f"{name}.crt"), str(d / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("flying-test-ca", ca_key, _name("flying-test-ca"), ca_key, ca=True)
    out = {"ca": _write(d, "ca", ca, ca_key)[0]}
    for who in ("agent", "router", "stranger"):
        key = ec.generate_private_key(ec.SECP256R1())
        issuer, signer = (_name("flying-test-ca"), ca_key)
        if who == "stranger":     # signed by another CA
            signer = ec.generate_private_key(ec.SECP256R1())
            issuer = _name("someone-else")
        out[f"{who}_cert"], out[f"{who}_key"] = _write(d, who, _cert(who, key, issuer, signer),
                                                       key)
    return out


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        assert time.monotonic() < end, f"{what} not up in {timeout:.0f}s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tiny_model, pki, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    a_port, g_port, h_port = free_port(), free_port(), free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "flying.cli", "agent", "--model", tiny_model, "--workers", "1",
         "--port", str(a_port), "--dtype", "float32", "--kv-bytes", str(4 << 20),
         "--tls-cert", pki["agent_cert"], "--tls-key", pki["agent_key"], "--tls-ca", pki["ca"],
         "--max-request-bytes", str(64 << 10)],
        stdout=open(logs / "agent.log", "w"), stderr=subprocess.STDOUT)
    router = None
    try:
        mtls = dict(ca=pki["ca"], cert=pki["router_cert"], key=pki["router_key"])
        _wait(lambda: check_grpc(f"127.0.0.1:{a_port}", **mtls)[0], 600, "agent", agent)
        router = subprocess.Popen(
            [sys.executable, "-m", "flying.cli", "router", "--agent", f"127.0.0.1:{a_port}",
             "--grpc-port", str(g_port), "--http-port", str(h_port), "--no-policy",
             "--tls-cert", pki["router_cert"], "--tls-key", pki["router_key"],
             "--tls-ca", pki["ca"], "--max-request-bytes", str(64 << 10)],
            stdout=open(logs / "router.log", "w"), stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{h_port}"
        _wait(lambda: _http_ok(url + "/health", pki["ca"]), 180, "router", router)
        yield {"agent": f"127.0.0.1:{a_port}", "grpc": f"127.0.0.1:{g_port}", "url": url}
    finally:
        for p in (router, agent):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(60)


def _trust(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki["ca"])


def _http_ok(url: str, ca: str) -> bool:
    try:
        return httpx.get(url, verify=ssl.create_default_context(cafile=ca), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_rest_over_tls_through_mutual_tls_to_the_agent(cluster, pki):
    body = {"model": "flying", "prompt": "once upon a time", "max_tokens": 5,
            "temperature": 0, "ignore_eos": True}
    r = httpx.post(cluster["url"] + "/v1/completions", json=body, verify=_trust(pki), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    with pytest.raises(httpx.ConnectError):     # a client that does not trust the CA
        httpx.get(cluster["url"] + "/health", timeout=5)
    with pytest.raises(httpx.HTTPError):        # plaintext to the TLS port
        httpx.get(cluster["url"].replace("https", "http") + "/health", timeout=5)


def test_router_grpc_over_tls(cluster, pki):
    creds = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
    with grpc.secure_channel(cluster["grpc"], creds) as ch:
        out = list(pb_grpc.RouterStub(ch).Generate(pb.GenerateRequest(
            prompt="hello", sampling=pb.SamplingParams(max_tokens=3, ignore_eos=True,
                                                       temperature=0.0)), timeout=60))
    assert sum(len(r.chunk.token_ids) for r in out if r.HasField("chunk")) == 3


def test_agent_refuses_clients_without_a_certificate_it_trusts(cluster, pki):
    assert check_grpc(cluster["agent"], ca=pki["ca"], cert=pki["router_cert"],
                      key=pki["router_key"])[0]
    ok, why = check_grpc(cluster["agent"], ca=pki["ca"])                   # no client cert
    assert not ok, why
    ok, why = check_grpc(cluster["agent"], ca=pki["ca"], cert=pki["stranger_cert"],
                         key=pki["stranger_key"])                          # another CA's
    assert not ok, why
    assert not check_grpc(cluster["agent"])[0]                              # plaintext


def test_request_size_limits(cluster, pki):
    big = {"model": "flying", "prompt": "x" * (80 << 10), "max_tokens": 1}
    r = httpx.post(cluster["url"] + "/v1/completions", json=big, verify=_trust(pki), timeout=30)
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]["message"]

    def chunked():                                  # no Content-Length: counted while read
        yield b'{"model": "flying", "prompt": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'", "max_tokens": 1}'
    r = httpx.post(cluster["url"] + "/v1/completions", content=chunked(), verify=_trust(pki),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413
    creds = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
    with grpc.secure_channel(cluster["grpc"], creds) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.RouterStub(ch).Generate(pb.GenerateRequest(
                prompt="z" * (80 << 10), sampling=pb.SamplingParams(max_tokens=1)), timeout=30))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_missing_certificate_is_a_one_line_configuration_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "flying.cli", "router", "--tls-cert",
                        str(tmp_path / "nope.crt"), "--tls-key", str(tmp_path / "nope.key"),
                        "--http-port", str(free_port()), "--grpc-port", str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "tls_cert" in r.stderr and "Traceback" not in r.stderr
