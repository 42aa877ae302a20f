"""The node: owns the worker group, restarts it when a worker dies, knows its topology."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agent.metrics import AgentMetrics
from agent.topology import Topology, discover, tp_sizes_allowed
from flying import logs
from flying.settings import AgentSettings, parse_layout
from flying_core.config import GroupConfig
from flying_core.errors import FailedPrecondition, Unavailable
from flying_core.group import WorkerGroup
from flying_core.types import Event, GroupStatus, PreemptMode, RequestSpec, SwitchReport

log = logs.get("flying.node")


def resolve_device(setting: str, topology: Topology) -> str:
    """`--device auto`: cuda where NVML found GPUs, else cpu."""
    if setting != "auto":
        return setting
    return "cpu" if topology.kind == "cpu" else "cuda"


class Node:
    def __init__(self, settings: AgentSettings, model: str, metrics: AgentMetrics,
                 on_state: Callable[[str], None] = lambda s: None, group_overrides=None,
                 topology: Topology | None = None):
        self.settings, self.model, self.metrics = settings, model, metrics
        self.name = settings.node_name or f"{settings.host}:{settings.port}"
        self.on_state = on_state
        self.group: WorkerGroup | None = None
        self.state = "warming"
        self.restarts = 0
        self.last_error = ""
        self.topology: Topology = topology or discover(settings.workers)
        self.layout = parse_layout(settings.layout, settings.workers)
        self.overrides = dict(group_overrides or {})

    def _set_state(self, state: str) -> None:
        self.state = state
        self.on_state(state)

    def group_config(self) -> GroupConfig:
        s = self.settings
        device = resolve_device(s.device, self.topology)
        base = dict(model=self.model, num_workers=s.workers, device=device, dtype=s.dtype,
                    layout=self.layout, kv_bytes=s.kv_bytes, block_size=s.block_size,
                    max_model_len=s.max_model_len, max_queue=s.max_queue, seed=s.seed,
                    tbt_slo_ms=s.tbt_slo_ms, enforce_eager=s.enforce_eager,
                    max_batch_tokens=s.max_batch_tokens, max_running=s.max_running,
                    prefix_caching=s.prefix_caching)
        return GroupConfig(**{**base, **self.overrides})

    async def start(self) -> None:
        self._set_state("warming")
        group = WorkerGroup(self.group_config())
        await asyncio.to_thread(group.start)
        self.group = group
        self._set_state("serving")

    async def watch(self, period_s: float = 0.5) -> None:
        """Detect a dead worker, fail its requests (done by the group), restart the group."""
        while True:
            await asyncio.sleep(period_s)
            if self.state != "serving" or self.group is None:
                continue
            if self.group.alive():
                self.metrics.observe_status(self.group.status())
                continue
            self.last_error = (self.group.driver.failed if self.group.driver else "") or \
                "worker group stopped"
            log.error("worker group failed; restarting", error=self.last_error,
                      restarts=self.restarts + 1)
            self._set_state("restarting")
            self.layout = self.group.status().layout or self.layout
            await asyncio.to_thread(self.group.shutdown, 5.0)
            self.restarts += 1
            self.metrics.restarts.inc()
            try:
                await self.start()
                log.info("worker group restarted", restarts=self.restarts)
            except Exception as e:  # noqa: BLE001
                self.last_error = f"restart failed: {e}"
                log.error("worker group restart failed", error=str(e))
                self._set_state("failed")

    # ------------------------------------------------------------------ serving

    def submit(self, spec: RequestSpec, on_event: Callable[[Event], None]) -> None:
        if self.state != "serving" or self.group is None:
            raise Unavailable(f"node is {self.state}")
        self.group.submit(spec, on_event)

    def adopt(self, spec: RequestSpec, kv, on_event: Callable[[Event], None]) -> None:
        if self.state != "serving" or self.group is None:
            raise Unavailable(f"node is {self.state}")
        self.group.adopt(spec, kv, on_event)

    def export_kv(self, request_id: str, skip: int = 0):
        if self.group is None:
            raise Unavailable(f"node is {self.state}")
        return self.group.export_kv(request_id, skip=skip)

    def cached_prefix_blocks(self, tokens) -> int:
        """Leading full blocks of `tokens` this node caches (0 while it has no group)."""
        return 0 if self.group is None else self.group.cached_prefix_blocks(tokens)

    def abort(self, request_id: str) -> bool:
        return bool(self.group and self.group.abort(request_id))

    @property
    def tokenizer(self):
        return self.group.tokenizer if self.group else None

    async def reconfigure(self, layout, mode: PreemptMode, timeout_s: float | None
                          ) -> SwitchReport:
        if self.state != "serving" or self.group is None:
            raise Unavailable(f"node is {self.state}")
        new = self.group.check_layout(layout)
        allowed = tp_sizes_allowed(self.topology, self.group.info.sizes,
                                   self.settings.workers)
        bad = [s for s in new if s not in allowed]
        if bad:
            raise FailedPrecondition(f"TP size {bad[0]} would span devices without NVLink "
                                     f"(allowed: {list(allowed)})")
        t = time.perf_counter()
        report = await asyncio.to_thread(self.group.reconfigure, new, mode, timeout_s)
        self.layout = report.layout
        if report.switch_ms > 0:
            self.metrics.switches.labels(mode.value).inc()
            self.metrics.switch_latency.observe(report.switch_ms / 1e3)
        log.info("reconfigured", layout=list(new), mode=mode.value,
                 wall_ms=round((time.perf_counter() - t) * 1e3, 2))
        return report

    def status(self) -> GroupStatus | None:
        return self.group.status() if self.group else None

    async def drain(self) -> None:
        self._set_state("draining")

    async def stop(self) -> None:
        if self.group:
            await asyncio.to_thread(self.group.shutdown, 10.0)
            self.group = None
        self._set_state("stopped")
