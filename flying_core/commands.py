"""Every message inside a worker group, in one place.

* caller -> driver: what WorkerGroup posts to the driver thread's inbox; an answer comes back
  through the command's `concurrent.futures.Future`.
* driver -> worker: commands, each with the node's ticket (a worker executes its FIFO pipe in
  ticket order).
* worker -> driver: one typed reply class per kind; every reply names its ticket and worker.

Internal to the worker group: nothing outside `flying_core` sees these.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flying_core.types import KVExport, PreemptMode, TokenLogprob, WorkerInfo, WorkerStats

if TYPE_CHECKING:
    from flying_core.request import Request

# ---------------------------------------------------------------- caller -> driver


@dataclass(frozen=True)
class Submit:
    req: Request


@dataclass(frozen=True)
class Abort:
    request_id: str


@dataclass(frozen=True)
class Shed:
    """Reject a queued request that has not started (a full queue gave its place away)."""
    request_id: str
    message: str


@dataclass(frozen=True)
class Switch:
    """Resolves to a SwitchReport, or a FlyingError."""
    layout: tuple[int, ...]
    mode: PreemptMode
    soft_until: float                  # perf_counter time: SOFT waits until then, then HARD
    result: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Export:
    """Resolves to the KVExport held for request_id (once), or NotFound; without its first
    `skip` blocks (the receiver caches them)."""
    request_id: str
    skip: int = 0
    result: Future = field(default_factory=Future)


@dataclass(frozen=True)
class CachedPrefix:
    """Resolves to how many leading full blocks of `tokens` (all but the last token) one
    instance here caches: what a KV import need not receive."""
    tokens: tuple[int, ...]
    result: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Adopt:
    """Continue a request whose first segment ran elsewhere: import `kv`, or recompute (None)."""
    req: Request
    kv: KVExport | None


@dataclass(frozen=True)
class CollectStats:
    """Resolves to every worker's WorkerStats."""
    result: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Stop:
    pass


Posted = Submit | Abort | Shed | Switch | Export | CachedPrefix | Adopt | CollectStats | Stop

# ---------------------------------------------------------------- driver -> worker


@dataclass(frozen=True)
class SampleParams:
    """How the leader picks a chunk's next token. Stateless: the token depends only on these
    and the logits, so any instance can sample any step of a request. The token history rides
    along only for vLLM's penalties (`prompt_ids`/`output_ids` empty otherwise)."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    banned: tuple[int, ...] = ()        # masked this step (EOS and stop tokens before min_tokens)
    allowed: bytes = b""                # structured output: bitmask of the tokens allowed now
    logprobs: int | None = None         # top-k raw logprobs to return; None: none
    prompt_ids: tuple[int, ...] = ()
    output_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SeqChunk:
    """One request's share of an instance step."""
    request_id: str
    token_ids: tuple[int, ...]     # tokens whose KV this step computes
    start: int                     # position of token_ids[0]
    block_table: tuple[int, ...]   # the instance's TP block ids, in sequence order
    sample: SampleParams | None    # None: a prefill chunk that does not end the prompt
    # prompt logprobs: the prompt tokens that follow this chunk's first len(targets) tokens
    # (their logits are computed, each target's raw logprob, rank and top-k returned)
    targets: tuple[int, ...] = ()
    prompt_k: int = 0


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
    """Only an instance's leader replies to a step: (request id, token, its logprobs or None)
    for the chunks that sampled."""
    tokens: tuple[tuple[str, int, TokenLogprob | None], ...]
    ms: float
    prompt: tuple[tuple[str, tuple[TokenLogprob, ...]], ...] = ()   # chunks' prompt logprobs
    cpu_ms: float = 0.0            # the leader's own CPU time in the step (ms is its wall time)


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
