"""Llama-3-8B on one 8xH200 node: `python -m bench.sim.roofline [--measured M.json] OUT.json`.

With `--measured` (the shipped profile: `bench/results/gpu-h200/gpu_step_cost.json`, from
`bench/gpu_step_cost.py` on a real H200), one GPU's share of a decode step (per TP size s and
batch b, 1,024 cached tokens per request, a CUDA graph) and of a 2,048-token prefill chunk are
measured; only the all-reduces a TP instance adds, which one GPU cannot measure, come from the
NVLink figures below. Without it, everything is the roofline. Every constant is named with
its source. A decode step of batch b on a TP-s instance reads the
weights once and each request's KV, split over s GPUs, and computes 2 FLOPs per parameter per
token; it takes the larger of the memory and compute times, plus two all-reduces per layer
(attention and MLP outputs) over NVLink when s > 1. Prefill is compute bound per token.
"""
from __future__ import annotations

import json
import sys

# --- hardware (NVIDIA H200 SXM datasheet, nvidia.com/en-us/data-center/h200)
HBM_BYTES_S = 4.8e12            # HBM3e bandwidth per GPU: 4.8 TB/s
HBM_BYTES = 141e9               # HBM3e capacity per GPU: 141 GB
NVLINK_BYTES_S = 900e9          # NVLink 4 per GPU: 900 GB/s (bidirectional total)
BF16_FLOPS = 989e12             # dense BF16 tensor-core peak: ~989 TFLOPS (1979 with sparsity)
ALLREDUCE_LATENCY_S = 10e-6     # one small NCCL all-reduce inside an NVSwitch node (~10 us;
                                # NCCL tests' small-message latency order of magnitude)

# --- model (meta-llama/Meta-Llama-3-8B config.json)
PARAMS = 8.03e9                 # parameters
LAYERS = 32                     # num_hidden_layers
KV_HEADS = 8                    # num_key_value_heads (GQA)
HEAD_DIM = 128                  # hidden_size 4096 / 32 attention heads
HIDDEN = 4096
DTYPE_BYTES = 2                 # bf16
WEIGHT_BYTES = PARAMS * DTYPE_BYTES
KV_BYTES_PER_TOKEN = LAYERS * KV_HEADS * HEAD_DIM * 2 * DTYPE_BYTES   # K and V: 131072 B

# --- efficiency: achieved / peak. MEM_EFF is set so that TP-1 batch-1 decode of a short
# context comes out near 5 ms/token (16 GB / (4.8 TB/s * 0.7) = 4.8 ms), the order of the
# batch-1 inter-token latency NVIDIA reports for Llama-3-8B on H100/H200-class GPUs with
# TensorRT-LLM / NIM. NOTE: that published figure was not re-verified in this session.
MEM_EFF = 0.7
COMPUTE_EFF = 0.5               # MFU of large prefill GEMMs (typical 40-60 %)
NVLINK_EFF = 0.7
GPU_MEM_UTIL = 0.9              # vLLM's default gpu_memory_utilization

# --- serving facts of the simulated node
TP_SIZES = (1, 2, 4, 8)          # 8 KV heads: TP up to 8
BATCHES = (1, 4, 16, 64, 256)    # profiled decode batches (as the agent's probe, wider)
MEAN_CONTEXT = 1024              # context per running request the decode profile assumes
BLOCK = 16
MAX_MODEL_LEN = 8192             # Llama-3-8B's context
COLD_START_S = 60.0              # reload 16 GB of weights + CUDA graphs/compile: ~1 min
SWITCH_FIXED_MS = 50.0           # rebuild views / NCCL communicator of a layout switch


def decode_ms(b: int, s: int, ctx: int = MEAN_CONTEXT) -> float:
    mem = (WEIGHT_BYTES + b * ctx * KV_BYTES_PER_TOKEN) / s / (HBM_BYTES_S * MEM_EFF)
    flops = 2 * PARAMS * b / s / (BF16_FLOPS * COMPUTE_EFF)
    return 1e3 * max(mem, flops) + comm_ms(b, s)


def prefill_ms_per_token(s: int, chunk: int = 2048) -> float:
    flops = 2 * PARAMS / s / (BF16_FLOPS * COMPUTE_EFF)
    comm = 0.0
    if s > 1:
        per = HIDDEN * DTYPE_BYTES * 2 * (s - 1) / s / (NVLINK_BYTES_S * NVLINK_EFF)
        comm = 2 * LAYERS * (ALLREDUCE_LATENCY_S / chunk + per)
    return 1e3 * (flops + comm)


def comm_ms(b: int, s: int) -> float:
    """Two all-reduces per layer of b tokens' hidden states over NVLink (0 at s = 1)."""
    if s == 1:
        return 0.0
    per = b * HIDDEN * DTYPE_BYTES * 2 * (s - 1) / s / (NVLINK_BYTES_S * NVLINK_EFF)
    return 1e3 * 2 * LAYERS * (ALLREDUCE_LATENCY_S + per)


def measured_costs(m: dict) -> list[dict]:
    """Per TP size: measured GPU time + modelled all-reduce (decode: per step of b; prefill:
    per token of a `prefill_chunk` chunk, whose all-reduce latency the chunk shares)."""
    chunk = m["prefill_chunk"]
    return [{"tp_size": s,
             "prefill_ms_per_token": round(m["prefill_ms"][str(s)] / chunk
                                           + comm_ms(chunk, s) / chunk, 6),
             "decode_ms": {str(b): round(m["decode_ms"][str(s)][str(b)] + comm_ms(b, s), 4)
                           for b in BATCHES}}
            for s in TP_SIZES]


def profile(measured: dict | None = None, measured_path: str = "") -> dict:
    kv_tokens = (HBM_BYTES * GPU_MEM_UTIL - WEIGHT_BYTES) / KV_BYTES_PER_TOKEN
    return {
        "name": "h200-llama3-8b",
        "source": (f"measured on one {measured['device']} ({measured_path}, "
                   "bench/gpu_step_cost.py) + NVLink all-reduce model: python -m "
                   f"bench.sim.roofline --measured {measured_path}" if measured else
                   "roofline: python -m bench.sim.roofline (constants in bench/sim/roofline.py)"),
        "workers_per_node": 8,
        "possible_tp_sizes": list(TP_SIZES),
        "block_size": BLOCK,
        "max_model_len": MAX_MODEL_LEN,
        "kv_blocks_per_worker": int(kv_tokens // BLOCK),
        "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
        "link_gb_s": NVLINK_BYTES_S * NVLINK_EFF / 1e9,
        "switch_fixed_ms": SWITCH_FIXED_MS,
        "cold_start_s": COLD_START_S,
        "max_running": 256,
        "max_batch_tokens": 8192,
        "costs": measured_costs(measured) if measured else
        [{"tp_size": s, "prefill_ms_per_token": round(prefill_ms_per_token(s), 6),
          "decode_ms": {str(b): round(decode_ms(b, s), 4) for b in BATCHES}}
         for s in TP_SIZES],
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    measured, path = None, ""
    if args[:1] == ["--measured"]:
        path, args = args[1], args[2:]
        measured = json.loads(open(path).read())
    text = json.dumps(profile(measured, path), indent=1)
    if args:
        open(args[0], "w").write(text + "\n")
    print(text)
