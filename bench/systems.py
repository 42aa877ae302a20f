"""The systems the benchmarks compare, each a set of real processes on free loopback ports.

- ``static-dp`` / ``static-tp``: ``flying agent`` + ``flying router --no-policy``; the node is
  held in layout (1,1) / (2) for the whole run.
- ``flying``: the same agent + a ``flying router`` with its layout policy (started for the
  run; its ``GET /flying/events`` is the switch log).
- ``cold-restart``: the no-policy router over the agent; a layout change is what an operator
  does today: SIGTERM the agent (it drains: the router stops placing on it, streams get
  ``--grace-s`` to finish), start it with the other layout, wait until it serves. Requests
  arriving meanwhile wait in the router (up to its 60 s placement wait) and are retried
  there; the restarts are logged here.
- ``vllm-dp`` / ``vllm-tp``: stock ``vllm serve`` (bench/vllm_serve.py), the reference.

The agent-based systems share one agent process (:class:`Testbed`): warming a worker group is
the costly step (about a minute on this box), so it starts once, and a static system's layout
is set with the agent's Reconfigure RPC *before* its run, the node idle; during a static run
nothing may reconfigure it (the no-policy router never does; the policy router lives only
during Flying's runs). Cold restart restarts that agent for real.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.model_files import bench_env as _env
from bench.procs import Proc, ProcFailed, free_port, grpc_serving, http_ok, pinned, wait_until

NODE = "n0"
AGENT_GRACE_S = 60.0


@dataclass(frozen=True)
class BedConfig:
    model: str
    workers: int = 2
    kv_bytes: int = 16 << 20            # per worker
    max_model_len: int = 8192
    dtype: str = "float32"
    start_timeout_s: float = 600.0
    cpus: str | None = None             # agent (with its workers) and router under taskset -c
    agent_flags: tuple[str, ...] = ()   # more `flying agent` flags (e.g. --no-prefix-caching)
    router_flags: tuple[str, ...] = ()  # more `flying router` flags (e.g. --no-prefix-routing)


def label(layout) -> str:
    return "+".join(str(x) for x in layout) if not isinstance(layout, str) else layout


@dataclass
class SystemRun:
    """One system ready for a run: where to send requests, and its switch log."""
    name: str
    base_url: str
    model: str | None
    layout: tuple[int, ...] | str
    switches: Callable[[], list[dict]] = lambda: []   # {t (wall), layout, s, ok, reason}
    info: dict = field(default_factory=dict)


def switch_report(run: SystemRun, t0: float, t_end: float | None = None) -> dict:
    """Switch count, total time switching and a ``[(t, layout)]`` timeline relative to ``t0``
    (wall clock at the start of the run)."""
    events = sorted(run.switches(), key=lambda e: e["t"])
    ok = [e for e in events if e.get("ok")]
    timeline: list[tuple[float, str]] = [(0.0, label(run.layout))]
    for e in events:
        start = e["t"] - t0
        if e.get("down_s"):                 # a restart: the node serves nothing meanwhile
            timeline.append((start, "down"))
            timeline.append((start + e["down_s"], label(e["layout"]) if e.get("ok") else "down"))
        elif e.get("ok"):
            timeline.append((start, label(e["layout"])))
    rel = [{**e, "t": e["t"] - t0} for e in events]
    return {"count": len(ok), "failed": len(events) - len(ok),
            "time_s": sum(e.get("s", 0.0) for e in ok), "events": rel, "timeline": timeline,
            "t_end": None if t_end is None else t_end - t0}


class Testbed:
    """One agent (2 workers) + a no-policy router, started once; see the module doc."""

    def __init__(self, cfg: BedConfig, log_dir: str | Path):
        self.cfg, self.log_dir = cfg, Path(log_dir)
        self.agent_port = free_port()
        self.agent: Proc | None = None
        self.router: Proc | None = None
        self.router_url = ""
        self.agent_starts: list[dict] = []
        self.costs: list[dict] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.agent_port}"

    # -------------------------------------------------------------------- processes
    def _agent_cmd(self, layout) -> list[str]:
        c = self.cfg
        return pinned([sys.executable, "-m", "flying.cli", "agent", "--model", c.model,
                       "--workers", str(c.workers), "--port", str(self.agent_port),
                       "--layout", ",".join(map(str, layout)), "--dtype", c.dtype,
                       "--kv-bytes", str(c.kv_bytes), "--max-model-len", str(c.max_model_len),
                       "--node-name", NODE, "--grace-s", str(AGENT_GRACE_S),
                       "--metrics-port", "0", *c.agent_flags], c.cpus)

    def start_agent(self, layout) -> float:
        self.agent = Proc("agent", self._agent_cmd(layout), self.log_dir / "agent.log",
                          _env()).start()
        s = wait_until(self.agent, lambda: grpc_serving(self.address),
                       self.cfg.start_timeout_s, "flying agent")
        self.agent_starts.append({"layout": list(layout), "ready_s": s})
        return s

    def start_router(self, policy: bool, tag: str) -> tuple[Proc, str]:
        g, h = free_port(), free_port()
        cmd = pinned([sys.executable, "-m", "flying.cli", "router", "--agent", self.address,
                      "--grpc-port", str(g), "--http-port", str(h)]
                     + ([] if policy else ["--no-policy"]) + list(self.cfg.router_flags),
                     self.cfg.cpus)
        proc = Proc(f"router-{tag}", cmd, self.log_dir / f"router-{tag}.log", _env()).start()
        url = f"http://127.0.0.1:{h}"
        wait_until(proc, lambda: http_ok(url + "/health"), 180, f"router ({tag})")
        return proc, url

    def start(self) -> Testbed:
        self.start_agent((1,) * self.cfg.workers)
        self.router, self.router_url = self.start_router(False, "static")
        self.costs = self.status_dict().get("costs", [])
        return self

    def stop(self) -> None:
        for p in (self.router, self.agent):
            if p is not None:
                p.stop(AGENT_GRACE_S if p is self.agent else 15.0)

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --------------------------------------------------------------------- control
    def _stub(self):
        import grpc

        from flying.v1 import flying_pb2_grpc as pb_grpc
        ch = grpc.insecure_channel(self.address)
        return ch, pb_grpc.AgentStub(ch)

    def status(self):
        from flying.v1 import flying_pb2 as pb
        ch, stub = self._stub()
        with ch:
            return stub.GetStatus(pb.GetStatusRequest(), timeout=5)

    def status_dict(self) -> dict:
        from google.protobuf.json_format import MessageToDict
        return MessageToDict(self.status(), preserving_proto_field_name=True)

    def wait_idle(self, timeout_s: float = 300.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            st = self.status()
            if st.state == "serving" and not any(i.running or i.waiting for i in st.instances):
                return
            time.sleep(0.5)
        raise TimeoutError("the node did not go idle")

    def set_layout(self, layout) -> None:
        """Put the idle node in ``layout`` (a live switch between runs, not measured)."""
        from flying.v1 import flying_pb2 as pb
        if self.agent is None or not self.agent.alive():   # a failed cold restart
            self.start_agent(layout)
        self.wait_idle()
        if tuple(self.status().instance_sizes) == tuple(layout):
            return
        ch, stub = self._stub()
        with ch:
            stub.Reconfigure(pb.ReconfigureRequest(instance_sizes=list(layout), mode=pb.SOFT),
                             timeout=120)
        self.wait_idle()

    def restart_agent(self, layout, reason: str = "") -> dict:
        """A cold restart into ``layout``: stop the agent (it drains), start it again."""
        t = time.time()
        entry = {"t": t, "layout": list(layout), "reason": reason, "ok": False}
        try:
            self.agent.stop(AGENT_GRACE_S + 15)
            entry["stop_s"] = time.time() - t
            entry["start_s"] = self.start_agent(layout)
            entry["ok"] = True
        except ProcFailed as e:
            entry["error"] = str(e)[:2000]
        entry["down_s"] = entry["s"] = time.time() - t
        return entry

    # --------------------------------------------------------------------- systems
    def _stop_static_router(self) -> None:
        if self.router is not None:
            self.router.stop(15.0)
            self.router = None

    def _fresh_static_router(self) -> str:
        """One router per measured system: a static (no-policy) router started for this run,
        none other connected to the agent. (With the static router kept across runs and
        Flying's router started beside it, the same layout measured 1.5-3x the P90 TTFT
        through the second router in A/B runs of the burst; cause not found.)"""
        self._stop_static_router()
        self.router, self.router_url = self.start_router(False, "static")
        return self.router_url

    def static(self, name: str, layout) -> SystemRun:
        self.set_layout(layout)
        return SystemRun(name, self._fresh_static_router(), "flying", tuple(layout))

    def flying(self, layout) -> tuple[SystemRun, Callable[[], None]]:
        """Flying from ``layout``, on a router of its own with no other connected; call the
        returned function to stop it."""
        self.set_layout(layout)
        self._stop_static_router()
        proc, url = self.start_router(True, "flying")
        events: list[dict] = []

        def fetch() -> list[dict]:
            if proc.alive():
                import httpx
                try:
                    got = httpx.get(url + "/flying/events", timeout=5).json()
                    events[:] = [{**e, "s": e.get("switch_ms", 0.0) / 1e3} for e in got]
                except (httpx.HTTPError, ValueError):
                    pass
            return list(events)

        def close() -> None:
            fetch()
            proc.stop(15.0)

        info = {"costs_at_start": self.status_dict().get("costs", [])}   # what it decides on
        return SystemRun("flying", url, "flying", tuple(layout), fetch, info), close

    def cold_restart(self, layout) -> tuple[SystemRun, ColdRestarter]:
        self.set_layout(layout)
        url = self._fresh_static_router()
        cr = ColdRestarter(self, tuple(layout))
        return SystemRun("cold-restart", url, "flying", tuple(layout),
                         lambda: list(cr.log)), cr


class ColdRestarter:
    """Performs restarts on a schedule (wall-clock times) in a background thread."""

    def __init__(self, bed: Testbed, layout: tuple[int, ...]):
        self.bed, self.layout = bed, layout
        self.log: list[dict] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def restart(self, layout, reason: str = "") -> dict:
        entry = self.bed.restart_agent(layout, reason)
        self.log.append(entry)
        if entry["ok"]:
            self.layout = tuple(layout)
        return entry

    def follow(self, schedule: list[tuple[float, tuple[int, ...], str]]) -> None:
        """Restart into each ``(t_wall, layout, reason)`` at its time (or as soon as the
        previous restart is done); entries naming the current layout are skipped."""
        self._stop = threading.Event()

        def loop() -> None:
            for t, layout, reason in sorted(schedule):
                if self._stop.wait(max(0.0, t - time.time())):
                    return
                if tuple(layout) != self.layout:
                    self.restart(layout, reason)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for a restart in progress; drop the rest of the schedule."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

