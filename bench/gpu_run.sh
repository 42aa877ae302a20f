#!/usr/bin/env bash
# The one prepared run on a lent GPU machine (torch + Triton, no vLLM): both torch-level check
# scripts, Llama-3-8B's measured step cost per TP shard (the simulator's H200 profile), then the CPU-side tests of the same code under that machine's torch. Logs and JSON
# go to $OUT (the device tool brings them back); commit them under bench/results/gpu-h200/.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
timeout 240 python3 bench/gpu_check.py --out "$OUT" > "$OUT/gpu_check.log" 2>&1; echo "gpu_check rc=$?"
timeout 240 python3 bench/gpu_flying.py --out "$OUT" > "$OUT/gpu_flying.log" 2>&1; echo "gpu_flying rc=$?"
timeout 300 python3 bench/gpu_step_cost.py --out "$OUT" > "$OUT/gpu_step_cost.log" 2>&1; echo "gpu_step_cost rc=$?"
tail -5 "$OUT/gpu_step_cost.log"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_kv_views.py tests/test_batch.py \
    tests/test_gpu_check.py tests/test_gpu_flying.py > "$OUT/pytest.log" 2>&1; echo "pytest rc=$?"
tail -3 "$OUT/pytest.log"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for f in ("gpu_check.json", "gpu_flying.json"):
    p = pathlib.Path(sys.argv[1], f)
    if not p.exists():
        print(f, "missing"); continue
    r = json.loads(p.read_text())
    print(f, "ok" if r["ok"] else "FAILED", {k: v.get("ok") for k, v in r["checks"].items()})
    for k, v in r["checks"].items():
        if not v.get("ok"):
            print("  ", k, v)
PY
