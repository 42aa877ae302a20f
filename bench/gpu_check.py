"""Torch-level checks of the CUDA design on one GPU (no vLLM, no Flying dependencies).

    python bench/gpu_check.py --out DIR [--device cuda|cpu] [--quick]

Writes DIR/gpu_check.json (and prints it); exit 0 when every check passed. Under 5 minutes on
one GPU. Checks, in bfloat16 and float32:
  views       pool [L, NB, H, Bs*2D] -> tp=s layer views [NB*s, H/s, Bs, 2D] -> the CUDA
              kernels' K/V split (`transpose(1, 2).split(D, -1)`): same storage, strides in
              multiples of 16 bytes, the byte map K[t, n, j] == pool[l, t//s, (t%s)*H/s + j, n, :D]
  attention   a paged attention in plain torch reading those split views equals SDPA on
              contiguous K/V; after a tp1 -> tp2 head move, per-head-group attention on the tp=2
              views of both pools equals the tp=1 result
  linear      F.linear on a strided column slice (row-parallel weight view) equals the
              contiguous result, and the profiler shows no copy kernel
  ipc         (cuda) a pool shared with a second process through CUDA IPC: each side sees the
              other's writes, no copy
  gemm        timing: one GEMM per fused slice (the view model's QKV) vs one fused GEMM,
              launched one by one and (cuda) 32 of each in one CUDA graph; a row-parallel
              layer on a strided column slice of its weight vs on a contiguous copy
`--device cpu` runs everything but IPC (tests/test_gpu_check.py does, and checks the views and
attention here against flying_core's own code). Self-contained on purpose: a GPU box with only
torch and Triton can run it from a bare checkout.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DTYPES = (torch.bfloat16, torch.float32)


# ------------------------------------------------------------------ views and attention

def views(pool: torch.Tensor, tp: int, head_size: int) -> list[torch.Tensor]:
    """Per-layer tp=`tp` views [NB*tp, H/tp, Bs, 2D] of a pool [L, NB, H, Bs*2D]."""
    L, nb, h, x = pool.shape
    return [pool[i].view(nb * tp, h // tp, x // (2 * head_size), 2 * head_size)
            for i in range(L)]


def split_cuda(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as FlashAttention / Triton read a [N, h, Bs, 2D] view: [N, Bs, h, D] each."""
    k, v = view.transpose(1, 2).split(view.shape[-1] // 2, dim=-1)
    return k, v


def write_kv(k_cache, v_cache, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Store tokens' K/V [T, h, D] at their slots (block * Bs + offset), through the views."""
    bs = k_cache.shape[1]
    k_cache[slots // bs, slots % bs] = k
    v_cache[slots // bs, slots % bs] = v


def paged_attention(q, k_cache, v_cache, table: list[int], start: int, scale: float):
    """One sequence's attention, plain torch over the paged split views.
    q [n, Hq, D] are the queries at positions start..start+n-1; `table` its block ids."""
    n, hq, d = q.shape
    h = k_cache.shape[2]
    seq = start + n
    k = k_cache[table].reshape(-1, h, d)[:seq].float()
    v = v_cache[table].reshape(-1, h, d)[:seq].float()
    k, v = (t.repeat_interleave(hq // h, dim=1) for t in (k, v))       # GQA
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    pos_q = torch.arange(start, seq, device=q.device)[:, None]
    scores = scores.masked_fill(torch.arange(seq, device=q.device)[None, :] > pos_q, -math.inf)
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def sdpa(q, k, v, start: int, scale: float):
    """Reference on contiguous K/V [seq, h, D] (all positions) and queries [n, Hq, D]."""
    n, hq, _ = q.shape
    seq = k.shape[0]
    mask = torch.arange(seq, device=q.device)[None, :] <= torch.arange(start, start + n,
                                                                        device=q.device)[:, None]
    rep = hq // k.shape[1]
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.float().repeat_interleave(rep, 1).transpose(0, 1),
        v.float().repeat_interleave(rep, 1).transpose(0, 1), attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def check_views(device: str, dtype) -> dict:
    L, nb, h, bs, d = 2, 6, 4, 16, 64
    pool = (torch.arange(L * nb * h * bs * 2 * d, device=device) % 251).to(dtype).view(
        L, nb, h, -1)   # distinct small integers: exact in bfloat16
    out = {}
    for tp in (1, 2, 4):
        hs = h // tp
        for layer, view in enumerate(views(pool, tp, d)):
            k, v = split_cuda(view)
            item = pool.element_size()
            strides = [s * item for s in k.stride()]
            t = torch.arange(nb * tp, device=device)
            want_k = pool[layer].view(nb, h, bs, 2 * d)[t // tp][:, :, :, :d]
            # [N, h_total, Bs, D] -> head group of each tp block -> [N, Bs, hs, D]
            grp = torch.stack([want_k[i, (i % tp) * hs:(i % tp + 1) * hs]
                               for i in range(nb * tp)]).transpose(1, 2)
            want_v = pool[layer].view(nb, h, bs, 2 * d)[t // tp][:, :, :, d:]
            grp_v = torch.stack([want_v[i, (i % tp) * hs:(i % tp + 1) * hs]
                                 for i in range(nb * tp)]).transpose(1, 2)
            ok = (k.untyped_storage().data_ptr() == pool.untyped_storage().data_ptr()
                  and v.data_ptr() == k.data_ptr() + d * item
                  and tuple(k.shape) == (nb * tp, bs, hs, d)
                  and k.stride() == (hs * bs * 2 * d, 2 * d, bs * 2 * d, 1)
                  and all(s % 16 == 0 for s in strides[:-1])
                  and torch.equal(k, grp) and torch.equal(v, grp_v))
            out[f"tp{tp}"] = bool(ok) and out.get(f"tp{tp}", True)
    return {"ok": all(out.values()), **out}


def _fill_sequences(k_cache, v_cache, rng, lens, hq, dtype, device):
    """Random K/V for sequences of `lens` tokens written through the views; per sequence
    (table, k, v, q over its last chunk, chunk start)."""
    nb, bs, h, d = k_cache.shape
    free = torch.randperm(nb, generator=rng).tolist()
    seqs = []
    for n in lens:
        table = [free.pop() for _ in range(-(-n // bs))]
        k = torch.randn(n, h, d, generator=rng).to(dtype).to(device)
        v = torch.randn(n, h, d, generator=rng).to(dtype).to(device)
        pos = torch.arange(n)
        slots = (torch.tensor(table)[pos // bs] * bs + pos % bs).to(device)
        write_kv(k_cache, v_cache, slots, k, v)
        start = n // 2 if n > 1 else 0
        q = torch.randn(n - start, hq, d, generator=rng).to(dtype).to(device)
        seqs.append((table, k, v, q, start))
    return seqs


def check_attention(device: str, dtype) -> dict:
    rng = torch.Generator().manual_seed(0)
    L, nb, h, bs, d, hq = 1, 16, 4, 16, 64, 8
    scale = d ** -0.5
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    pools = [torch.zeros(L, nb, h, bs * 2 * d, dtype=dtype, device=device) for _ in range(2)]
    k_cache, v_cache = split_cuda(views(pools[0], 1, d)[0])
    seqs = _fill_sequences(k_cache, v_cache, rng, [1, 17, 40, 64], hq, dtype, device)
    err_sdpa, tp1 = 0.0, []
    for table, k, v, q, start in seqs:
        got = paged_attention(q, k_cache, v_cache, table, start, scale)
        err_sdpa = max(err_sdpa, (got - sdpa(q, k, v, start, scale)).abs().max().item())
        tp1.append(got)
    # tp1 -> tp2 over workers 0 and 1: KV head j of DP block b moves to worker j // (h/2),
    # block b, head position j % (h/2) (kv_plan.head_location for home (0, b), instance (0, 2))
    per = h // 2
    for j in range(per, h):
        pools[1][:, :, j - per] = pools[0][:, :, j]
    err_move = 0.0
    for (table, _, _, q, start), want in zip(seqs, tp1):
        parts = []
        for r in range(2):
            kc, vc = split_cuda(views(pools[r], 2, d)[0])
            tp_table = [b * 2 + 0 for b in table]         # home worker 0: TP block b*2 + (0-0)
            parts.append(paged_attention(q[:, r * hq // 2:(r + 1) * hq // 2], kc, vc,
                                         tp_table, start, scale))
        err_move = max(err_move, (torch.cat(parts, dim=1) - want).abs().max().item())
    return {"ok": err_sdpa < tol and err_move == 0.0, "max_err_vs_sdpa": err_sdpa,
            "max_err_tp2_vs_tp1": err_move}


# ------------------------------------------------------------------ weights and GEMMs

def check_linear(device: str, dtype) -> dict:
    """Row-parallel view: a column slice of the full [out, in] weight, stride (in_full, 1)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    out_f, in_f, tp = 1024, 2048, 2
    full = torch.randn(out_f, in_f, device=device).to(dtype)
    x = torch.randn(64, in_f // tp, device=device).to(dtype)
    ok = True
    copies: list[str] = []
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for r in range(tp):
        w = full.narrow(1, r * in_f // tp, in_f // tp)
        assert not w.is_contiguous() and w.stride() == (in_f, 1)
        F.linear(x, w)
        with profile(activities=acts) as prof:
            got = F.linear(x, w)
            if device == "cuda":
                torch.cuda.synchronize()
        copies += [e.name for e in prof.events()
                   if any(s in e.name.lower() for s in ("copy", "contiguous", "clone"))]
        ok = ok and torch.equal(got, F.linear(x, w.contiguous()))
    return {"ok": ok and not copies, "equal": ok, "copy_events": sorted(set(copies))}


def _time(fn, device: str, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_gemms(device: str, dtype, quick: bool) -> dict:
    """QKV of a Llama-3-8B layer at tp=2 (hidden 4096, 32 q / 8 kv heads of 128): the view
    model's three row slices of the full weight, one GEMM each + concat, vs one GEMM on a
    contiguous fused shard."""
    hidden, d, qh, kvh, tp = (4096, 128, 32, 8, 2) if not quick else (512, 64, 8, 2, 2)
    full = torch.randn((qh + 2 * kvh) * d, hidden, device=device).to(dtype)
    q_rows, kv_rows = qh * d // tp, kvh * d // tp
    pieces = [full.narrow(0, 0, q_rows), full.narrow(0, qh * d, kv_rows),
              full.narrow(0, (qh + kvh) * d, kv_rows)]
    fused = torch.cat(pieces).contiguous()
    rows = {}
    for tokens in ((1, 16, 256, 2048) if not quick else (1, 16)):
        x = torch.randn(tokens, hidden, device=device).to(dtype)
        sliced = _time(lambda x=x: torch.cat([F.linear(x, p) for p in pieces], -1), device,
                       20 if quick else 100)
        one = _time(lambda x=x: F.linear(x, fused), device, 20 if quick else 100)
        rows[str(tokens)] = {"slices_ms": round(sliced, 4), "fused_ms": round(one, 4),
                             "slices_over_fused": round(sliced / one, 3)}
        if device == "cuda":    # as a decode step runs them: 32 layers in one CUDA graph
            g_sliced = _time_graphed(lambda x=x: torch.cat([F.linear(x, p) for p in pieces],
                                                           -1))
            g_one = _time_graphed(lambda x=x: F.linear(x, fused))
            rows[str(tokens)].update({"graphed_slices_ms": round(g_sliced, 4),
                                      "graphed_fused_ms": round(g_one, 4),
                                      "graphed_slices_over_fused": round(g_sliced / g_one, 3)})
    return rows


def time_row_parallel(device: str, dtype, quick: bool) -> dict:
    """Row-parallel layers at tp=2 as the view model runs them: F.linear on a strided column
    slice of the full weight (stride (in_full, 1), no copy) vs on a contiguous copy of that
    slice. Llama-3-8B's o_proj [4096, 4096] and down_proj [4096, 14336]; on CUDA 32 of each
    in one CUDA graph, on CPU launched one by one."""
    shapes = {"o_proj": (4096, 4096), "down_proj": (4096, 14336)} if not quick else \
        {"o_proj": (256, 256)}
    out: dict = {}
    for name, (out_f, in_f) in shapes.items():
        full = torch.randn(out_f, in_f, device=device).to(dtype)
        view = full.narrow(1, 0, in_f // 2)
        copy = view.contiguous()
        rows = {}
        for tokens in ((1, 16, 256, 2048) if not quick else (1, 16)):
            x = torch.randn(tokens, in_f // 2, device=device).to(dtype)
            timed = (_time_graphed if device == "cuda" else
                     lambda fn: _time(fn, device, 20))
            strided = timed(lambda x=x, w=view: F.linear(x, w))
            contiguous = timed(lambda x=x, w=copy: F.linear(x, w))
            rows[str(tokens)] = {"strided_ms": round(strided, 4),
                                 "contiguous_ms": round(contiguous, 4),
                                 "strided_over_contiguous": round(strided / contiguous, 3)}
        out[name] = rows
    return out


def _time_graphed(fn, layers: int = 32, reps: int = 20) -> float:
    """Milliseconds per call of `fn` captured `layers` times in one CUDA graph (no launch
    overhead between calls, as in a captured decode step)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(layers):
            fn()
    return _time(g.replay, "cuda", reps) / layers


# ------------------------------------------------------------------ CUDA IPC

def _ipc_child(q_in, q_out) -> None:
    pool = q_in.get()                         # rebuilt from a CUDA IPC handle: same memory
    seen = float(pool[0, 1].float().sum().item())
    pool[1, 2].fill_(7)                       # the parent must see this write
    torch.cuda.synchronize()
    q_out.put((seen, pool.data_ptr() != 0))
    q_in.get()                                # keep the mapping open until the parent read


def check_ipc(dtype) -> dict:
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    pool = torch.zeros(4, 8, 4, 256, dtype=dtype, device="cuda")
    pool[0, 1].fill_(3)
    torch.cuda.synchronize()
    q_in, q_out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_ipc_child, args=(q_in, q_out))
    p.start()
    q_in.put(pool)
    seen, mapped = q_out.get(timeout=120)
    torch.cuda.synchronize()
    child_write = bool((pool[1, 2] == 7).all().item())
    q_in.put(None)
    p.join(60)
    want = 3.0 * pool[0, 1].numel()
    return {"ok": seen == want and child_write and mapped, "child_saw_parent": seen == want,
            "parent_saw_child": child_write}


# ------------------------------------------------------------------ main

def run(device: str, quick: bool) -> dict:
    t0 = time.perf_counter()
    res: dict = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                 "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                 "checks": {}, "gemm": {}}
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        checks = {"views": check_views, "attention": check_attention, "linear": check_linear}
        if device == "cuda":
            checks["ipc"] = lambda _device, dt: check_ipc(dt)
        for key, fn in checks.items():
            try:
                res["checks"][f"{key}/{name}"] = fn(device, dtype)
            except Exception as e:  # noqa: BLE001 - a failed check is a result, not a crash
                res["checks"][f"{key}/{name}"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        res["gemm"][name] = time_gemms(device, dtype, quick)
        res.setdefault("gemm_row_parallel", {})[name] = time_row_parallel(device, dtype, quick)
    res["ok"] = all(c["ok"] for c in res["checks"].values())
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="small GEMM timings only")
    ns = ap.parse_args(argv)
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --device cpu)", file=sys.stderr)
        return 2
    res = run(ns.device, ns.quick)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
