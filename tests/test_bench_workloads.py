"""bench.workloads: arrival processes, the burst pattern, priority mixes, requests."""
from __future__ import annotations

import numpy as np
import pytest

from bench import workloads as wl
from bench.datasets import Sample


def test_poisson_deterministic_sorted_and_rate():
    a = wl.poisson_arrivals(2000, rate=5.0, seed=7)
    assert a == wl.poisson_arrivals(2000, rate=5.0, seed=7)
    assert a != wl.poisson_arrivals(2000, rate=5.0, seed=8)
    assert a[0] == 0.0 and all(x <= y for x, y in zip(a, a[1:]))
    assert len(a) / a[-1] == pytest.approx(5.0, rel=0.1)


def test_gamma_burstiness_changes_variability_not_mean():
    def cv(b):
        gaps = np.diff(wl.gamma_arrivals(4000, rate=4.0, burstiness=b, seed=3))
        return gaps.std() / gaps.mean(), gaps.mean()

    cv_bursty, m_bursty = cv(0.25)
    cv_poisson, m_poisson = cv(1.0)
    cv_smooth, m_smooth = cv(4.0)
    assert cv_bursty > cv_poisson > cv_smooth
    assert cv_bursty == pytest.approx(2.0, rel=0.15)        # 1/sqrt(0.25)
    for m in (m_bursty, m_poisson, m_smooth):
        assert m == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError):
        wl.gamma_arrivals(10, rate=0.0)


def test_burst_profile_peaks_at_window_centres():
    rate = wl.burst_rate_profile(1000)
    assert rate.min() == pytest.approx(wl.BURST_BASE_RATE, abs=0.01)
    for peak, lo, hi in wl.BURST_PEAKS:
        i = int((lo + hi) / 2 * 1000)
        assert rate[i] == pytest.approx(peak, rel=0.02)
    assert wl.burst_rate_profile(1000, scale=2.0) == pytest.approx(2 * rate)
    bumped = wl.burst_rate_profile(1000, peak_scale=2.0)
    assert bumped[75] == pytest.approx(3.0 + 2 * (10.0 - 3.0), rel=0.02)
    assert bumped[250] == pytest.approx(3.0, abs=0.1)           # base untouched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_burst_arrivals_peaks_where_they_should_be(seed):
    a = wl.burst_arrivals(2000, seed=seed)
    assert a == wl.burst_arrivals(2000, seed=seed)
    assert all(x <= y for x, y in zip(a, a[1:]))
    base = [wl.empirical_rate(a, lo, hi) for lo, hi in ((0.2, 0.3), (0.55, 0.65), (0.9, 1.0))]
    for b in base:
        assert 1.5 < b < 6.0                                     # ~3 req/s
    # whole peak windows (0-15 %, 35-50 %, 70-85 %): the Gaussian averages ~2.3x the base
    windows = [wl.empirical_rate(a, lo, hi) for _, lo, hi in wl.BURST_PEAKS]
    for w in windows:
        assert w > 1.7 * float(np.mean(base))
    # the windows' centres run near the peak rates (10, 15, 17 req/s)
    for peak, lo, hi in wl.BURST_PEAKS:
        c = (lo + hi) / 2
        assert wl.empirical_rate(a, c - 0.025, c + 0.025) == pytest.approx(peak, rel=0.45)
    assert windows[2] > windows[0]                               # 17 req/s vs 10 req/s


def test_burst_scale_compresses_time():
    a = wl.burst_arrivals(500, seed=4)
    b = wl.burst_arrivals(500, seed=4, scale=4.0)
    assert b[-1] == pytest.approx(a[-1] / 4.0)


def test_priority_mix():
    mix = wl.priority_mix(200, 0.25, seed=1)
    assert mix == wl.priority_mix(200, 0.25, seed=1)
    assert sum(1 for p, _ in mix if p == wl.URGENT) == 50
    assert {c for p, c in mix if p == wl.URGENT} == {"urgent"}
    assert {c for p, c in mix if p == wl.NORMAL} == {"normal"}
    first = [p for p, _ in mix[:100]]
    assert wl.URGENT in first and wl.NORMAL in first              # spread, not blocked
    assert wl.priority_mix(10, 0.0) == [(0, "normal")] * 10


def test_build_requests():
    samples = [Sample("a b", 2, 5, "random", "prefill-heavy"), Sample("c", 1, 7, "random", "")]
    arr = [0.0, 0.5, 1.0]
    reqs = wl.build_requests(arr, samples)
    assert [r.id for r in reqs] == ["req-00000", "req-00001", "req-00002"]
    assert [r.max_tokens for r in reqs] == [5, 7, 5]               # samples cycle
    assert [r.cls for r in reqs] == ["prefill-heavy", "normal", "prefill-heavy"]
    mixed = wl.build_requests(arr, samples, priorities=[(-1, "urgent"), (0, "normal")] * 2,
                              max_tokens=3)
    assert [(r.priority, r.cls, r.max_tokens) for r in mixed][:2] == [(-1, "urgent", 3),
                                                                     (0, "normal", 3)]
    assert mixed[0].to_dict()["arrival_s"] == 0.0
    assert [r.arrival_s for r in wl.time_scaled(reqs, 0.5)] == [0.0, 0.25, 0.5]
