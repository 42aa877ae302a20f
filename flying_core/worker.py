"""One worker process per device: started once, serves every layout until the node stops.

Start-up (the same order on every rank): join the torch.distributed world, build the
communicator pool, load the full weights, build a zero-copy view model per pool TP size,
allocate the one KV pool, make a runner per TP size, warm every layout, report ready.
Then it executes commands from its FIFO pipe in the order the driver's sequencer sent them.

On CUDA (written against vLLM 0.32's CUDA code, not yet run on a GPU; device.check refuses
machines without the CUDA builds first): the worker owns `cuda:{rank}`, the world is NCCL, each
TP size's group is named "tp" (custom all-reduce), the KV pool is sized from
`torch.cuda.mem_get_info()` once weights and communicators exist, and the pools are shared
with the peers through CUDA IPC for HARD switches and hand-offs.
"""
from __future__ import annotations

import os
import random
import time
import traceback

from flying_core.commands import (
    ExportCmd,
    Exported,
    Failed,
    ImportCmd,
    MoveCmd,
    Moved,
    ProbeCmd,
    Probed,
    Ready,
    SampleParams,
    SeqChunk,
    Stats,
    StatsCmd,
    StepCmd,
    StepDone,
    StopCmd,
    Stopped,
)
from flying_core.config import WorkerConfig
from flying_core.errors import FailedPrecondition
from flying_core.kv_plan import moves_for
from flying_core.types import WorkerInfo, WorkerStats

# the commands the skew hook delays: steps, KV moves (switches), hand-offs (export/import)
SKEWED = (StepCmd, MoveCmd, ExportCmd, ImportCmd)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the process that started it dies (no orphans)."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _own_session() -> None:
    """Linux: a session of its own, hence a CPU scheduling group of its own where the kernel
    groups tasks by session (autogroup, on by default). Sharing the agent's group, a node's
    workers shared one group's CPU share with the agent: on a box whose cores the router,
    agent and workers share, the router's group held a worker's core for up to 0.6 s while
    that worker's step was runnable (`perf sched` traces; micro-request bench at 64 req/s:
    31-33 steps over 150 ms, waits up to 0.6 s; with each worker in a group of its own, 12,
    the longest wait 0.15 s, most of them prefill steps busy on the CPU). It still dies with
    the agent (`_die_with_parent`), whose session no longer reaches it."""
    try:
        os.setsid()
    except (AttributeError, OSError):     # not POSIX, or already a session leader
        pass


def _pin_threads(cfg: WorkerConfig) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    # No vLLM AOT artifacts: on CPU (vLLM 0.32) they are saved but never load ("'function'
    # object has no attribute 'finalize_loading'", then it compiles again), and their key holds
    # parallel_config.rank, 0 in every view model's config here (the workers of a node would
    # write one file) and not our packed GEMMs. Dynamo traces at each start; Inductor's own
    # cache (keyed by the graph) spares recompiling kernels: a second start is ~2x faster.
    os.environ["VLLM_USE_AOT_COMPILE"] = "0"
    os.environ["VLLM_DIST_IDENT"] = f"flying{cfg.dist_port}"  # names shm segments per node
    n = cfg.group.threads_per_worker
    os.environ["OMP_NUM_THREADS"] = str(n)
    if cfg.cpu_ids and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, set(cfg.cpu_ids))
        except OSError:
            pass
    import torch
    torch.set_num_threads(n)


def _engine_config(g, tp: int, attention_backend: str | None = None):
    """vLLM's config for one TP size. With `attention_backend` the backend is pinned; on CUDA
    the pool's layout is recorded too (`LBHNC`, vLLM's "HND": the tp=s views are strided
    slices of it, so every backend must read that order)."""
    from vllm.engine.arg_utils import EngineArgs
    cfg = EngineArgs(model=g.model, dtype=g.dtype, max_model_len=g.max_model_len,
                     enforce_eager=g.enforce_eager, tensor_parallel_size=tp, seed=g.seed,
                     block_size=g.block_size, trust_remote_code=False,
                     attention_backend=attention_backend).create_engine_config()
    if attention_backend and g.device != "cpu":
        from vllm.v1.attention.backends.utils import record_kv_cache_layout

        from flying_core.kv_format import LAYOUT_ORDER
        record_kv_cache_layout(cfg.cache_config, LAYOUT_ORDER)
    return cfg


