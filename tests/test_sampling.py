"""Batched stateless sampling picks exactly the per-row multinomial's tokens (pure)."""
from __future__ import annotations

import random

import pytest
import torch

from flying_core.commands import SampleParams
from flying_core.sampling import _generator, sample


def sample_rowwise(logits: torch.Tensor, params: list[SampleParams],
                   positions: list[int]) -> list[int]:
    """The per-row form (one torch.multinomial per row): the reference `sample` must equal."""
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


def random_params(rng: random.Random) -> SampleParams:
    if rng.random() < 0.2:
        return SampleParams(seed=rng.randrange(1 << 62))               # greedy
    return SampleParams(temperature=rng.choice([0.3, 0.7, 1.0, 1.5, rng.uniform(0.05, 3)]),
                        top_p=rng.choice([1.0, 0.9, 0.5, rng.uniform(0.01, 1.0)]),
                        top_k=rng.choice([0, 0, 1, 5, 50, rng.randrange(1, 3000)]),
                        seed=rng.randrange(1 << 62))


@pytest.mark.parametrize("vocab", [1500, 49152])
@pytest.mark.parametrize("seed", range(6))
def test_batched_equals_rowwise(seed, vocab):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for _ in range(4):
        n = rng.choice([1, 3, 8, 32])
        logits = torch.randn(n, vocab) * rng.choice([1.0, 4.0, 10.0])
        params = [random_params(rng) for _ in range(n)]
        positions = [rng.randrange(1, 4000) for _ in range(n)]
        assert sample(logits, params, positions) == sample_rowwise(logits, params, positions)


def test_token_depends_on_row_only_not_on_its_batch():
    torch.manual_seed(0)
    logits = torch.randn(8, 1500)
    params = [SampleParams(temperature=1.0, top_p=0.9, top_k=40, seed=s) for s in range(8)]
    positions = list(range(100, 108))
    whole = sample(logits, params, positions)
    alone = [sample(logits[i:i + 1], params[i:i + 1], positions[i:i + 1])[0] for i in range(8)]
    assert whole == alone
    assert len(set(sample(logits[:1].repeat(64, 1), [params[0]] * 64, list(range(64))))) > 1


def test_greedy_rows_are_argmax():
    logits = torch.randn(5, 300)
    params = [SampleParams()] * 5
    assert sample(logits, params, [0] * 5) == logits.argmax(-1).tolist()
