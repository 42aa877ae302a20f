"""The measured cost of each TP size: probed at warm-up, refined online from decode steps.

Prefill ms per token comes from the start-up probe; decode ms by batch from the probe, then an
EWMA of the pure-decode steps the instances run. Lookups go through `types.decode_at`, the same
interpolation the router's policy applies to the snapshot it receives.
"""
from __future__ import annotations

from flying_core.commands import Failed, ProbeCmd, Probed
from flying_core.errors import Unavailable
from flying_core.sequencer import Sequencer
from flying_core.types import LayoutCost, decode_at

PROBE_PREFILL_TOKENS = 64
PROBE_DECODE_BATCHES = (1, 4, 16)


class CostProfile:
    def __init__(self):
        self.prefill: dict[int, float] = {}
        self.decode: dict[int, dict[int, float]] = {}

    def seed(self, size: int, prefill_ms_per_token: float, decode: dict[int, float]) -> None:
        self.prefill[size] = prefill_ms_per_token
        self.decode[size] = {int(b): float(ms) for b, ms in decode.items()}

    def observe(self, size: int, batch, ms: float) -> None:
        """A step of `batch` ((request, tokens) pairs) took `ms`; only pure decodes count."""
        if not batch or any(n != 1 for _, n in batch):
            return
        table = self.decode.setdefault(size, {})
        b = len(batch)
        table[b] = ms if b not in table else 0.8 * table[b] + 0.2 * ms

    def step_ms(self, size: int, batch: int) -> float:
        return decode_at(self.decode.get(size, {}), batch)

    def prefill_ms(self, size: int) -> float:
        return self.prefill.get(size, 0.0)

    def snapshot(self) -> tuple[LayoutCost, ...]:
        return tuple(LayoutCost(s, self.prefill.get(s, 0.0), dict(sorted(self.decode[s].items())))
                     for s in sorted(self.decode))

    def probe(self, seq: Sequencer, num_workers: int, sizes: tuple[int, ...]) -> None:
        """Measure every TP size once, all instances of that size together (before serving)."""
        everyone = range(num_workers)
        for size in sizes:
            seq.send(everyone, ProbeCmd(seq.next_ticket(), size, PROBE_PREFILL_TOKENS,
                                        PROBE_DECODE_BATCHES))
            replies = [seq.reply_from(w, timeout=600) for w in everyone]
            failed = [r for r in replies if isinstance(r, Failed)]
            if failed:
                raise Unavailable(f"worker {failed[0].worker} failed its probe: {failed[0].error}")
            lead = [r for r in replies if isinstance(r, Probed) and r.worker % size == 0]
            prefill = sum(x.prefill_ms_per_token for x in lead) / len(lead)
            decode = {b: sum(x.decode_ms[b] for x in lead) / len(lead)
                      for b in lead[0].decode_ms}
            self.seed(size, prefill, decode)
