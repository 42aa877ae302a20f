"""The plain types every part of Flying shares: requests, events, switches, status, KV exports.

Plain frozen dataclasses only: no gRPC, no proto, no torch. `flying/wire.py` converts proto <->
these at the edges (agent and router); the router's policy reads the status types. Errors live
beside them in `flying_core/errors.py`. The driver <-> worker messages are internal to the
worker group (`flying_core/commands.py`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flying_core.step_cost import decode_at, decode_steps, interpolate, points  # noqa: F401


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
class StructuredSpec:
    """A structured-output constraint: kind json_object (any JSON object), json_schema (spec:
    the schema as JSON text), regex, choice (spec: a JSON list of strings) or grammar (EBNF)."""
    kind: str
    spec: str = ""


MAX_LOGPROBS = 20   # vLLM's default max_logprobs: top-k logprobs per token at most


@dataclass(frozen=True)
class SamplingSpec:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0          # 0: off
    seed: int | None = None  # None: the group draws one, so replays stay exact across switches
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # vLLM's further sampling parameters, with its neutral defaults
    logprobs: int | None = None     # top-k logprobs per output token (0: the sampled one only)
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias added to its logit)
    min_tokens: int = 0             # no EOS / stop token / stop string before this many
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured: StructuredSpec | None = None
    # vLLM's prompt_logprobs: for each prompt token after the first, its raw logprob and the
    # top-k (0: the prompt token only). Such a request reads no cached prefix (its logits
    # must be computed), as in vLLM.
    prompt_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        """Whether sampling needs the request's token history (vLLM's penalties)."""
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)


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
    # the last `continued` prompt tokens are the request's own output from an earlier segment
    # (a cross-node second segment, a continuation after a failover): their text was already
    # sent; the detokenizer replays them so held-back text and stops carry across the boundary
    continued: int = 0


# ---------------------------------------------------------------- events to the caller


@dataclass(frozen=True)
class TokenLogprob:
    """The logprob of one output token in the model's raw distribution (vLLM's default
    `raw_logprobs`: log_softmax of the logits before temperature, penalties, top-k/p),
    its rank there (1 = most likely) and the top-k (token id, logprob), most likely first."""
    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    request_id: str
    token_ids: tuple[int, ...]
    instance: int
    text: str = ""          # incremental text (stop strings already applied)
    logprobs: tuple[TokenLogprob, ...] = ()   # one per token when the request asked for them
    # with the request's first token, when it asked for prompt_logprobs: one per prompt token;
    # the first (which nothing predicts: vLLM's None) has rank 0 and no logprob
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


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
    code: str = ""      # reason ERROR: a FlyingError code (RESOURCE_EXHAUSTED: shed at a full
    #                     queue); "" a worker failure


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
    step_wait_ms: float = 0.0   # waiting for the retiring instances' running step (and SOFT)
    worker_move_ms: tuple[float, ...] = ()   # each moving worker's head exchange


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
    _points: tuple = field(init=False, repr=False, compare=False)   # decode_ms, sorted once

    def __post_init__(self):
        object.__setattr__(self, "_points", points(self.decode_ms))

    def step_ms(self, batch: int) -> float:
        return interpolate(self._points, batch)


@dataclass(frozen=True)
class PrefixCacheStats:
    """A node's automatic prefix cache (vLLM's metric shapes: query and hit tokens)."""
    enabled: bool = False
    query_tokens: int = 0    # prompt tokens of admitted requests looked up in the cache
    hit_tokens: int = 0      # of them, found cached (their prefill was skipped)
    cached_blocks: int = 0   # blocks holding a content hash now (held or evictable)
    evictions: int = 0       # cached blocks reused for other content


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
    prefix_cache: PrefixCacheStats = PrefixCacheStats()




# ---------------------------------------------------------------- workers and KV transfers


@dataclass(frozen=True)
class ViewReport:
    """How a tp>1 view model's parameters relate to the tp=1 weights."""
    tensors: int        # parameters of the view model
    aliased: int        # of them, views into tp=1 storage
    own_bytes: int      # bytes the view model owns beyond the tp=1 weights
    own: tuple[str, ...] = ()   # names of the tensors it owns


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reports once it is ready (every worker of a group has the same model)."""
    rank: int
    num_blocks: int                  # DP blocks in its KV pool
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    vocab_size: int
    sizes: tuple[int, ...]           # TP sizes its communicator pool holds
    dtype: str                       # float32 | bfloat16 | float16
    max_model_len: int
    kv_pool_bytes: int
    kv_ptr: int                      # data pointer of its KV pool
    kv_view_ptrs: dict[int, int]     # TP size -> data pointer of that size's first layer view
    view_report: dict[int, ViewReport]
    packed_gemm_bytes: int           # CPU: oneDNN-packed copies of the linear weights (0: none)
    groups_created: int              # process groups its communicator pool created
    load_s: float
    warm_s: float
    pid: int
    rss_bytes: int
    attention_backend: str = "CPU_ATTN"   # vLLM backend every TP size runs (pinned)
    kv_row: str = "k_then_v"              # KV row format of that backend (kv_format.py)

    def block_shape(self, block_size: int) -> tuple[int, int, int]:
        """One DP block in the canonical transfer format: (L, H, Bs * 2D)."""
        return self.num_layers, self.num_kv_heads, block_size * 2 * self.head_size


@dataclass(frozen=True)
class WorkerStats:
    """A worker's memory and communicators now (tests and benchmarks)."""
    rank: int
    rss_bytes: int
    kv_ptr: int
    process_groups: int              # torch.distributed process groups that exist


@dataclass(frozen=True)
class KVExport:
    """A request's KV in the canonical wire format: one [L, H, Bs * 2D] array per DP block, heads
    in model order, in the pool's dtype (bfloat16 as raw 16-bit words)."""
    dtype: str
    block_shape: tuple[int, int, int]     # (L, H, Bs * 2D)
    num_computed: int                     # tokens whose KV the blocks hold
    blocks: tuple[bytes, ...]
    layout: str = "LBHNC/k_then_v"        # order/row format of the bytes (kv_format.KVFormat)
    # the blocks are the request's from this one on: the receiver said it caches the first
    # `first_block` (its prefix cache), so they were not sent
    first_block: int = 0
