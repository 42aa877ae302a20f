"""The measured cost of each TP size: probed at warm-up, refined online from decode steps.

Prefill ms per token comes from the start-up probe (the slope between a prefill of
`PROBE_PREFILL_TOKENS` and one of four times as many, the best of three each: the marginal
cost, as served steps measure it), then, once `PREFILL_MIN_STEPS` served steps carried at least
`PREFILL_MIN_TOKENS` prompt tokens, from the last `PREFILL_WINDOW` of them: what they took
beyond their decodes' step, summed, over their prompt tokens summed. A ratio of sums, not a
moving average of each step's ratio: one step of 40 prompt tokens delayed 4 ms by a neighbour
on the shared cores reads as +0.1 ms a token, and an EWMA of such ratios swung 0.07-0.18 ms a
token for TP 1 between the suite's scenarios (the policy then read TP 2's prefill as 1.8x TP
1's, and split at idle); summed, a long prompt weighs what it cost and one step's delay is
spread over the window.
Decode ms by batch from the probe, then an EWMA of the pure-decode steps the instances run.
Lookups go through `types.decode_at`, the same interpolation the router's policy applies to
the snapshot it receives.

The two sources time different steps: the probe's run on an idle box over 64-token contexts,
served steps over real contexts on a box shared with the router, the load and the other
workers; served steps came out 1.5-3x slower. Mixed raw, a batch only the probe measured
looked cheaper than a smaller one served (batch 16 at 3.0 ms beside a served batch 7 at 8.5 ms
in the suite's Azure run), and the policy scored layouts on steps that never happen. So the
probe's points are scaled by the median served/probed ratio (at the batches served, the probe
interpolated), and the table never falls as the batch grows (the closest non-decreasing fit).
A size not served yet takes the ratio its node's served sizes measured: the contention is the
node's, and a raw probe beside a scaled one made the unserved layout look 1.5-3x faster. Its
prefill too: the unserved size's prefill had stayed the idle probe's beside the served size's
1.6-2.3x, so on this box whichever layout was not serving read as the faster prefill, and the
policy's low-load rule split TP for replicas and merged them back 12 s later at the same load.
A decode step's contention grows with the workers it spans, a prefill's does not: under the
same Azure-trace load (`flying bench` on 2 cores, the agent's published profile sampled every
second) TP 2's decode steps ran 2.3-3.6x its probe and TP 1's 1.3-2.5x, their prefill 1.6-2.0x
and 1.7-2.3x. A short decode step waits for every worker it spans, and each of them can be
held by the router or the load on its core: so an unserved size s takes a served size o's
decode ratio r as 1 + (r - 1) * s / o (its excess over the probe in proportion to its
workers; TP 2's 3x read as 2x for TP 1), and its prefill ratio as measured. Taken raw, TP 2's
decode ratio made replicas look as slow as the merged instance under the Azure trace's load
(18.3 vs 17.6 req/s), where static DP's P90 TTFT was 1.3-1.5x lower than static TP's.

A profile that served no step for `IDLE_FORGET_S` forgets what it served and speaks from its
probe again: its last served steps may have been measured under contention (the chaos test's
frozen and thawed agent read 4x slower than its peer, 0.27 vs 0.068 ms a prompt token), and
placement, which reads them, would send such a node nothing until the faster-looking one was
loaded. The first served steps after that rescale the probe again (the median ratio above).
So does one size that served no step for `SIZE_FORGET_S` while another served: it speaks as
an unserved size again (its probe at the served sizes' ratio). Kept, the replicas' steps
served under a static-DP overload read their capacity below the merged instance's (38.4 vs
44.9 req/s) 24 s later, after the merged instance had served a lighter load, and the
priority scenario's overload was never split (`bench/results/cpu-2core-repeat-c`, round 1).
"""
from __future__ import annotations

import time
from collections import deque
from statistics import median

from flying_core.commands import Failed, ProbeCmd, Probed
from flying_core.errors import Unavailable
from flying_core.sequencer import Sequencer
from flying_core.types import LayoutCost, decode_at

PROBE_PREFILL_TOKENS = 64
PROBE_DECODE_BATCHES = (1, 4, 16)
PREFILL_MIN_TOKENS = 32
PREFILL_MIN_STEPS = 8           # served prefill steps before they replace the probe's slope
PREFILL_WINDOW = 64             # the served prefill steps the estimate sums over
SNAPSHOT_EVERY_S = 0.2          # the merged decode table is remade at most this often
IDLE_FORGET_S = 10.0            # no served step this long: back to the probe (module doc)
SIZE_FORGET_S = 20.0            # a size that served nothing this long, while another did


