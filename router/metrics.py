"""The router's Prometheus metrics: what the clients of the REST gateway see.

Histogram buckets are vLLM 0.32's defaults (vllm/v1/metrics/buckets.py), copied so the router does
not import vLLM and dashboards can put both side by side.
"""
from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# vllm.v1.metrics.buckets.TIME_TO_FIRST_TOKEN_BUCKETS
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
# vllm.v1.metrics.buckets.INTER_TOKEN_LATENCY_BUCKETS
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
# vllm.v1.metrics.buckets.REQUEST_LATENCY_BUCKETS (e2e)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class RouterMetrics:
    """All router metrics, registered in one dedicated registry (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flying_router_requests", "Generation requests by outcome (HTTP status; 499: the "
            "client went away).", ["status"], registry=r)
        self.running = Gauge(
            "flying_router_requests_running", "Generation requests in flight.", registry=r)
        self.prompt_tokens = Counter(
            "flying_router_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter(
            "flying_router_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "flying_ttft_seconds", "Time to first token seen by the router, in seconds.",
            buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(
            "flying_inter_token_latency_seconds", "Time between output chunks seen by the "
            "router, per token, in seconds.", buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(
            "flying_e2e_latency_seconds", "Request latency from arrival to the last token, "
            "in seconds.", buckets=REQUEST_LATENCY_BUCKETS, registry=r)

    def track(self) -> RequestTrack:
        return RequestTrack(self)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestTrack:
    """Timing of one request: call `tokens` per output chunk and `done` once at the end."""

    def __init__(self, metrics: RouterMetrics):
        self.m = metrics
        self.start = time.perf_counter()
        self.last: float | None = None
        self.ttft_s: float | None = None
        self.m.running.inc()
        self._open = True

    def tokens(self, n: int) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.ttft_s = now - self.start
            self.m.ttft.observe(self.ttft_s)
        elif n > 0:
            gap = (now - self.last) / n
            for _ in range(n):
                self.m.itl.observe(gap)
        if n > 0 or self.last is None:
            self.last = now
        self.m.generation_tokens.inc(n)

    def done(self, prompt_tokens: int) -> None:
        self.m.e2e.observe(time.perf_counter() - self.start)
        self.m.prompt_tokens.inc(prompt_tokens)
        self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            self.m.running.dec()
