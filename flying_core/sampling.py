"""Stateless seeded sampling: a token depends only on (logits, params, seed, position).

So a request sampled with temperature > 0 gives the same tokens whichever instance, TP size or
worker produces each step, and across any number of layout switches.

`sample` is one vectorised pass over the batch (temperature, top-k, top-p per row). The draw
is torch's own `multinomial(probs, 1)` algorithm written out — argmax(probs / q), q ~ Exp(1)
drawn from the row's (seed, position) generator — so it picks exactly the token the per-row
`torch.multinomial` call did (tests/test_sampling.py holds it to that per-row reference);
only filling q needs one generator per row.
"""
from __future__ import annotations

import torch

from flying_core.commands import SampleParams

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def _generator(seed: int, position: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * _MIX) ^ (position * 0xBF58476D1CE4E5B9)) & _MASK)
    return g


def sample(logits: torch.Tensor, params: list[SampleParams], positions: list[int]) -> list[int]:
    """logits: [n, vocab] (float); one token per row. Greedy rows are argmax."""
    out = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0.0]
    if not rows:
        return out.tolist()
    ps = [params[i] for i in rows]
    vocab = logits.shape[-1]
    x = logits[rows].float() / torch.tensor([[p.temperature] for p in ps], dtype=torch.float32)
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in ps]
    if any(ks):
        kth = torch.topk(x, max(ks), dim=-1).values
        kth = kth.gather(1, torch.tensor([[max(k, 1) - 1] for k in ks]))
        kth[torch.tensor(ks) == 0] = float("-inf")
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    top_p = torch.tensor([[p.top_p] for p in ps], dtype=torch.float32)
    if bool((top_p < 1.0).any()):
        sorted_p, idx = torch.sort(probs, descending=True, dim=-1)
        drop = (sorted_p.cumsum(-1) - sorted_p > top_p) & (top_p < 1.0)
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    q = torch.empty_like(probs)
    for j, i in enumerate(rows):
        q[j].exponential_(1.0, generator=_generator(ps[j].seed, positions[i]))
    out[rows] = (probs / q).argmax(dim=-1)
    return out.tolist()

