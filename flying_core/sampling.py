"""Stateless seeded sampling: a token depends only on (logits, params, seed, position).

So a request sampled with temperature > 0 gives the same tokens whichever instance, TP size or
worker produces each step, and across any number of layout switches.
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
    """logits: [n, vocab] (float); one token per row."""
    out = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if p.temperature <= 0.0:
            continue
        row = logits[i].float() / p.temperature
        if p.top_k and 0 < p.top_k < row.numel():
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if p.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            drop = sorted_p.cumsum(0) - sorted_p > p.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
        out[i] = int(torch.multinomial(probs, 1, generator=_generator(p.seed, positions[i])))
    return out
