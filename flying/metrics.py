"""What the agent's and the router's Prometheus metrics share: vLLM's histogram buckets.

The buckets are vLLM 0.32's defaults (vllm/v1/metrics/buckets.py), copied so the router does not
import vLLM and dashboards can put Flying's and vLLM's latencies side by side.
"""
from __future__ import annotations

# vllm.v1.metrics.buckets.TIME_TO_FIRST_TOKEN_BUCKETS
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
# vllm.v1.metrics.buckets.INTER_TOKEN_LATENCY_BUCKETS
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
# vllm.v1.metrics.buckets.REQUEST_LATENCY_BUCKETS (e2e)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
