"""The router's Prometheus metrics: what the clients of the REST gateway see (vLLM's histogram
buckets, from `flying/metrics.py`)."""
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

from flying.metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS


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
        self.policy_leader = Gauge(
            "flying_router_policy_leader", "1 when this router runs the layout policy (leader "
            "of the routers sharing the agents).", registry=r)
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
