"""Arrival processes and the requests a benchmark replays.

Every generator is deterministic from its ``seed`` (numpy ``default_rng``) and returns sorted
arrival times in seconds, the first request at ``t = 0`` unless ``start_at_zero=False``.

- :func:`poisson_arrivals`: exponential gaps, mean ``1/rate``.
- :func:`gamma_arrivals`: gamma gaps with shape ``burstiness`` and mean ``1/rate``
  (burstiness 1 is Poisson, < 1 is burstier, > 1 smoother).
- :func:`burst_arrivals`: the authors' burst pattern: a base rate with three Gaussian peaks
  placed by *request index* (0-15 %, 35-50 %, 70-85 % of the sequence), gamma gaps
  (burstiness 0.7) whose mean follows the instantaneous rate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

URGENT, NORMAL = -1, 0            # vLLM's priority convention: lower runs first

# the authors' pattern: (peak rate req/s, window start, window end) as fractions of the sequence
BURST_BASE_RATE = 3.0
BURST_PEAKS: tuple[tuple[float, float, float], ...] = (
    (10.0, 0.00, 0.15),
    (15.0, 0.35, 0.50),
    (17.0, 0.70, 0.85),
)
BURST_BURSTINESS = 0.7


@dataclass
class Request:
    """One request of a workload. ``prompt`` is the text sent; ``prompt_tokens`` its length
    (measured with a tokenizer or estimated)."""
    id: str
    arrival_s: float
    prompt: str
    prompt_tokens: int
    max_tokens: int
    priority: int = NORMAL
    cls: str = "normal"
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _gaps_to_arrivals(gaps: np.ndarray, start_at_zero: bool) -> list[float]:
    t = np.cumsum(gaps)
    if start_at_zero and len(t):
        t = t - t[0]
    return [float(x) for x in t]


def poisson_arrivals(n: int, rate: float, seed: int = 0,
                     start_at_zero: bool = True) -> list[float]:
    """``n`` arrival times of a Poisson process with ``rate`` requests per second."""
    return gamma_arrivals(n, rate, burstiness=1.0, seed=seed, start_at_zero=start_at_zero)


def gamma_arrivals(n: int, rate: float, burstiness: float = 1.0, seed: int = 0,
                   start_at_zero: bool = True) -> list[float]:
    """Gamma-distributed gaps: shape ``burstiness``, mean ``1/rate`` (CV = 1/sqrt(shape))."""
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be > 0")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    return _gaps_to_arrivals(gaps, start_at_zero)


def burst_rate_profile(n: int, base_rate: float = BURST_BASE_RATE,
                       peaks: Sequence[tuple[float, float, float]] = BURST_PEAKS,
                       scale: float = 1.0, peak_scale: float = 1.0) -> np.ndarray:
    """Instantaneous rate (req/s) for each request index of the burst pattern.

    Each peak is a Gaussian bump over the base, centred in its window with sigma = width/4
    (so the window holds +-2 sigma) and height ``peak - base``: the rate reaches ``peak``
    at the centre. ``peak_scale`` multiplies the bumps only; ``scale`` then multiplies
    everything (use it to fit the pattern to a small machine, or overload it).
    """
    if n <= 0:
        return np.zeros(0)
    x = (np.arange(n) + 0.5) / n
    rate = np.full(n, float(base_rate))
    for peak, lo, hi in peaks:
        centre, sigma = (lo + hi) / 2.0, max((hi - lo) / 4.0, 1e-9)
        rate += peak_scale * (peak - base_rate) * np.exp(-0.5 * ((x - centre) / sigma) ** 2)
    rate *= scale
    if np.any(rate <= 0):
        raise ValueError("the burst pattern's rate must stay > 0")
    return rate


def burst_arrivals(n: int, seed: int = 0, base_rate: float = BURST_BASE_RATE,
                   peaks: Sequence[tuple[float, float, float]] = BURST_PEAKS,
                   burstiness: float = BURST_BURSTINESS, scale: float = 1.0,
                   peak_scale: float = 1.0, start_at_zero: bool = True) -> list[float]:
    """The authors' burst pattern: gap ``i`` is gamma(shape=burstiness) with mean
    ``1/rate_i`` from :func:`burst_rate_profile`."""
    if burstiness <= 0:
        raise ValueError("burstiness must be > 0")
    rate = burst_rate_profile(n, base_rate, peaks, scale, peak_scale)
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness))
    return _gaps_to_arrivals(gaps, start_at_zero)


def empirical_rate(arrivals: Sequence[float], lo: float, hi: float) -> float:
    """Observed rate (req/s) over the requests with index fraction in [lo, hi)."""
    n = len(arrivals)
    i, j = int(round(lo * n)), int(round(hi * n)) - 1
    if j <= i:
        raise ValueError("window holds fewer than two requests")
    span = arrivals[j] - arrivals[i]
    return (j - i) / span if span > 0 else float("inf")


def priority_mix(n: int, urgent_share: float, seed: int = 0) -> list[tuple[int, str]]:
    """(priority, class) per request: ``urgent_share`` of them (exactly round(share*n), at
    random positions) are ``(-1, "urgent")``, the rest ``(0, "normal")``."""
    if not 0.0 <= urgent_share <= 1.0:
        raise ValueError("urgent_share must be in [0, 1]")
    k = int(round(urgent_share * n))
    rng = np.random.default_rng(seed)
    urgent = set(rng.choice(n, size=k, replace=False).tolist()) if k else set()
    return [(URGENT, "urgent") if i in urgent else (NORMAL, "normal") for i in range(n)]


def build_requests(arrivals: Sequence[float], samples: Sequence, *,
                   priorities: Sequence[tuple[int, str]] | None = None,
                   max_tokens: int | None = None, id_prefix: str = "req") -> list[Request]:
    """Pair arrival times with dataset samples (objects with ``prompt``, ``prompt_tokens``,
    ``output_tokens`` and optionally ``label``), cycling the samples if there are fewer.

    ``max_tokens`` overrides each sample's output length. The class label is the priority
    class when ``priorities`` is given, else the sample's ``label`` (or "normal").
    """
    if not samples:
        raise ValueError("no samples")
    if priorities is not None and len(priorities) < len(arrivals):
        raise ValueError("fewer priorities than arrivals")
    reqs = []
    for i, t in enumerate(arrivals):
        s = samples[i % len(samples)]
        prio, cls = priorities[i] if priorities is not None else (
            NORMAL, getattr(s, "label", None) or "normal")
        reqs.append(Request(
            id=f"{id_prefix}-{i:05d}", arrival_s=float(t), prompt=s.prompt,
            prompt_tokens=int(s.prompt_tokens),
            max_tokens=int(max_tokens if max_tokens is not None else s.output_tokens),
            priority=int(prio), cls=cls,
            meta={"source": getattr(s, "source", ""), "label": getattr(s, "label", "")}))
    return reqs


def time_scaled(requests: Sequence[Request], factor: float) -> list[Request]:
    """The same requests with arrival times multiplied by ``factor`` (< 1 compresses)."""
    return [replace(r, arrival_s=r.arrival_s * factor) for r in requests]
