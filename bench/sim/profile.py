"""A node's cost profile for the simulator: the agent's measured format plus node facts.

JSON fields: `costs` (the agent's `GroupStatus.costs` snapshot: tp_size, prefill_ms_per_token,
decode_ms by batch), `possible_tp_sizes`, `block_size`, `max_model_len`,
`kv_blocks_per_worker`, `kv_bytes_per_token` (for the switch's KV move), `link_gb_s` (bytes
moved between workers per second, /1e9), `switch_fixed_ms` (a switch's own overhead),
`cold_start_s` (a cold restart: reload weights), `max_running`, `max_batch_tokens`,
`request_overhead_ms` (a fixed delay from a request's arrival to its node: the front door's
HTTP, tokenizer and router hops, outside any engine step; 0 by default), `arrival_ms` (the
CPU time that front door takes, per request, from each busy instance of the node whose cores
it shares: the 2-core box, where client, router and agent run beside the workers; 0 by
default, as on GPU nodes whose front door has CPUs of its own).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flying_core.types import LayoutCost

PROFILES = Path(__file__).resolve().parent.parent / "sim_profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    costs: tuple[LayoutCost, ...]
    possible_tp_sizes: tuple[int, ...]
    block_size: int
    max_model_len: int
    kv_blocks_per_worker: int
    kv_bytes_per_token: float = 0.0
    link_gb_s: float = 1.0
    switch_fixed_ms: float = 0.0
    cold_start_s: float = 15.0
    max_running: int = 32
    max_batch_tokens: int = 512
    request_overhead_ms: float = 0.0
    arrival_ms: float = 0.0

    def cost(self, size: int) -> LayoutCost:
        for c in self.costs:
            if c.tp_size == size:
                return c
        raise KeyError(f"profile {self.name!r} has no TP size {size}")


def load(name_or_path: str) -> Profile:
    """A profile by file path or by name in bench/sim_profiles/."""
    p = Path(name_or_path)
    if not p.exists():
        p = PROFILES / f"{name_or_path}.json"
    if not p.exists():
        known = sorted(x.stem for x in PROFILES.glob("*.json"))
        raise ValueError(f"no profile {name_or_path!r} (known: {', '.join(known)})")
    return parse(json.loads(p.read_text()))


def parse(d: dict) -> Profile:
    """A profile from its JSON fields."""
    costs = tuple(LayoutCost(int(c["tp_size"]), float(c["prefill_ms_per_token"]),
                             {int(b): float(ms) for b, ms in c["decode_ms"].items()})
                  for c in d["costs"])
    keys = ("kv_bytes_per_token", "link_gb_s", "switch_fixed_ms", "cold_start_s",
            "max_running", "max_batch_tokens", "request_overhead_ms", "arrival_ms")
    return Profile(d["name"], costs, tuple(d["possible_tp_sizes"]), int(d["block_size"]),
                   int(d["max_model_len"]), int(d["kv_blocks_per_worker"]),
                   **{k: d[k] for k in keys if k in d})