def _rising(ms: list[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares: pool adjacent violators), so one
    slow step at a batch is averaged with its neighbours, not carried to every larger one."""
    pools: list[list[float]] = []           # [mean, count]
    for x in ms:
        pools.append([x, 1])
        while len(pools) > 1 and pools[-2][0] > pools[-1][0]:
            (m1, n1), (m2, n2) = pools.pop(), pools.pop()
            pools.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in pools for _ in range(int(n))]


class CostProfile:
    def __init__(self):
        self.prefill: dict[int, float] = {}             # size -> ms per prompt token
        self._probed_prefill: dict[int, float] = {}     # size -> the probe's slope
        self._served_at: float | None = None            # monotonic time of the last step
        self._size_served_at: dict[int, float] = {}     # size -> time of its last step
        self._prefill_steps: dict[int, deque[tuple[float, int]]] = {}  # (excess ms, tokens)
        self.probed: dict[int, dict[int, float]] = {}   # size -> batch -> ms, start-up probe
        self.served: dict[int, dict[int, float]] = {}   # size -> batch -> ms, EWMA of steps run
        self._table: dict[int, dict[int, float]] = {}   # the merged table (cached)
        self._stale: set[int] = set()                   # sizes observed since it was made
        self._snapshot: tuple[LayoutCost, ...] = ()
        self._snapshot_at = -SNAPSHOT_EVERY_S

    def seed(self, size: int, prefill_ms_per_token: float, decode: dict[int, float]) -> None:
        self.prefill[size] = self._probed_prefill[size] = prefill_ms_per_token
        self._prefill_steps[size] = deque(maxlen=PREFILL_WINDOW)
        self.probed[size] = {int(b): float(ms) for b, ms in decode.items()}
        self._table.pop(size, None)
        self._stale.discard(size)
        self._snapshot_at = -SNAPSHOT_EVERY_S

    def observe(self, size: int, batch, ms: float, now: float | None = None) -> None:
        """A step of `batch` ((request, tokens) pairs) took `ms`: a pure decode step updates
        the decode table, a step with `PREFILL_MIN_TOKENS` prompt tokens or more the prefill
        cost (see the module doc)."""
        if not batch:
            return
        self._served_at = time.monotonic() if now is None else now
        self._size_served_at[size] = self._served_at
        prompt = sum(n for _, n in batch if n > 1)
        if prompt:
            if prompt >= PREFILL_MIN_TOKENS and size in self.prefill:
                decodes = sum(1 for _, n in batch if n == 1)
                steps = self._prefill_steps[size]
                steps.append((max(0.0, ms - self.step_ms(size, max(1, decodes))), prompt))
                if len(steps) >= PREFILL_MIN_STEPS:
                    self.prefill[size] = sum(x for x, _ in steps) / sum(n for _, n in steps)
            return
        table = self.served.setdefault(size, {})
        b = len(batch)
        table[b] = ms if b not in table else 0.8 * table[b] + 0.2 * ms
        self._stale.update(self.probed)     # an unserved size's scale is read from this one

    def decode(self, size: int, fresh: bool = True) -> dict[int, float]:
        """Step ms by batch for `size`: served steps where measured, the probe's points scaled
        to them elsewhere, never falling as the batch grows (see the module doc). Remade from
        the observations when `fresh` (a status snapshot); per step (`step_ms`, the prefill
        estimate) the last one made serves: remaking it every step cost the driver ~0.3 ms a
        step, on the cores the workers run on."""
        if size not in self._table or (fresh and size in self._stale):
            self._stale.discard(size)
            probed, served = self.probed.get(size, {}), self.served.get(size, {})
            ratios = self._ratios(size) or [1.0 + (r - 1.0) * size / other
                                            for other in self.served if other != size
                                            for r in self._ratios(other)]
            scale = median(ratios) if ratios else 1.0
            merged = {b: ms * scale for b, ms in probed.items()} | served
            self._table[size] = dict(zip(sorted(merged), _rising([merged[b] for b in
                                                                  sorted(merged)])))
        return self._table[size]

    def _ratios(self, size: int) -> list[float]:
        """Served over probed step time at each batch `size` served."""
        probed = self.probed.get(size, {})
        return [ms / decode_at(probed, b) for b, ms in self.served.get(size, {}).items()
                if decode_at(probed, b) > 0]

    def step_ms(self, size: int, batch: int) -> float:
        return decode_at(self.decode(size, fresh=False), batch)

    def prefill_ms(self, size: int) -> float:
        """ms per prompt token for `size`: served where `PREFILL_MIN_STEPS` steps measured it,
        else its probe scaled by the median served/probed ratio of the sizes that did."""
        probed = self._probed_prefill.get(size)
        if probed is None or self._prefill_served(size):
            return self.prefill.get(size, 0.0)
        ratios = [self.prefill[o] / p for o, p in self._probed_prefill.items()
                  if o != size and p > 0 and self._prefill_served(o)]
        return probed * median(ratios) if ratios else probed

    def _prefill_served(self, size: int) -> bool:
        return len(self._prefill_steps.get(size, ())) >= PREFILL_MIN_STEPS

    def snapshot(self, now: float | None = None) -> tuple[LayoutCost, ...]:
        """The profile as the status publishes it, remade at most every `SNAPSHOT_EVERY_S`
        (the driver publishes a status every turn; the policy reads one every 0.5 s)."""
        now = time.monotonic() if now is None else now
        if self._served_at is not None and now - self._served_at >= IDLE_FORGET_S:
            self.forget_served()
        if now - self._snapshot_at >= SNAPSHOT_EVERY_S:
            for size in [s for s, at in self._size_served_at.items() if now - at >= SIZE_FORGET_S]:
                self._forget_size(size)
            self._snapshot_at = now
            self._snapshot = tuple(LayoutCost(s, self.prefill_ms(s), self.decode(s))
                                   for s in sorted(self.probed.keys() | self.served.keys()))
        return self._snapshot

    def _forget_size(self, size: int) -> None:
        """`size`'s served steps forgotten: it is scaled like an unserved size (module doc)."""
        del self._size_served_at[size]
        self.served.pop(size, None)
        if size in self._probed_prefill:
            self.prefill[size] = self._probed_prefill[size]
            self._prefill_steps[size].clear()
        self._table.pop(size, None)
        self._stale.update(self.probed)

    def forget_served(self) -> None:
        """Back to the probe: every served step forgotten (an idle profile, module doc)."""
        self._served_at = None
        self._size_served_at.clear()
        self.served.clear()
        self.prefill.update(self._probed_prefill)
        for steps in self._prefill_steps.values():
            steps.clear()
        self._table.clear()
        self._stale.clear()
        self._snapshot_at = -SNAPSHOT_EVERY_S

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
