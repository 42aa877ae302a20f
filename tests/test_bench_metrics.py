"""bench.metrics / bench.records / bench.plots on hand-made records."""
from __future__ import annotations

import json

import pytest

from bench import metrics as m
from bench import plots
from bench.records import Record, load_jsonl, save_jsonl


def rec(i, send, ttft, n_tok, gap, cls="normal", prio=0, status=200, error=None):
    """A request sent at ``send``: first token after ``ttft``, then ``n_tok - 1`` tokens
    ``gap`` apart, ending at the last token."""
    r = Record(id=f"r{i}", arrival_s=send, priority=prio, cls=cls, send_s=send,
               status=status, error=error)
    if error is None:
        r.token_times = [send + ttft + k * gap for k in range(n_tok)]
        r.first_token_s = r.token_times[0]
        r.end_s = r.token_times[-1]
        r.output_tokens = n_tok
    else:
        r.end_s = send + 0.01
    return r


@pytest.fixture
def records():
    return [
        rec(0, 0.0, 0.1, 11, 0.01),                          # tpot 0.01, e2e 0.2
        rec(1, 1.0, 0.2, 11, 0.02),                          # tpot 0.02, e2e 0.4
        rec(2, 2.0, 0.3, 6, 0.05, cls="urgent", prio=-1),    # tpot 0.05, e2e 0.55
        rec(3, 3.0, 2.0, 1, 0.0, cls="urgent", prio=-1),     # one token: no tpot, e2e 2.0
        rec(4, 4.0, 0, 0, 0, status=429, error="HTTP 429: busy"),
    ]


def test_record_properties(records):
    r = records[1]
    assert r.ok and r.ttft == pytest.approx(0.2) and r.e2e == pytest.approx(0.4)
    assert r.tpot == pytest.approx(0.02)
    assert r.itls == pytest.approx([0.02] * 10)
    assert r.send_lag == 0.0
    assert records[3].tpot is None and records[3].itls == []
    assert not records[4].ok and records[4].ttft is None


def test_summary_numbers(records):
    s = m.summarize(records, m.SLO(ttft_s=0.25, tpot_s=0.03))
    assert (s.n, s.ok, s.failed) == (5, 4, 1)
    assert s.duration_s == pytest.approx(5.0)                 # first send .. last end
    assert s.ttft_p50 == pytest.approx(0.25)                   # median of .1 .2 .3 2.0
    assert s.ttft_p90 == pytest.approx(0.3 + 0.7 * 1.7)
    assert s.ttft_mean == pytest.approx(2.6 / 4)
    assert s.tpot_mean == pytest.approx((0.01 + 0.02 + 0.05) / 3)
    assert s.tpot_p50 == pytest.approx(0.02)
    assert s.e2e_p50 == pytest.approx((0.4 + 0.55) / 2)
    itl = sorted([0.01] * 10 + [0.02] * 10 + [0.05] * 5)
    assert s.itl_p50 == pytest.approx(0.02)
    assert s.itl_p99 == pytest.approx(m.percentile(itl, 99))
    assert s.output_tokens == 11 + 11 + 6 + 1
    assert s.output_tok_s == pytest.approx(29 / 5.0)
    assert s.slo_met == 2                                      # r0, r1 (r2: ttft .3 > .25)
    assert s.slo_attainment == pytest.approx(2 / 5)
    assert s.goodput_req_s == pytest.approx(2 / 5.0)
    assert s.errors == {"429": 1}
    json.dumps(s.to_dict(), allow_nan=False)


def test_single_token_meets_slo_on_ttft():
    r = rec(0, 0.0, 0.1, 1, 0.0)
    assert m.SLO(ttft_s=0.2, tpot_s=0.001).met(r)
    assert not m.SLO(ttft_s=0.05).met(r)


def test_by_class_and_report(records):
    groups = m.by_class(records, "cls")
    assert set(groups) == {"normal", "urgent"}
    assert groups["urgent"].n == 2 and groups["normal"].failed == 1
    assert groups["urgent"].duration_s == pytest.approx(5.0)   # the run's span, shared
    tot = m.summarize(records).output_tok_s
    assert sum(g.output_tok_s for g in groups.values()) == pytest.approx(tot)
    prio = m.by_class(records, "priority")
    assert set(prio) == {"-1", "0"}
    rep = m.report({"flying": records, "vllm-dp": records[:2]})
    text = m.dumps(rep)
    assert json.loads(text)["vllm-dp"]["all"]["n"] == 2
    assert set(rep["flying"]["by_priority"]) == {"-1", "0"}
    tab = m.table(rep)
    assert "flying" in tab and "ttft_p99_ms" in tab


def test_empty_and_all_failed():
    s = m.summarize([])
    assert s.n == 0 and s.ttft_p50 is None and s.output_tok_s is None
    bad = [rec(0, 0.0, 0, 0, 0, status=None, error="ConnectError: refused")]
    s = m.summarize(bad)
    assert s.failed == 1 and s.goodput_req_s == 0.0 and s.errors == {"ConnectError: refused": 1}
    json.dumps(s.to_dict(), allow_nan=False)
    assert m.ratio(2.0, 0.0) is None and m.ratio(3.0, 1.5) == 2.0


def test_jsonl_roundtrip(records, tmp_path):
    p = tmp_path / "r.jsonl"
    save_jsonl(records, p)
    back = load_jsonl(p)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]


def test_plots_write_pngs(records, tmp_path):
    other = [rec(i, r.send_s, 0.05, 5, 0.01) for i, r in enumerate(records)]
    systems = {"flying": records, "vllm-tp": other}
    layouts = [(0.0, "DP=4"), (1.5, "TP=4"), (3.2, (2, 2)), (3.9, "DP=4")]
    p1 = plots.timeline(systems, tmp_path / "out" / "timeline.png", layouts=layouts,
                        bin_s=0.5, slo_ttft_s=0.25, title="burst")
    p2 = plots.latency_cdfs(systems, tmp_path / "cdf.png", metrics=("ttft", "tpot", "itl"))
    p3 = plots.timeline({"flying": records}, tmp_path / "t2.png")      # no layout row
    for p in (p1, p2, p3):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert plots.layout_label((2, 1, 1)) == "2+1+1"
    x, rate = plots.arrival_rate([0.0, 0.1, 0.2, 1.5], bin_s=1.0)
    assert list(rate[:2]) == [3.0, 1.0]