class Worker:
    def __init__(self, cfg: WorkerConfig):
        self._skew_rng: random.Random | None = None
        import torch.distributed as dist
        import vllm.distributed.parallel_state as ps
        from vllm.config import set_current_vllm_config

        from flying_core import cpu_gemm, device, layout, weights
        from flying_core.attn_backend import attention_backend, pinned
        from flying_core.comm_pool import CommunicatorPool
        from flying_core.kv_format import row_format
        from flying_core.kv_pool import KVPool
        from flying_core.runner import ModelRunner

        g = cfg.group
        if g.device == "cpu":
            import vllm.v1.worker.cpu.shm  # noqa: F401  (the torch patches vLLM's CPU worker applies)
            weights.keep_plain_cpu_weights()
        self.cfg, self.rank = cfg, cfg.rank
        self.device = device.worker_device(g.device, cfg.rank)
        t0 = time.perf_counter()
        # one attention backend for every TP size; on CUDA it depends on the resolved dtype
        dtype = None if g.device == "cpu" else _engine_config(g, 1).model_config.dtype
        backend_name = attention_backend(g.device, dtype)
        base = _engine_config(g, 1, backend_name)
        # as vLLM's own worker (WorkerBase): IR op priorities and the torch-wrap state are set
        # once for the process, before any model is built or compiled
        import vllm.ir
        base.kernel_config.ir_op_priority.set_default()
        vllm.ir.set_default_torch_wrap(base.compilation_config.ir_enable_torch_wrap)
        hf = base.model_config.hf_config
        text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
        heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
        self.sizes = layout.pool_sizes(g.num_workers, heads, kv_heads)
        backend = "gloo" if g.device == "cpu" else "nccl"
        with set_current_vllm_config(base):
            ps.init_distributed_environment(
                world_size=g.num_workers, rank=cfg.rank, local_rank=cfg.rank, backend=backend,
                distributed_init_method=f"tcp://127.0.0.1:{cfg.dist_port}")
            ps.initialize_model_parallel(tensor_model_parallel_size=1)
            self.pool = CommunicatorPool(g.num_workers, cfg.rank, self.sizes, backend, g.device)
        self.world_cpu = ps.get_world_group().cpu_group
        self.configs = {1: base, **{s: _engine_config(g, s, backend_name)
                                    for s in self.sizes if s > 1}}
        full = weights.load_full_model(base, self.pool.group(1))
        self.models = {1: full}
        self.view_report = {}
        for s in self.sizes:
            if s > 1:
                self.models[s], _ = weights.build_view_model(self.configs[s], full,
                                                             self.pool.group(s))
                self.view_report[s] = weights.storage_report(self.models[s], full)
        self.packed_bytes = 0
        if g.device == "cpu" and g.packed_gemm and cpu_gemm.available():
            self.packed_bytes = sum(cpu_gemm.pack_model(m) for m in self.models.values())
        dtype = base.model_config.dtype
        head_size = getattr(text, "head_dim", None) or text.hidden_size // heads
        num_layers = text.num_hidden_layers
        nb = KVPool.blocks_for(device.kv_pool_bytes(g.kv_bytes, self.device), num_layers,
                               kv_heads, g.block_size, head_size, dtype)
        self.kv = KVPool(num_layers, nb, kv_heads, g.block_size, head_size, dtype, self.device)
        self.kv.share_with_peers(str(cfg.dist_port), cfg.rank, g.num_workers,
                                 lambda: dist.barrier(group=self.world_cpu), self.world_cpu)
        vocab = text.vocab_size
        sizes = dict(max_tokens=g.max_batch_tokens, max_seqs=g.max_running,
                     max_blocks=-(-g.max_model_len // g.block_size) + 1)
        self.runners = {s: ModelRunner(self.models[s], self.configs[s], self.pool.group(s),
                                       self.kv.layer_views(s), g.block_size, vocab, self.device,
                                       **sizes)
                        for s in self.sizes}
        self.backend = pinned({s: r.backend_name for s, r in self.runners.items()})
        if self.backend != backend_name:
            raise FailedPrecondition(f"asked vLLM for {backend_name}, its layers use "
                                     f"{self.backend}")
        self.load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self._warm()
        self.warm_s = time.perf_counter() - t1
        self.info = WorkerInfo(
            rank=cfg.rank, num_blocks=nb, num_layers=num_layers, num_heads=heads,
            num_kv_heads=kv_heads, head_size=head_size, vocab_size=vocab,
            sizes=tuple(self.sizes), dtype=str(dtype).removeprefix("torch."),
            max_model_len=base.model_config.max_model_len, kv_pool_bytes=self.kv.nbytes,
            kv_ptr=self.kv.buf.data_ptr(),
            kv_view_ptrs={s: self.kv.layer_views(s)[0].data_ptr() for s in self.sizes},
            view_report=self.view_report, packed_gemm_bytes=self.packed_bytes,
            attention_backend=self.backend, kv_row=row_format(g.device),
            groups_created=self.pool.created,
            load_s=round(self.load_s, 3), warm_s=round(self.warm_s, 3), pid=os.getpid(),
            rss_bytes=_rss())

    def _warm(self) -> None:
        """Run every TP size once (the first tp>1 call compiles a vocab mask for seconds; without
        enforce_eager the first call also compiles that size's view model, so no switch ever
        compiles). Writes only into the last DP block, which the driver never hands out."""
        for s in self.sizes:
            last = (self.kv.NB - 1) * s
            for n in (9, 1):
                self.runners[s].step((SeqChunk("warm", tuple(range(3, 3 + n)), 0, (last,),
                                               SampleParams()),))

    def step(self, cmd: StepCmd):
        """Sampled tokens, the step's wall ms and this thread's CPU ms over it: a step whose
        wall time is far above its CPU time waited for a core (or a peer), not on the model."""
        t, c = time.perf_counter(), time.thread_time()
        out = self.runners[cmd.size].step(cmd.seqs)
        return out, (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3

    def move(self, cmd: MoveCmd) -> tuple[int, float]:
        t = time.perf_counter()
        sends, recvs = moves_for(self.rank, list(cmd.moves))
        nbytes = self.kv.exchange(self.rank, sends, recvs, self.world_cpu) if (
            sends or recvs) else 0
        return nbytes, (time.perf_counter() - t) * 1e3

    def probe(self, cmd: ProbeCmd) -> Probed:
        """Prefill ms/token and decode ms by batch for this TP size (collective per instance)."""
        s, bs, n = cmd.size, self.cfg.group.block_size, cmd.prefill_tokens
        blocks_needed = -(-4 * n // bs) + 1
        table = tuple(b * s for b in range(blocks_needed))

        def prefill_ms(tokens: int) -> float:
            best = float("inf")
            for k in range(3):
                t = time.perf_counter()
                self.runners[s].step((SeqChunk(f"probe{tokens}-{k}", tuple(range(3, 3 + tokens)),
                                               0, table, SampleParams()),))
                best = min(best, (time.perf_counter() - t) * 1e3)
            return best
        # the marginal cost of a prompt token (a step's own cost is the decode table's), as
        # the agent measures it on served steps: the slope between n and 4n tokens (between n
        # and 2n, ~0.5 ms apart on this box, one start read TP 2 at 0.0044 ms a token and
        # another at 0.0119; the unserved size's prefill is scaled by it, cost_profile)
        short, long = prefill_ms(n), prefill_ms(4 * n)
        per_token = (long - short) / (3 * n) if long > short else short / n
        decode = {}
        for batch in cmd.decode_batches:
            seqs = tuple(SeqChunk(f"p{i}", (5,), cmd.prefill_tokens, table, SampleParams())
                         for i in range(batch))
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                self.runners[s].step(seqs)
                best = min(best, (time.perf_counter() - t) * 1e3)
            decode[batch] = best
        return Probed(cmd.ticket, self.rank, s, per_token, decode)

    def stats(self, cmd: StatsCmd) -> Stats:
        from torch.distributed import distributed_c10d as c10d
        return Stats(cmd.ticket, self.rank, WorkerStats(
            self.rank, _rss(), self.kv.buf.data_ptr(), len(c10d._world.pg_map)))

    def _skew(self) -> None:
        if not self.cfg.group.worker_delay_jitter:
            time.sleep(self.cfg.delay_s)
            return
        if self._skew_rng is None:
            self._skew_rng = random.Random(self.cfg.group.seed * 1000 + self.cfg.rank)
        time.sleep(self._skew_rng.uniform(0.0, self.cfg.delay_s))

    def execute(self, cmd):
        """Carry out one command; the reply to send, or None."""
        if self.cfg.delay_s and isinstance(cmd, SKEWED):
            self._skew()                   # test hook: skew this worker
        match cmd:
            case StepCmd():
                tokens, ms, cpu_ms = self.step(cmd)
                return StepDone(cmd.ticket, self.rank, tuple(tokens), ms,
                                tuple(self.runners[cmd.size].prompt_out), cpu_ms) \
                    if cmd.first == self.rank else None
            case MoveCmd():
                nbytes, ms = self.move(cmd)
                return Moved(cmd.ticket, self.rank, nbytes, ms)
            case ExportCmd():
                return Exported(cmd.ticket, self.rank, self.kv.read_rows(cmd.rows))
            case ImportCmd():
                self.kv.write_rows(cmd.rows, cmd.data)
                return None
            case StatsCmd():
                return self.stats(cmd)
            case ProbeCmd():
                return self.probe(cmd)
        raise TypeError(f"unknown command {type(cmd).__name__}")


def _rss() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except Exception:  # noqa: BLE001
        return 0


def worker_main(cfg: WorkerConfig, conn) -> None:
    """Process entry point (spawned)."""
    _die_with_parent()
    _own_session()
    _pin_threads(cfg)
    from flying import heap, logs
    logs.configure(component=f"worker{cfg.rank}")
    log = logs.get("flying.worker")
    try:
        worker = Worker(cfg)
    except Exception as e:  # noqa: BLE001
        log.error("worker start-up failed", error=str(e), trace=traceback.format_exc())
        conn.send(Failed(-1, cfg.rank, f"{type(e).__name__}: {e}", traceback.format_exc()))
        return
    frozen = heap.freeze_startup_heap()   # model, compiled graphs, vLLM: never collected
    conn.send(Ready(0, cfg.rank, worker.info))
    log.info("worker ready", num_blocks=worker.info.num_blocks, sizes=worker.info.sizes,
             load_s=worker.info.load_s, warm_s=worker.info.warm_s, frozen_objects=frozen)
    while True:
        try:
            cmd = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(cmd, StopCmd):
            conn.send(Stopped(cmd.ticket, cfg.rank))
            return
        try:
            reply = worker.execute(cmd)
        except Exception as e:  # noqa: BLE001
            log.error("command failed", cmd=type(cmd).__name__, error=str(e),
                      trace=traceback.format_exc())
            reply = Failed(getattr(cmd, "ticket", -1), cfg.rank, f"{type(e).__name__}: {e}")
        if reply is not None:
            conn.send(reply)
