"""The agent's Prometheus metrics (`flying_` names, vLLM's histogram bucket shapes)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flying.metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from flying_core.types import GroupStatus, PrefixCacheStats

SWITCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                  30.0, 60.0)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.ttft = Histogram("flying_ttft_seconds", "Time to first token on the node.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("flying_inter_token_latency_seconds", "Time between tokens.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("flying_e2e_latency_seconds", "Arrival to last token.",
                             buckets=REQUEST_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("flying_queue_time_seconds", "Arrival to first scheduled step.",
                               buckets=REQUEST_LATENCY_BUCKETS, registry=r)
        self.finished = Counter("flying_requests", "Finished requests by reason.",
                                ["finish_reason"], registry=r)
        self.tokens = Counter("flying_generation_tokens", "Tokens generated.", registry=r)
        self.queue_depth = Gauge("flying_queue_depth", "Waiting requests per instance.",
                                 ["instance"], registry=r)
        self.running = Gauge("flying_running_requests", "Running requests per instance.",
                             ["instance"], registry=r)
        self.kv_usage = Gauge("flying_kv_usage_ratio", "Used share of each instance's KV blocks.",
                              ["instance"], registry=r)
        self.tp_size = Gauge("flying_instance_tp_size", "TP size of each instance.", ["instance"],
                             registry=r)
        self.switches = Counter("flying_layout_switches", "Layout switches.", ["mode"],
                                registry=r)
        self.switch_latency = Histogram("flying_switch_latency_seconds", "Layout switch time.",
                                        buckets=SWITCH_BUCKETS, registry=r)
        self.restarts = Counter("flying_worker_group_restarts", "Worker group restarts.",
                                registry=r)
        # vLLM's shapes (vllm:prefix_cache_queries / _hits): counters of tokens
        self.prefix_queries = Counter("flying_prefix_cache_queries",
                                      "Prompt tokens looked up in the prefix cache.", registry=r)
        self.prefix_hits = Counter("flying_prefix_cache_hits",
                                   "Prompt tokens found in the prefix cache.", registry=r)
        self.prefix_evictions = Counter("flying_prefix_cache_evictions",
                                        "Cached KV blocks reused for other content.", registry=r)
        self.prefix_blocks = Gauge("flying_prefix_cache_blocks",
                                   "KV blocks holding a cached prefix block.", registry=r)
        self._prefix_seen = PrefixCacheStats()

    def observe_status(self, st: GroupStatus) -> None:
        for g in (self.queue_depth, self.running, self.kv_usage, self.tp_size):
            g.clear()
        for i in st.instances:
            label = str(i.index)
            self.queue_depth.labels(label).set(i.waiting)
            self.running.labels(label).set(i.running)
            self.kv_usage.labels(label).set(i.kv_blocks_used / max(1, i.kv_blocks_total))
            self.tp_size.labels(label).set(i.tp_size)
        self._observe_prefix_cache(st.prefix_cache)

    def _observe_prefix_cache(self, pc: PrefixCacheStats) -> None:
        """The group reports running totals; the counters advance by what is new (a restarted
        group counts from zero again)."""
        seen = self._prefix_seen
        if pc.query_tokens < seen.query_tokens or pc.evictions < seen.evictions:
            seen = PrefixCacheStats()
        self.prefix_queries.inc(pc.query_tokens - seen.query_tokens)
        self.prefix_hits.inc(max(0, pc.hit_tokens - seen.hit_tokens))
        self.prefix_evictions.inc(pc.evictions - seen.evictions)
        self.prefix_blocks.set(pc.cached_blocks)
        self._prefix_seen = pc
