"""Measure this box's profile for the simulator: `python -m bench.sim.measure OUT.json`.

Starts a real 2-worker WorkerGroup with the burst benchmark's testbed (tiny model, float32,
16 MiB KV per worker, max_model_len 8192: `bench/results/cpu-2core-before-queueing/*.json` "testbed"),
lets the agent's own start-up probe (`flying_core.cost_profile`) measure every TP size, and
writes its cost snapshot and KV geometry in the simulator's profile format (`bench.sim.profile`).
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")   # as the bench testbed

from flying_core.config import GroupConfig
from flying_core.group import WorkerGroup


def main(out: str) -> None:
    from flying_dev import checkpoints
    model = str(checkpoints.ensure("tiny"))
    t0 = time.monotonic()
    g = WorkerGroup(GroupConfig(model=model, num_workers=2, dtype="float32", layout=(1, 1),
                                kv_bytes=16 << 20, max_model_len=8192, enforce_eager=True))
    g.start()
    start_s = time.monotonic() - t0
    st = g.status()
    g.shutdown()
    worker_blocks = max(i.kv_blocks_total // i.tp_size for i in st.instances)
    prof = {
        "name": "cpu-2core-tiny",
        "source": "measured: python -m bench.sim.measure (agent start-up probe, eager)",
        "workers_per_node": 2,
        "possible_tp_sizes": list(st.possible_tp_sizes),
        "block_size": st.block_size,
        "max_model_len": st.max_model_len,
        "kv_blocks_per_worker": worker_blocks,
        "costs": [{"tp_size": c.tp_size, "prefill_ms_per_token": c.prefill_ms_per_token,
                   "decode_ms": {str(b): ms for b, ms in c.decode_ms.items()}}
                  for c in st.costs],
        "cold_start_s": round(start_s, 2),
    }
    with open(out, "w") as f:
        json.dump(prof, f, indent=1)
    print(json.dumps(prof, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
