"""Typed messages of the worker group, in one place.

Plain dataclasses only: no gRPC, no proto, no torch. The agent converts proto <-> these at its
edge (agent/convert.py); the router's policy reads the status types.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PreemptMode(enum.Enum):
    SOFT = "soft"  # in-flight requests on changing instances finish first, then switch
    HARD = "hard"  # switch now; in-flight requests move with their KV (head-group exchange)


class FinishReason(enum.StrEnum):
    STOP = "stop"      # EOS or a stop string
    LENGTH = "length"  # max_tokens or the instance's context
    ABORT = "abort"    # client cancel / deadline / operator
    ERROR = "error"    # the worker serving it died (see Finished.error)
    HANDOFF = "handoff"  # first segment of a cross-node micro-request: KV held for export


@dataclass(frozen=True)
class SamplingSpec:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0          # 0: off
    seed: int | None = None  # None: the group draws one, so replays stay exact across switches
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Split:
    """A micro-request (DynaServe): the first segment computes the KV of `handoff_at` tokens
    (prompt + the first decode tokens) on its instance, then the KV moves in head-group chunks
    to instance `to_instance`, which produces the rest. handoff_at < prompt length splits
    inside the prefill; = prompt length hands over right after the first token's prefill."""
    handoff_at: int
    to_instance: int = -1
    remote: bool = False    # the second segment runs on another node: hold the KV for export


@dataclass(frozen=True)
class RequestSpec:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingSpec = SamplingSpec()
    priority: int = 0           # lower runs first (vLLM's convention)
    instance: int | None = None  # pin to an instance of the current layout; None: the group picks
    split: Split | None = None


# ---------------------------------------------------------------- events to the caller


@dataclass(frozen=True)
class TokenEvent:
    request_id: str
    token_ids: tuple[int, ...]
    instance: int
    text: str = ""          # incremental text (stop strings already applied)


@dataclass(frozen=True)
class Finished:
    request_id: str
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    queue_ms: float
    instance: int
    error: str = ""


Event = TokenEvent | Finished


# ---------------------------------------------------------------- switching


@dataclass(frozen=True)
class SwitchReport:
    layout: tuple[int, ...]
    switch_ms: float
    migrated: int = 0      # requests whose KV moved by the head-group exchange
    recomputed: int = 0    # requests resumed by recomputing their KV (fallback)
    drained: int = 0       # requests that finished on the old layout (SOFT)
    kv_bytes_moved: int = 0


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class InstanceStatus:
    index: int
    workers: tuple[int, ...]
    waiting: int
    running: int
    kv_blocks_total: int
    kv_blocks_used: int
    max_context_tokens: int
    available: bool = True

    @property
    def tp_size(self) -> int:
        return len(self.workers)


@dataclass(frozen=True)
class LayoutCost:
    """Measured cost of one TP size: prefill ms per token, decode ms per step by batch size."""
    tp_size: int
    prefill_ms_per_token: float
    decode_ms: dict[int, float] = field(default_factory=dict)

    def decode_at(self, batch: int) -> float:
        if not self.decode_ms:
            return 0.0
        sizes = sorted(self.decode_ms)
        below = [b for b in sizes if b <= batch]
        return self.decode_ms[below[-1] if below else sizes[0]]


@dataclass(frozen=True)
class GroupStatus:
    state: str                      # warming | serving | switching | draining | restarting | failed
    layout: tuple[int, ...]
    instances: tuple[InstanceStatus, ...]
    possible_tp_sizes: tuple[int, ...]
    block_size: int
    max_model_len: int
    costs: tuple[LayoutCost, ...] = ()
    switches: int = 0
    restarts: int = 0
    unplaced: int = 0               # requests no instance of this layout can hold (or mid-switch)
    unplaced_max_tokens: int = 0    # the longest of them (prompt + max_tokens)
    updated: float = 0.0            # wall-clock time of this snapshot


# ---------------------------------------------------------------- driver <-> worker


@dataclass(frozen=True)
class SampleParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass(frozen=True)
class SeqChunk:
    """One request's share of an instance step."""
    request_id: str
    token_ids: tuple[int, ...]     # tokens whose KV this step computes
    start: int                     # position of token_ids[0]
    block_table: tuple[int, ...]   # the instance's TP block ids, in sequence order
    sample: SampleParams | None    # None: a prefill chunk that does not end the prompt


@dataclass(frozen=True)
class StepCmd:
    ticket: int                    # the node's step sequence number
    instance: int
    first: int                     # the instance's first worker
    size: int                      # its TP size
    seqs: tuple[SeqChunk, ...]


@dataclass(frozen=True)
class MoveCmd:
    ticket: int
    moves: tuple                   # kv_plan.Move, every worker gets the whole plan


@dataclass(frozen=True)
class ProbeCmd:
    """Measure this TP size's step costs (all workers of every such instance run it)."""
    ticket: int
    size: int
    prefill_tokens: int
    decode_batches: tuple[int, ...]


@dataclass(frozen=True)
class StopCmd:
    ticket: int


@dataclass(frozen=True)
class ExportCmd:
    """Read KV heads out of this worker's pool: flat (block * H + head) rows, in order."""
    ticket: int
    rows: tuple[int, ...]


@dataclass(frozen=True)
class ImportCmd:
    """Write KV heads into this worker's pool (rows as ExportCmd; data [L, len(rows), X])."""
    ticket: int
    rows: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class StatsCmd:
    """Memory and communicator counts of every worker (tests and benchmarks)."""
    ticket: int


@dataclass(frozen=True)
class WorkerReply:
    ticket: int
    worker: int
    kind: str                      # ready | step | move | probe | error
    tokens: tuple[tuple[str, int], ...] = ()
    ms: float = 0.0
    nbytes: int = 0
    info: dict = field(default_factory=dict)
