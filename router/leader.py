"""Which router runs the layout policy: several routers serve the same agents, one decides.

- :class:`Always`: one router (the default): it leads.
- :class:`FileLock`: routers on one host (or on a filesystem with working ``flock``) take an
  exclusive lock on one file; the kernel drops it when the leader dies, however it dies, and
  the next router to try (every ``retry_s``) leads.
- :class:`KubernetesLease`: in Kubernetes, a ``coordination.k8s.io/v1`` Lease, taken when free
  or expired and renewed every third of its duration, with the API server's optimistic
  concurrency (``resourceVersion``: two routers cannot both win one update). A leader that
  cannot renew steps down before the lease expires. Hand-written over ``httpx`` (a few REST
  calls) rather than the ``kubernetes`` client, a large dependency for one resource.

Serving requests needs no leadership: every router places, streams and retries.
"""
from __future__ import annotations

import asyncio
import datetime
import fcntl
import os
import socket
import ssl
import time
from pathlib import Path

import httpx

from flying import logs

log = logs.get("flying.router.leader")


class Always:
    kind = "single"
    is_leader = True

    async def run(self) -> None:
        return None

    def close(self) -> None:
        return None


class FileLock:
    kind = "lock"

    def __init__(self, path: str, retry_s: float = 0.5):
        self.path, self.retry_s = Path(path), retry_s
        self._fd: int | None = None

    @property
    def is_leader(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
            self._fd = fd
            log.info("policy leader", lock=str(self.path))
        return True

    async def run(self) -> None:
        while not self.try_acquire():
            await asyncio.sleep(self.retry_s)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)      # closing the descriptor releases the lock
            self._fd = None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _age_s(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    t = datetime.datetime.strptime(stamp.replace("Z", ""), "%Y-%m-%dT%H:%M:%S.%f")
    return (datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - t).total_seconds()


class KubernetesLease:
    kind = "lease"
    SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")

    def __init__(self, namespace: str, name: str, identity: str = "", duration_s: int = 15,
                 api: str = "", token: str = "", verify: ssl.SSLContext | bool = True):
        self.url = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name, self.duration_s = namespace, name, duration_s
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), \
            os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.api = api or f"https://{host}:{port}"
        if not token and (self.SA / "token").exists():
            token = (self.SA / "token").read_text().strip()
            verify = ssl.create_default_context(cafile=str(self.SA / "ca.crt"))
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.verify = verify
        self._led_at = 0.0      # monotonic time of the last successful take or renewal

    @property
    def is_leader(self) -> bool:
        # step down before the lease can expire under another router's eyes
        return time.monotonic() - self._led_at < self.duration_s * 2 / 3

    def _lease(self, held: dict | None) -> dict:
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s,
                "renewTime": _now()}
        if held is None or held.get("spec", {}).get("holderIdentity") != self.identity:
            spec["acquireTime"] = spec["renewTime"]
            spec["leaseTransitions"] = int((held or {}).get("spec", {})
                                           .get("leaseTransitions", 0)) + (held is not None)
        else:
            spec["acquireTime"] = held["spec"].get("acquireTime", spec["renewTime"])
            spec["leaseTransitions"] = held["spec"].get("leaseTransitions", 0)
        meta = {"name": self.name, "namespace": self.namespace}
        if held is not None:
            meta["resourceVersion"] = held["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": spec}

    async def attempt(self, client: httpx.AsyncClient) -> bool:
        """One try to take or renew the lease; True when this router holds it now."""
        r = await client.get(f"{self.url}/{self.name}")
        if r.status_code == 404:
            r = await client.post(self.url, json=self._lease(None))
        elif r.status_code == 200:
            held = r.json()
            spec = held.get("spec", {})
            mine = spec.get("holderIdentity") == self.identity
            expired = _age_s(spec.get("renewTime")) > spec.get("leaseDurationSeconds", 15)
            if not (mine or expired or not spec.get("holderIdentity")):
                return False
            r = await client.put(f"{self.url}/{self.name}", json=self._lease(held))
        if r.status_code in (200, 201):
            if not self.is_leader:
                log.info("policy leader", lease=f"{self.namespace}/{self.name}",
                         identity=self.identity)
            self._led_at = time.monotonic()
            return True
        if r.status_code != 409:          # 409: another router won this round
            log.warning("lease request failed", status=r.status_code, body=r.text[:200])
        return False

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.api, headers=self.headers,
                                     verify=self.verify, timeout=5.0) as client:
            while True:
                try:
                    took = await self.attempt(client)
                except httpx.HTTPError as e:
                    took = False
                    log.warning("lease API unreachable", error=str(e))
                await asyncio.sleep(self.duration_s / 3 if took else 1.0)

    def close(self) -> None:
        return None


def from_settings(lock: str, lease: str):
    if lock and lease:
        from flying.settings import SettingsError
        raise SettingsError("[router] leader_lock and leader_lease exclude each other")
    if lock:
        return FileLock(lock)
    if lease:
        namespace, _, name = lease.rpartition("/")
        return KubernetesLease(namespace or "default", name)
    return Always()
