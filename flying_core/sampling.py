"""Stateless seeded sampling: a token depends only on (logits, params, seed, position).

So a request sampled with temperature > 0 gives the same tokens whichever instance, TP size or
worker produces each step, and across any number of layout switches.

`sample` is one vectorised pass over the batch, in vLLM's order (vllm/v1/sample/sampler.py):
logits processors that change the argmax (min_tokens' banned stop tokens, logit_bias), then
the penalties (repetition, frequency, presence: vLLM's own `apply_penalties`), greedy argmax;
for random rows temperature, min_p, top-k, top-p. The draw is torch's own
`multinomial(probs, 1)` algorithm written out — argmax(probs / q), q ~ Exp(1) drawn from the
row's (seed, position) generator — so it picks exactly the token the per-row
`torch.multinomial` call did (tests/test_sampling.py holds it to that per-row reference);
only filling q needs one generator per row.

`token_logprobs` reports what vLLM reports by default (`logprobs_mode="raw_logprobs"`): the
log_softmax of the raw logits, before any of the processing above.
"""
from __future__ import annotations

import torch

from flying_core.commands import SampleParams
from flying_core.types import TokenLogprob

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def _generator(seed: int, position: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * _MIX) ^ (position * 0xBF58476D1CE4E5B9)) & _MASK)
    return g


def _penalize(x: torch.Tensor, params: list[SampleParams]) -> torch.Tensor:
    """vLLM's presence/frequency/repetition penalties on the rows that have any (in place)."""
    rows = [i for i, p in enumerate(params) if p.presence_penalty != 0.0
            or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0]
    if not rows:
        return x
    from vllm.model_executor.layers.utils import apply_penalties
    vocab = x.shape[-1]

    def padded(seqs: list[tuple[int, ...]]) -> torch.Tensor:
        width = max(1, max(len(s) for s in seqs))
        return torch.tensor([list(s) + [vocab] * (width - len(s)) for s in seqs],
                            dtype=torch.int64)

    ps = [params[i] for i in rows]
    sub = x[rows]
    apply_penalties(sub, padded([p.prompt_ids for p in ps]), padded([p.output_ids for p in ps]),
                    torch.tensor([p.presence_penalty for p in ps], dtype=torch.float32),
                    torch.tensor([p.frequency_penalty for p in ps], dtype=torch.float32),
                    torch.tensor([p.repetition_penalty for p in ps], dtype=torch.float32))
    x[rows] = sub
    return x


def constrain(logits: torch.Tensor, params: list[SampleParams]) -> torch.Tensor:
    """Structured outputs: -inf outside each row's grammar bitmask (as vLLM applies it to the
    logits before its sampler, so its raw logprobs see it too)."""
    x = logits.float()
    rows = [i for i, p in enumerate(params) if p.allowed]
    if not rows:
        return x
    x = x.clone()
    vocab = x.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32)
    for i in rows:
        words = torch.frombuffer(bytearray(params[i].allowed), dtype=torch.int32)
        bits = ((words.unsqueeze(-1) >> shifts) & 1).flatten()[:vocab].bool()
        x[i, :bits.numel()].masked_fill_(~bits, float("-inf"))
    return x


def process(logits: torch.Tensor, params: list[SampleParams]) -> torch.Tensor:
    """The logits after the argmax-changing steps (grammar, banned tokens, logit_bias,
    penalties)."""
    x = constrain(logits, params)
    if not any(p.banned or p.logit_bias or p.presence_penalty or p.frequency_penalty
               or p.repetition_penalty != 1.0 for p in params):
        return x
    x = x.clone()
    vocab = x.shape[-1]
    for i, p in enumerate(params):
        if p.banned:
            x[i, [t for t in p.banned if 0 <= t < vocab]] = float("-inf")
        for t, bias in p.logit_bias:
            if 0 <= t < vocab:
                x[i, t] += bias
    return _penalize(x, params)


def sample(logits: torch.Tensor, params: list[SampleParams], positions: list[int]) -> list[int]:
    """logits: [n, vocab] (float); one token per row. Greedy rows are argmax."""
    logits = process(logits, params)
    out = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0.0]
    if not rows:
        return out.tolist()
    ps = [params[i] for i in rows]
    vocab = logits.shape[-1]
    x = logits[rows] / torch.tensor([[p.temperature] for p in ps], dtype=torch.float32)
    min_p = torch.tensor([[p.min_p] for p in ps], dtype=torch.float32)
    if bool((min_p > 0.0).any()):
        probs = torch.softmax(x, dim=-1)
        x = x.masked_fill(probs < probs.amax(dim=-1, keepdim=True) * min_p, float("-inf"))
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


def token_logprobs(logits: torch.Tensor, params: list[SampleParams],
                   tokens: list[int]) -> list[TokenLogprob | None]:
    """Raw logprobs of each row's chosen token, its rank and the row's top-k (None for rows
    that asked for none). As vLLM's `Sampler.gather_logprobs`: rank = how many tokens have a
    logprob >= the chosen one's."""
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    out: list[TokenLogprob | None] = [None] * len(params)
    if not rows:
        return out
    lp = constrain(logits, params)[rows].log_softmax(dim=-1)
    got = ranked(lp, [tokens[i] for i in rows], [params[i].logprobs for i in rows])
    for i, g in zip(rows, got):
        out[i] = g
    return out


def ranked(lp: torch.Tensor, chosen: list[int], ks: list[int]) -> list[TokenLogprob]:
    """Row j of the logprobs `lp` [n, vocab]: chosen[j]'s logprob, its rank (how many tokens
    have a logprob >= it, as vLLM's `Sampler.gather_logprobs`) and the top ks[j]."""
    ids = torch.tensor([[t] for t in chosen], dtype=torch.int64)
    chosen_lp = lp.gather(1, ids)
    ranks = (lp >= chosen_lp).sum(dim=-1).tolist()
    k = max(ks, default=0)
    top_lp, top_ids = torch.topk(lp, min(k, lp.shape[-1]), dim=-1) if k else (None, None)
    out = []
    for j, (t, kj) in enumerate(zip(chosen, ks)):
        top = tuple(zip(top_ids[j, :kj].tolist(), top_lp[j, :kj].tolist())) if kj else ()
        out.append(TokenLogprob(t, float(chosen_lp[j, 0]), int(ranks[j]), top))
    return out


def prompt_logprobs(logits: torch.Tensor, targets: list[tuple[int, ...]], ks: list[int]
                    ) -> list[tuple[TokenLogprob, ...]]:
    """vLLM's prompt logprobs: `logits` holds, chunk after chunk, the rows of the positions
    before each chunk's `targets` (the next prompt tokens); raw log_softmax (no processing:
    vLLM applies none to prompt logits)."""
    if not targets:
        return []
    lp = logits.float().log_softmax(dim=-1)
    flat = ranked(lp, [t for ts in targets for t in ts],
                  [k for ts, k in zip(targets, ks) for _ in ts])
    out, at = [], 0
    for ts in targets:
        out.append(tuple(flat[at:at + len(ts)]))
        at += len(ts)
    return out
