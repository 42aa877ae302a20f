"""Child processes of the benchmark: own session each, stopped as a whole group, no orphans.

A :class:`Proc` runs one command in a new session (its own process group), logs to a file and
is stopped by SIGTERM to its leader (so a flying agent drains: its streams finish, then it
stops its own workers; a signal to the whole group would kill the workers under in-flight
requests) or to the whole group, then SIGKILL to whatever of the group is left after a grace
period (descendants that left the group are caught by a snapshot taken before the signal). Every
started process is registered, so :func:`stop_all` (called by the CLI on exit or a signal)
leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

_LIVE: set[Proc] = set()


SERVER_NICE = int(os.environ.get("FLYING_BENCH_SERVER_NICE", "0"))


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` under ``taskset -c cpus`` (its children inherit the CPU set); as is for None."""
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcFailed(RuntimeError):
    pass


class Proc:
    def __init__(self, name: str, cmd: list[str], log_path: str | Path,
                 env: dict[str, str] | None = None):
        self.name, self.cmd, self.log_path = name, cmd, Path(log_path)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.t_start = 0.0

    def start(self) -> Proc:
        """Start it (at niceness `FLYING_BENCH_SERVER_NICE`, default 0, every system alike;
        the load generator itself runs at real-time priority, `bench.client.realtime`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(self.cmd)}\n".encode())
            log.flush()
            cmd = ["nice", "-n", str(SERVER_NICE), *self.cmd] if SERVER_NICE else self.cmd
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.t_start = time.monotonic()
        _LIVE.add(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcFailed(f"{self.name} exited with {self.proc.returncode}:\n"
                             f"{self.log_tail()}")

    def _group(self) -> list[int]:
        import psutil
        out = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.info["pid"]) == self.proc.pid and \
                        p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.info["pid"])
        return out

    def _killpg(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 30.0, group_term: bool = False) -> int | None:
        """SIGTERM to the leader (or the group); SIGKILL to the group after ``grace_s``.
        Returns the leader's exit code."""
        if self.proc is None:
            return None
        import psutil
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        if group_term:
            self._killpg(signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not self._group():
                break
            time.sleep(0.2)
        else:
            self._killpg(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        end = time.monotonic() + 10
        while self._group() and time.monotonic() < end:
            self._killpg(signal.SIGKILL)
            time.sleep(0.2)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.kill()
        _LIVE.discard(self)
        return self.proc.returncode


def stop_all(grace_s: float = 10.0) -> None:
    for p in list(_LIVE):
        p.stop(grace_s)


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        try:
            st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                      timeout=2).status
        except grpc.RpcError:
            return False
    return st == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(proc: Proc, ready, timeout_s: float, what: str, poll_s: float = 0.5) -> float:
    """Poll ``ready()`` until true; seconds since the process started. Raises ProcFailed
    (with the log's tail) when the process exits or the time runs out (then it is stopped)."""
    end = proc.t_start + timeout_s
    while True:
        proc.check()
        if ready():
            return time.monotonic() - proc.t_start
        if time.monotonic() > end:
            proc.stop(5.0)
            raise ProcFailed(f"{what} not ready after {timeout_s:g} s:\n{proc.log_tail()}")
        time.sleep(poll_s)
