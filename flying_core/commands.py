"""What the driver and the workers say to each other over their pipes, in one place.

Commands go driver -> worker, each with the node's ticket (a worker executes its FIFO pipe in
ticket order). Replies go worker -> driver, one typed class per kind; every reply names its
ticket and the worker that sent it. Internal to the worker group: nothing outside
`flying_core` sees these.
"""
from __future__ import annotations

from dataclasses import dataclass

from flying_core.types import WorkerInfo, WorkerStats

# ---------------------------------------------------------------- driver -> worker


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
class ExportCmd:
    """Read KV heads out of this worker's pool: flat (block * H + head) rows, in order."""
    ticket: int
    rows: tuple[int, ...]


@dataclass(frozen=True)
class ImportCmd:
    """Write KV heads into this worker's pool (rows as ExportCmd; data [L, len(rows), X]).
    No reply: the FIFO pipe orders it before the steps that read those rows."""
    ticket: int
    rows: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class StatsCmd:
    """Memory and communicator counts of every worker (tests and benchmarks)."""
    ticket: int


@dataclass(frozen=True)
class StopCmd:
    ticket: int


Command = StepCmd | MoveCmd | ProbeCmd | ExportCmd | ImportCmd | StatsCmd | StopCmd

# ---------------------------------------------------------------- worker -> driver


@dataclass(frozen=True)
class Reply:
    ticket: int
    worker: int


@dataclass(frozen=True)
class Ready(Reply):
    info: WorkerInfo


@dataclass(frozen=True)
class StepDone(Reply):
    """Only an instance's leader replies to a step; tokens for the chunks that sampled."""
    tokens: tuple[tuple[str, int], ...]
    ms: float


@dataclass(frozen=True)
class Moved(Reply):
    nbytes: int                    # bytes this worker received from other workers
    ms: float


@dataclass(frozen=True)
class Exported(Reply):
    data: bytes                    # [L, len(rows), X] in the pool's dtype


@dataclass(frozen=True)
class Probed(Reply):
    tp_size: int
    prefill_ms_per_token: float
    decode_ms: dict[int, float]


@dataclass(frozen=True)
class Stats(Reply):
    stats: WorkerStats


@dataclass(frozen=True)
class Stopped(Reply):
    pass


@dataclass(frozen=True)
class Failed(Reply):
    error: str
    trace: str = ""
