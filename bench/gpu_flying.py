"""Flying's own KV pool, move plan and batch code on one GPU (torch only, no vLLM).

    PYTHONPATH=. python bench/gpu_flying.py --out DIR [--device cuda|cpu]

bench/gpu_check.py checks the design with code of its own; this runs flying_core's modules
themselves (kv_pool, kv_plan, kv_format, batch) on CUDA tensors, in bfloat16 and float32:
  pool_move   two worker processes on one GPU, a gloo world as the workers have: each builds a
              `KVPool` on the GPU, `share_with_peers` opens the peer's pool through CUDA IPC,
              worker 0 holds sequences at tp=1; `plan_moves` tp1 -> tp2 and `exchange` (the
              pull path a HARD switch takes) move the heads; per-head-group attention over the
              tp=2 views of both pools equals tp=1 bit for bit; the move back too
  move_speed  the same exchange on a Llama-8B-sized pool (32 layers, 8 KV heads of 128,
              bf16): bytes moved per second across the two processes' pools
  graphs      a decode step (K/V write at the slots, paged attention over the views) captured
              as a CUDA graph per TP size before any move, its inputs from `BatchBuffers` (page
              locked, padded to the captured size by `graph_size`); after a tp1 -> tp2 move in
              place the tp=2 graphs' replays equal eager tp=1 attention: the pool never moves,
              so graphs captured at warm-up survive a switch
  staging     (CUDA only) `BatchBuffers.on_device`: a step's arrays reach the GPU in one
              host-to-device copy of the staging buffer, equal to the host arrays
`--device cpu` runs pool_move (through /dev/shm) and the eager half of graphs, as
tests/test_gpu_flying.py does. Writes DIR/gpu_flying.json; exit 0 when every check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu_check import paged_attention  # noqa: E402
from flying_core.batch import BatchBuffers, graph_size  # noqa: E402
from flying_core.commands import SampleParams, SeqChunk  # noqa: E402
from flying_core.kv_format import ROW_K_THEN_V, split_kv  # noqa: E402
from flying_core.kv_plan import moves_for, plan_moves, tp_block_id  # noqa: E402
from flying_core.kv_pool import KVPool  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
SMALL = dict(num_layers=2, num_blocks=32, num_kv_heads=4, block_size=16, head_size=64)
BIG = dict(num_layers=32, num_blocks=1024, num_kv_heads=8, block_size=16, head_size=128)
HQ = 8


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ pool move, two processes

def kv_nbhd(pool: KVPool, layer_view: torch.Tensor):
    """K and V of a layer view as [N, Bs, h, D] views (the CUDA split; the CPU split
    transposed, still the pool's bytes), so the same attention code reads either device."""
    k, v = split_kv(layer_view, pool.row)
    return (k.transpose(1, 2), v.transpose(1, 2)) if pool.row == ROW_K_THEN_V else (k, v)


def _pairs(blocks, s1: int, s2: int):
    return [((0, b), (0, s1), (0, b), (0, s2)) for b in blocks]


def _exchange(pool: KVPool, rank: int, pairs, group) -> tuple[int, float]:
    sends, recvs = moves_for(rank, plan_moves(pairs, pool.H))
    dist.barrier(group=group)
    t = time.perf_counter()
    n = pool.exchange(rank, sends, recvs, group)
    pool._sync()
    dist.barrier(group=group)
    return n, time.perf_counter() - t


def _attention(pool: KVPool, tp: int, seqs, rank: int):
    kc, vc = kv_nbhd(pool, pool.layer_views(tp)[0])
    heads = slice(rank * HQ // tp, (rank + 1) * HQ // tp)
    return [paged_attention(q[:, heads].to(pool.buf.device), kc, vc,
                            [tp_block_id((0, b), 0, tp) for b in table], start,
                            pool.D ** -0.5).cpu() for table, q, start in seqs]


def _worker(rank: int, device: str, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    group = dist.group.WORLD
    res: dict = {}
    try:
        if device == "cuda":
            torch.cuda.set_device(0)
            device = "cuda:0"
        for name, dtype in DTYPES.items():
            pool = KVPool(**SMALL, dtype=dtype, device=device)
            pool.buf.normal_(generator=torch.Generator(device=pool.buf.device).manual_seed(
                9 + rank))                           # other data must not leak in
            shared = pool.share_with_peers(f"gpuflying{port}{name}", rank, 2, dist.barrier,
                                           group)
            rng = torch.Generator().manual_seed(3)
            seqs = []
            k1, v1 = kv_nbhd(pool, pool.layer_views(1)[0])
            free = list(range(1, SMALL["num_blocks"]))
            for n in (1, 20, 47, 130):
                table = [free.pop(0) for _ in range(-(-n // pool.Bs))]
                k = torch.randn(n, pool.H, pool.D, generator=rng).to(dtype)
                v = torch.randn(n, pool.H, pool.D, generator=rng).to(dtype)
                q = torch.randn(n - n // 2, HQ, pool.D, generator=rng).to(dtype)
                if rank == 0:
                    pos = torch.arange(n)
                    slots = (torch.tensor(table)[pos // pool.Bs] * pool.Bs + pos % pool.Bs)
                    kc_, vc_ = k1, v1
                    kc_[slots // pool.Bs, slots % pool.Bs] = k.to(pool.buf.device)
                    vc_[slots // pool.Bs, slots % pool.Bs] = v.to(pool.buf.device)
                seqs.append((table, q, n // 2))
            pool._sync()
            before = _attention(pool, 1, seqs, 0) if rank == 0 else None
            blocks = [b for table, _, _ in seqs for b in table]
            moved, _ = _exchange(pool, rank, _pairs(blocks, 1, 2), group)
            parts = _attention(pool, 2, seqs, rank)
            gathered: list = [None, None]
            dist.all_gather_object(gathered, parts, group=group)
            moved_back, _ = _exchange(pool, rank, _pairs(blocks, 2, 1), group)
            if rank == 0:
                tp2 = [torch.cat([a, b], dim=1) for a, b in zip(*gathered)]
                after = _attention(pool, 1, seqs, 0)
                res[f"pool_move/{name}"] = {
                    "ok": shared and all(torch.equal(a, b) for a, b in zip(tp2, before))
                    and all(torch.equal(a, b) for a, b in zip(after, before)),
                    "shared_pools": shared, "row_format": pool.row,
                    "tp2_equals_tp1": all(torch.equal(a, b) for a, b in zip(tp2, before)),
                    "back_equals_tp1": all(torch.equal(a, b) for a, b in zip(after, before)),
                    "bytes_received_rank0": moved_back, "peer_path": sorted(pool.peers)}
            del pool
        if device.startswith("cuda"):
            pool = KVPool(**BIG, dtype=torch.bfloat16, device=device)
            pool.share_with_peers(f"gpuflyingbig{port}", rank, 2, dist.barrier, group)
            blocks = list(range(BIG["num_blocks"] // 2))
            times, nbytes = [], 0
            for _ in range(5):
                nbytes, t1 = _exchange(pool, rank, _pairs(blocks, 1, 2), group)
                _, t2 = _exchange(pool, rank, _pairs(blocks, 2, 1), group)
                times += [t1, t2]
            gathered = [None, None]
            dist.all_gather_object(gathered, nbytes, group=group)
            if rank == 0:
                best = sorted(times)[len(times) // 2]
                total = max(gathered)
                res["move_speed"] = {"ok": True, "pool_gib": round(pool.nbytes / 2**30, 2),
                                     "moved_mib": round(total / 2**20, 1),
                                     "exchange_ms_p50": round(best * 1e3, 2),
                                     "gb_per_s": round(total / best / 1e9, 1)}
    except Exception as e:  # noqa: BLE001 - a failed check is a result
        res[f"pool_move/rank{rank}"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(res))
        dist.destroy_process_group()


def check_pool_move(device: str) -> dict:
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(device, _port(), tmp), nprocs=2, join=True,
                           start_method="spawn")
        res: dict = {}
        for r in (0, 1):
            res.update(json.loads(Path(tmp, f"rank{r}.json").read_text()))
    return res


# ------------------------------------------------------------------ CUDA graphs

def decode_step(q, k_new, v_new, k_cache, v_cache, slots, table, seq_lens, scale):
    """One decode token per sequence, graph-capturable (fixed shapes, no host sync): write
    K/V at `slots` (padding rows write the reserved block 0, as vLLM's null block), then
    attention over each sequence's first `seq_lens` tokens through its block table."""
    bs = k_cache.shape[1]
    blk, off = slots.clamp(min=0) // bs, slots.clamp(min=0) % bs
    k_cache[blk, off] = k_new
    v_cache[blk, off] = v_new
    b, mb = table.shape
    h, d = k_cache.shape[2], k_cache.shape[3]
    k = k_cache[table.long()].reshape(b, mb * bs, h, d).float()
    v = v_cache[table.long()].reshape(b, mb * bs, h, d).float()
    rep = q.shape[1] // h
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    scores = torch.einsum("bhd,bkhd->bhk", q.float(), k) * scale
    live = torch.arange(mb * bs, device=q.device)[None, :] < seq_lens[:, None]
    scores = scores.masked_fill(~live[:, None, :], float("-inf"))
    return torch.einsum("bhk,bkhd->bhd", scores.softmax(-1).nan_to_num(), v)


class Graph:
    """A decode step for one TP view of one pool, captured (CUDA) or run eagerly (CPU), on
    static inputs that every call refills from a `Batch`."""

    def __init__(self, pool: KVPool, tp: int, rank: int, size: int, max_blocks: int):
        self.kc, self.vc = kv_nbhd(pool, pool.layer_views(tp)[0])
        dev, dt, h = pool.buf.device, pool.buf.dtype, pool.H // tp
        self.heads = slice(rank * HQ // tp, (rank + 1) * HQ // tp)
        self.q = torch.zeros(size, HQ // tp, pool.D, dtype=dt, device=dev)
        self.k = torch.zeros(size, h, pool.D, dtype=dt, device=dev)
        self.v = torch.zeros_like(self.k)
        self.slots = torch.full((size,), -1, dtype=torch.int64, device=dev)
        self.table = torch.zeros(size, max_blocks, dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros(size, dtype=torch.int32, device=dev)
        self.scale, self.graph, self.out = pool.D ** -0.5, None, None
        if dev.type == "cuda":
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                self._run()                      # warm-up outside the capture
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._run()

    def _run(self):
        return decode_step(self.q, self.k, self.v, self.kc, self.vc, self.slots, self.table,
                           self.seq_lens, self.scale)

    def __call__(self, batch, q, k, v):
        n = q.shape[0]                           # real sequences; the rest is padding
        self.q[:n].copy_(q[:, self.heads], non_blocking=True)
        self.k[:n].copy_(k, non_blocking=True)
        self.v[:n].copy_(v, non_blocking=True)
        self.slots.copy_(batch.slot_mapping, non_blocking=True)
        self.table[:, :batch.block_table.shape[1]].copy_(batch.block_table, non_blocking=True)
        self.seq_lens.copy_(batch.seq_lens, non_blocking=True)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        torch.cuda.current_stream().synchronize()   # the pinned inputs are refilled next
        return self.out


def check_graphs(device: str, dtype) -> dict:
    dev = "cuda:0" if device == "cuda" else "cpu"
    cfg = dict(SMALL, num_blocks=48)
    pools = [KVPool(**cfg, dtype=dtype, device=dev) for _ in range(2)]
    for r, p in enumerate(pools):
        p.buf.normal_(generator=torch.Generator(device=p.buf.device).manual_seed(5 + r))
    H, Bs, D = pools[0].H, pools[0].Bs, pools[0].D
    captured, max_blocks = (4, 8), 8
    ptrs = [p.buf.data_ptr() for p in pools]
    graphs = {1: Graph(pools[0], 1, 0, 8, max_blocks),
              2: [Graph(pools[r], 2, r, 8, max_blocks) for r in (0, 1)]}
    rng = torch.Generator().manual_seed(4)
    lens = [5, 17, 33, 60, 2]                  # 5 sequences: padded to the size-8 graph
    tables, free = [], list(range(1, cfg["num_blocks"]))   # block 0: padding's null block
    for n in lens:
        tables.append(tuple(free.pop(0) for _ in range(-(-(n + 2) // Bs))))
    k1, v1 = kv_nbhd(pools[0], pools[0].layer_views(1)[0])
    for n, table in zip(lens, tables):         # the context, written at tp=1 on worker 0
        pos = torch.arange(n)
        slots = (torch.tensor(table)[pos // Bs] * Bs + pos % Bs).to(dev)
        k1[slots // Bs, slots % Bs] = torch.randn(n, H, D, generator=rng).to(dtype).to(dev)
        v1[slots // Bs, slots % Bs] = torch.randn(n, H, D, generator=rng).to(dtype).to(dev)
    buffers = BatchBuffers(Bs, 8, 8, max_blocks, pin=device == "cuda")

    def step_inputs(offset: int, tp: int):
        g = torch.Generator().manual_seed(100 + offset)     # the same q, k, v at every tp
        chunks = tuple(SeqChunk(f"r{i}", (1,), n + offset,
                                tuple(tp_block_id((0, b), 0, tp) for b in t), SampleParams())
                       for i, (n, t) in enumerate(zip(lens, tables)))
        size = graph_size(len(chunks), captured)
        batch = buffers.fill(chunks, pad_to=size)
        q = torch.randn(len(lens), HQ, D, generator=g).to(dtype)
        k = torch.randn(len(lens), H, D, generator=g).to(dtype)
        v = torch.randn(len(lens), H, D, generator=g).to(dtype)
        return batch, size, q, k, v

    def eager_tp1(snapshot, batch, q, k, v):
        kc, vc = kv_nbhd(pools[0], snapshot[0].view(pools[0].NB, H, Bs, 2 * D))
        n = len(lens)
        return decode_step(q.to(dev), k.to(dev), v.to(dev), kc, vc,
                           batch.slot_mapping[:n].to(dev), batch.block_table[:n].to(dev),
                           batch.seq_lens[:n].to(dev), D ** -0.5)

    # token 1 at tp=1: graph vs eager on a snapshot
    batch, size, q, k, v = step_inputs(0, 1)
    want1 = eager_tp1(pools[0].buf.clone(), batch, q, k, v)
    got1 = graphs[1](batch, q.to(dev), k.to(dev), v.to(dev))[:len(lens)].clone()
    # HARD switch tp1 -> tp2 in place (the pools' own pack/unpack, as exchange does)
    moves = plan_moves([((0, b), (0, 1), (0, b), (0, 2)) for t in tables for b in t], H)
    snapshot = pools[0].buf.clone()
    packed = {w: {dst: pools[w]._pack(ms) for dst, ms in moves_for(w, moves)[0].items()}
              for w in (0, 1)}
    for w in (0, 1):
        for src, ms in moves_for(w, moves)[1].items():
            pools[w]._unpack(packed[src][w], ms)
    # token 2 at tp=2: each rank's graph (captured before the move) on its head group
    batch, size, q, k, v = step_inputs(1, 1)
    want2 = eager_tp1(snapshot, batch, q, k, v)
    batch, size2, q, k, v = step_inputs(1, 2)
    parts = []
    for r, g in enumerate(graphs[2]):
        heads = slice(r * H // 2, (r + 1) * H // 2)
        parts.append(g(batch, q.to(dev), k[:, heads].to(dev), v[:, heads].to(dev))[
            :len(lens)].clone())
    got2 = torch.cat(parts, dim=1)
    timing = _time_replay(graphs[1]) if device == "cuda" else {}
    err1 = (got1 - want1).abs().max().item()
    err2 = (got2 - want2).abs().max().item()
    tol = 1e-5
    return {"ok": err1 <= tol and err2 <= tol and size == 8
            and [p.buf.data_ptr() for p in pools] == ptrs,
            "captured": device == "cuda", "graph_size": size,
            "max_err_graph_vs_eager_tp1": err1, "max_err_tp2_graphs_after_move_vs_tp1": err2,
            "pool_addresses_unchanged": [p.buf.data_ptr() for p in pools] == ptrs, **timing}


def _time_replay(g: Graph, reps: int = 200) -> dict:
    """One decode step of this plain-torch attention, replayed vs launched op by op."""
    out = {}
    for name, fn in (("graph_replay_us", g.graph.replay), ("eager_us", g._run)):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        out[name] = round((time.perf_counter() - t) / reps * 1e6, 1)
    return out


# ------------------------------------------------------------------ one staging copy

def check_staging(device: str) -> dict:
    """The runner's batch reaches the GPU in ONE host-to-device copy (the profiler counts the
    memcpys) and every array equals its host original."""
    from torch.profiler import ProfilerActivity, profile
    bs = 16
    buf = BatchBuffers(bs, 64, 8, 8, pin=True)
    seqs = tuple(SeqChunk(f"r{i}", tuple(range(i + 1)), 3 * i, tuple(range(i, i + 4)),
                          SampleParams() if i % 2 else None) for i in range(6))
    host = buf.fill(seqs)
    dev = torch.device(device)
    buf.on_device(host, dev)                       # allocates the device buffer once
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        d = buf.on_device(host, dev)
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "memcpy" in e.name.lower()
              and "htod" in e.name.lower().replace(" ", "").replace("_", "")]
    fields = ("input_ids", "positions", "slot_mapping", "query_start_loc", "seq_lens",
              "block_table", "logits_rows")
    equal = all(torch.equal(getattr(host, f), getattr(d, f).cpu()) for f in fields)
    on_gpu = all(getattr(d, f).device.type == "cuda" for f in fields)
    return {"ok": equal and on_gpu and len(copies) == 1, "arrays_equal": equal,
            "htod_copies": len(copies), "copy_events": copies[:4],
            "staging_bytes": int(buf.host.numel())}


# ------------------------------------------------------------------ main

def run(device: str) -> dict:
    t0 = time.perf_counter()
    res: dict = {"device": device, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                 "checks": {}}
    try:
        res["checks"].update(check_pool_move(device))
    except Exception as e:  # noqa: BLE001
        res["checks"]["pool_move"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    for name, dtype in DTYPES.items():
        try:
            res["checks"][f"graphs/{name}"] = check_graphs(device, dtype)
        except Exception as e:  # noqa: BLE001
            res["checks"][f"graphs/{name}"] = {"ok": False,
                                               "error": f"{type(e).__name__}: {e}"}
    if device == "cuda":
        try:
            res["checks"]["staging"] = check_staging(device)
        except Exception as e:  # noqa: BLE001
            res["checks"]["staging"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    res["ok"] = bool(res["checks"]) and all(c["ok"] for c in res["checks"].values())
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ns = ap.parse_args(argv)
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_flying: no CUDA device visible (use --device cpu)", file=sys.stderr)
        return 2
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    res = run(ns.device)
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    Path(ns.out, "gpu_flying.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
