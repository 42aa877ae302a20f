"""Llama-3-8B's step cost per TP shard, measured on one GPU (torch only, no vLLM).

    python bench/gpu_step_cost.py --out DIR [--quick]

What `flying sim`'s H200 profile needs and a roofline only guesses: the time one GPU of a TP-s
instance spends on a decode step of batch b (every request at `CONTEXT` tokens) and on a
prefill chunk. The step is Llama-3-8B's (config.json of meta-llama/Meta-Llama-3-8B: 32 layers,
hidden 4096, 32 query / 8 KV heads of 128, MLP 14336, vocab 128256), bf16, sharded as vLLM's
tensor parallelism shards it (QKV and gate/up by output rows, O and down by input columns, the
LM head by vocabulary rows); per layer: RMSNorm, QKV GEMM, RoPE-sized elementwise work, the
new token's K/V written at its slot, attention over the cached KV (FlashAttention through
SDPA; the query heads of a KV head ride as its query rows, which is exact for decode), O GEMM,
RMSNorm, gate/up GEMM, SiLU x mul, down GEMM; then the LM head. Each decode step runs as one
CUDA graph (as vLLM's decode does), timed with CUDA events over `REPS` replays; prefill runs
eagerly (chunk of `PREFILL_CHUNK` tokens, causal). The all-reduces a TP instance adds are not
measurable on one GPU: the simulator models them from NVLink figures (bench/sim/roofline.py).

Writes DIR/gpu_step_cost.json: {"device", "torch", "decode_ms": {s: {b: ms}}, "prefill_ms":
{s: ms per chunk}, ...}; `python -m bench.sim.roofline --measured DIR/gpu_step_cost.json OUT`
turns it into the simulator's profile.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 32, 4096, 32, 8, 128
MLP, VOCAB = 14336, 128256
CONTEXT = 1024                 # cached tokens per request in a decode step (the profile's mean)
PREFILL_CHUNK = 2048
TP_SIZES = (1, 2, 4, 8)
BATCHES = (1, 4, 16, 64, 256)
REPS = 20
DT = torch.bfloat16


class Shard:
    """One GPU's share of the model at TP size s: 32 layers' weights (distinct tensors, so
    nothing is served from L2 between layers) and the LM head."""

    def __init__(self, s: int, dev: str):
        self.s, self.h, self.kvh = s, HEADS // s, KV_HEADS // s
        qkv = (self.h + 2 * self.kvh) * HEAD_DIM

        def w(*shape):
            return torch.empty(shape, dtype=DT, device=dev).normal_(0, 0.02)
        self.layers = [dict(qkv=w(qkv, HIDDEN), o=w(HIDDEN, self.h * HEAD_DIM),
                            gate_up=w(2 * MLP // s, HIDDEN), down=w(HIDDEN, MLP // s),
                            n1=torch.ones(HIDDEN, dtype=DT, device=dev),
                            n2=torch.ones(HIDDEN, dtype=DT, device=dev))
                       for _ in range(LAYERS)]
        self.lm_head = w(VOCAB // s, HIDDEN)

    def layer(self, L: dict, x: torch.Tensor, attend) -> torch.Tensor:
        h = F.rms_norm(x, (HIDDEN,), L["n1"])
        qkv = F.linear(h, L["qkv"])
        q, k, v = qkv.split([self.h * HEAD_DIM, self.kvh * HEAD_DIM, self.kvh * HEAD_DIM], -1)
        q = q * 1.0001                     # stands for RoPE's elementwise pass over q and k
        k = k * 1.0001
        a = attend(q, k, v)
        x = x + F.linear(a, L["o"])        # (TP: the all-reduce goes here)
        h = F.rms_norm(x, (HIDDEN,), L["n2"])
        gu = F.linear(h, L["gate_up"])
        g, u = gu.chunk(2, -1)
        return x + F.linear(F.silu(g) * u, L["down"])   # (and here)


def decode_ms(sh: Shard, b: int, dev: str) -> float:
    """One decode step of batch b, each request with CONTEXT cached tokens, as a CUDA graph."""
    kc = torch.empty(LAYERS, b, sh.kvh, CONTEXT + 1, HEAD_DIM, dtype=DT, device=dev).normal_()
    vc = torch.empty_like(kc).normal_()
    x0 = torch.randn(b, HIDDEN, dtype=DT, device=dev)
    g = sh.h // sh.kvh

    def step():
        x = x0
        for i, L in enumerate(sh.layers):
            def attend(q, k, v, i=i):
                kc[i, :, :, CONTEXT] = k.view(b, sh.kvh, HEAD_DIM)
                vc[i, :, :, CONTEXT] = v.view(b, sh.kvh, HEAD_DIM)
                qh = q.view(b, sh.kvh, g, HEAD_DIM)
                o = F.scaled_dot_product_attention(qh, kc[i], vc[i])
                return o.reshape(b, sh.h * HEAD_DIM)
            x = sh.layer(L, x, attend)
        return F.linear(F.rms_norm(x, (HIDDEN,), sh.layers[0]["n1"]), sh.lm_head)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    ms = _time(graph.replay)
    del graph                     # (kc, vc: freed with `step` at return)
    torch.cuda.empty_cache()
    return ms


def prefill_ms(sh: Shard, dev: str) -> float:
    """One prompt chunk of PREFILL_CHUNK tokens from position 0, causal, eager."""
    n = PREFILL_CHUNK
    x0 = torch.randn(n, HIDDEN, dtype=DT, device=dev)
    g = sh.h // sh.kvh

    def attend(q, k, v):
        qh = q.view(n, sh.h, HEAD_DIM).transpose(0, 1).unsqueeze(0)
        kh = k.view(n, sh.kvh, HEAD_DIM).transpose(0, 1).repeat_interleave(g, 0).unsqueeze(0)
        vh = v.view(n, sh.kvh, HEAD_DIM).transpose(0, 1).repeat_interleave(g, 0).unsqueeze(0)
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        return o.squeeze(0).transpose(0, 1).reshape(n, sh.h * HEAD_DIM)

    def step():
        x = x0
        for L in sh.layers:
            x = sh.layer(L, x, attend)
        return F.linear(F.rms_norm(x[-1:], (HIDDEN,), sh.layers[0]["n1"]), sh.lm_head)
    step()
    return _time(step, reps=5)


def _time(fn, reps: int = REPS) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def run(quick: bool) -> dict:
    dev = "cuda"
    torch.cuda.set_device(0)
    batches = BATCHES[:3] if quick else BATCHES
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "model": "Llama-3-8B shapes, bf16", "context": CONTEXT,
                 "prefill_chunk": PREFILL_CHUNK, "reps": REPS,
                 "decode_ms": {}, "prefill_ms": {}, "wall_s": {}}
    with torch.inference_mode():
        for s in TP_SIZES:
            t0 = time.perf_counter()
            sh = Shard(s, dev)
            res["decode_ms"][str(s)] = {str(b): round(decode_ms(sh, b, dev), 4) for b in batches}
            res["prefill_ms"][str(s)] = round(prefill_ms(sh, dev), 4)
            res["wall_s"][str(s)] = round(time.perf_counter() - t0, 1)
            print(s, res["decode_ms"][str(s)], res["prefill_ms"][str(s)], flush=True)
            del sh
            torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="batches 1, 4, 16 only")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    res = run(a.quick)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "gpu_step_cost.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
