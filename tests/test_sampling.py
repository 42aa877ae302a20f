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


def test_processing_batched_equals_alone_and_acts():
    """Penalties, logit_bias and banned tokens: each row alone as in the batch, and they do
    change the greedy token."""
    from flying_core.sampling import process
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    top = logits.argmax(-1).tolist()
    params = [SampleParams(),
              SampleParams(logit_bias=((top[1], -100.0), (7, 1.5))),
              SampleParams(banned=(top[2],)),
              SampleParams(presence_penalty=2.0, frequency_penalty=1.0, repetition_penalty=3.0,
                           prompt_ids=(top[3], 5), output_ids=(top[3], top[3], top[3] + 1))]
    whole = process(logits, params)
    for i in range(4):
        assert torch.equal(whole[i:i + 1], process(logits[i:i + 1], params[i:i + 1]))
    assert torch.equal(whole[0], logits[0])
    assert whole[1, 7] == logits[1, 7] + 1.5 and whole[2, top[2]] == float("-inf")
    row, base = whole[3], logits[3]
    rep = torch.where(base[top[3]] > 0, base[top[3]] / 3.0, base[top[3]] * 3.0)
    assert torch.isclose(row[top[3]], rep - 2 * 1.0 - 2.0)        # 2 outputs, present
    assert sample(logits, params, [0] * 4)[1:] != top[1:]


def test_min_p_masks_below_its_share_of_the_top_probability():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {sample(logits, [SampleParams(temperature=1.0, min_p=0.4, seed=s)], [0])[0]
            for s in range(200)}
    assert seen == {0, 1}      # 0.15 < 0.4 * 0.5


def test_token_logprobs_are_raw_log_softmax_with_rank_and_top():
    from flying_core.sampling import token_logprobs
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    params = [SampleParams(logprobs=3), SampleParams(), SampleParams(logprobs=0,
                                                                     temperature=0.5)]
    tokens = [int(logits[0].argsort()[-2]), 0, 4]
    out = token_logprobs(logits, params, tokens)
    lp = logits.log_softmax(-1)
    assert out[1] is None
    assert out[0].token_id == tokens[0] and out[0].rank == 2
    assert out[0].logprob == pytest.approx(float(lp[0, tokens[0]]), abs=1e-6)
    assert [t for t, _ in out[0].top] == lp[0].topk(3).indices.tolist()
    assert out[2].top == () and out[2].rank == int((lp[2] >= lp[2, 4]).sum())
