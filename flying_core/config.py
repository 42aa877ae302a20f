"""Frozen configuration of a worker group (per-rank variants with dataclasses.replace)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GroupConfig:
    model: str                          # HF folder
    num_workers: int = 2
    device: str = "cpu"                 # cpu | cuda
    dtype: str = "auto"                 # auto | float32 | bfloat16 | float16
    layout: tuple[int, ...] = ()        # () : all workers as replicas
    kv_bytes: int = 256 << 20           # physical KV pool per worker
    block_size: int = 32                # tokens per DP block (CPU attention: a multiple of 32)
    max_model_len: int = 2048
    max_queue: int = 256                # waiting requests per group before ResourceExhausted
    max_batch_tokens: int = 512         # token budget of one instance step (chunked prefill)
    max_running: int = 32               # running requests per instance
    tbt_slo_ms: float = 0.0             # > 0: size each step to keep time-between-tokens under it
    seed: int = 0
    threads_per_worker: int = 1         # CPU: torch threads per worker process
    prefix_caching: bool = True         # share the KV of equal prompt prefixes (block_pool)
    soft_bound_s: float = 30.0          # SOFT switch: in-flight work gets this long, then HARD
    # test hooks (skew injection): extra seconds each worker sleeps before every step, KV move
    # and hand-off (export/import) command; with worker_delay_jitter, a seeded uniform draw in
    # [0, delay] per command instead, so the skew between workers changes all the time
    worker_delays: tuple[float, ...] = ()
    worker_delay_jitter: bool = False
    profile: bool = True                # measure the per-layout cost profile at warm-up
    # False (as vLLM): every TP size's view model is compiled (vLLM's CPU mode: Dynamo traced
    # once, Inductor) during warm-up, so no switch compiles; True: eager, a faster start
    enforce_eager: bool = False
    # CPU: run linear layers through oneDNN on weights packed once per TP size at start-up, as
    # stock vLLM does (faster; costs memory); False: F.linear on the zero-copy views
    packed_gemm: bool = True


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker process needs; made from GroupConfig with rank and addresses."""
    group: GroupConfig
    rank: int
    dist_port: int
    cpu_ids: tuple[int, ...] = field(default=())
    delay_s: float = 0.0
