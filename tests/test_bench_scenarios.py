"""Pure parts of the benchmark suite: summary and README table from hand-made scenario JSON,
headline ratios, the cold-restart mirror plan, switch reports, workload sizes."""
from __future__ import annotations

import json

import pytest

from bench import report, summary
from bench.cli import _command, problems
from bench.records import Record
from bench.systems import SystemRun, switch_report


def _metrics(ttft_p90: float, tok_s: float, failed: int = 0, urgent: float | None = None,
             ttft_mean: float = 0.2) -> dict:
    a = {"n": 10, "ok": 10 - failed, "failed": failed, "ttft_p50": 0.1, "ttft_p90": ttft_p90,
         "ttft_p99": ttft_p90 * 2, "ttft_mean": ttft_mean, "tpot_mean": 0.0123,
         "itl_p99": 0.05, "e2e_p50": 1.5, "output_tok_s": tok_s, "goodput_req_s": 3.25}
    by_class = {"normal": {**a}}
    if urgent is not None:
        by_class["urgent"] = {**a, "ttft_mean": urgent}
    return {"all": a, "by_class": by_class, "by_priority": {}}


def _entry(ttft_p90, tok_s, switches=0, time_s=0.0, **kw) -> dict:
    return {"status": "ok", "metrics": _metrics(ttft_p90, tok_s, **kw),
            "switches": {"count": switches, "time_s": time_s, "events": [], "timeline": []}}


def _result(name: str, systems: dict) -> dict:
    res = {"scenario": name, "title": report.TITLES[name], "machine": report.machine(),
           "slo": {"ttft_s": 1.0, "tpot_s": 0.05}, "workload": {"description": "hand-made"},
           "systems": systems}
    res["headline"] = report.headline(name, res)
    return res


@pytest.fixture
def results() -> dict:
    burst = _result("burst", {
        "static-dp": _entry(0.5, 1000.0), "static-tp": _entry(4.0, 800.0),
        "flying": _entry(0.8, 950.0, switches=1, time_s=0.004),
        "cold-restart": _entry(30.0, 400.0, switches=1, time_s=61.0, failed=3),
        "vllm-dp": _entry(0.4, 1100.0),
        "vllm-tp": {"status": "not run: did not start:\n  File | x\nmore"}})
    prio = _result("priority", {
        "static-tp": _entry(3.0, 700.0, urgent=0.3, ttft_mean=2.0),
        "flying": _entry(1.0, 900.0, urgent=0.1, ttft_mean=0.5)})
    return {"burst": burst, "priority": prio}


def test_headline_ratios(results):
    h = results["burst"]["headline"]
    assert h["p90_ttft_static_tp_over_flying"] == pytest.approx(5.0)
    assert h["tok_s_flying_over_static_dp"] == pytest.approx(0.95)
    assert h["switches"]["flying"] == 1 and h["switch_time_s"]["cold-restart"] == 61.0
    assert "vllm-tp" not in h["failed"]
    p = results["priority"]["headline"]
    assert p["mean_ttft_all_static_tp_over_flying"] == pytest.approx(4.0)
    assert p["mean_ttft_urgent_static_tp_over_flying"] == pytest.approx(3.0)


def test_low_headline_picks_best_static():
    res = _result("low", {"static-dp": _entry(0.1, 1.0, ttft_mean=0.05),
                          "static-tp": _entry(0.1, 1.0, ttft_mean=0.04),
                          "flying": _entry(0.1, 1.0, ttft_mean=0.042)})
    assert res["headline"]["best_static"] == "static-tp"
    assert res["headline"]["mean_ttft_flying_over_best_static"] == pytest.approx(1.05)


def test_markdown_table_matches_json(results):
    summ = summary.build(results, "flying bench all --quick", 600.0, True)
    summ = json.loads(json.dumps(summ))                       # as stored in summary.json
    md = summary.markdown(summ)
    assert "`flying bench all --quick`" in md and "10.0 min" in md
    tables = summary.parse_markdown_tables(md)
    for name, sc in summ["scenarios"].items():
        table = tables[sc["title"]]
        assert [r["system"] for r in table] == [r["system"] for r in sc["rows"]]
        for md_row, js_row in zip(table, sc["rows"]):
            if "failed" not in js_row:
                assert md_row["failed"] == js_row["status"]
                continue
            for header, key, spec in summary.columns(name):
                assert md_row[header] == report.fmt(js_row.get(key), spec), (name, header)
    burst = {r["system"]: r for r in tables[report.TITLES["burst"]]}
    assert burst["static-tp"]["TTFT p90 ms"] == "4000.0"
    assert burst["cold-restart"]["failed"] == "3"
    assert burst["flying"]["switching ms"] == "4.00"
    assert "**5.00x**" in md
    assert burst["vllm-tp"]["failed"] == "not run: did not start:"


def test_long_rows_and_problems():
    probes = [{"index": 0, "context": 2000, "ok": True, "status": 200, "error": None},
              {"index": 2, "context": 12000, "ok": False, "status": 400,
               "error": "HTTP 400: too long | x", "serves_after": True}]
    e = {**_entry(0.1, 1.0, failed=1), "probes": probes, "longest_served": 2000}
    res = _result("long", {"static-dp": e, "flying": {**e, "longest_served": 8000}})
    assert res["headline"]["longest_flying_over_static_dp"] == pytest.approx(4.0)
    row = report.row("long", "static-dp", e)
    assert row["longest_served"] == 2000 and row["over_limit"].startswith("400: HTTP 400")
    assert "|" not in row["over_limit"]
    assert problems({"long": res}) == []
    crashed = {**e, "probes": [probes[0], {**probes[1], "status": None,
                                           "serves_after": False}]}
    assert problems({"long": _result("long", {"flying": crashed})})


def test_problems_ignore_cold_restart_failures(results):
    assert problems(results) == []
    results["burst"]["systems"]["flying"]["metrics"]["all"]["failed"] = 2
    assert problems(results) == ["burst/flying: 2 failed requests"]


def test_probe_plan_mirrors_flying():
    fly = {"probes": [{"index": 0, "t_send": 0.0, "t_end": 1.0},
                      {"index": 1, "t_send": 2.0, "t_end": 5.0}],
           "switches": {"events": [{"t": 2.6, "s": 0.1, "ok": True, "layout": [2]}],
                        "timeline": [(0.0, "1+1"), (2.6, "2")]}}
    plan = report.probe_plan(fly)
    assert plan[0] == ((1, 1), 0.0)
    assert plan[1][0] == (2,) and plan[1][1] == pytest.approx(0.5)


def test_switch_report_restart_timeline():
    log = [{"t": 110.0, "layout": [1, 1], "ok": True, "s": 40.0, "down_s": 40.0}]
    run = SystemRun("cold-restart", "http://x", "m", (2,), lambda: list(log))
    rep = switch_report(run, 100.0, 200.0)
    assert rep["count"] == 1 and rep["time_s"] == 40.0
    assert rep["timeline"] == [(0.0, "2"), (10.0, "down"), (50.0, "1+1")]
    assert rep["events"][0]["t"] == 10.0 and rep["t_end"] == 100.0


def test_metrics_for_records():
    recs = [Record("a", 0.0, send_s=0.0, first_token_s=0.1, token_times=[0.1, 0.2],
                   end_s=0.2, output_tokens=2, status=200),
            Record("b", 0.0, priority=-1, cls="urgent", send_s=0.0, status=400,
                   error="HTTP 400", end_s=0.01)]
    m = report.metrics_for(recs, report.mx.SLO())
    assert m["all"]["failed"] == 1 and set(m["by_class"]) == {"normal", "urgent"}


def test_command_text():
    assert _command("all", True, ".bench/quick") == "flying bench all --quick --out .bench/quick"
    assert _command("burst", False, ".bench") == "flying bench burst"


def test_long_ladder_brackets_the_limits():
    from bench.workloads_suite import long_ladder
    full = long_ladder(False, 4064, 8128, 8192)
    assert full == sorted(full) and full[1] <= 4064 < full[2] <= full[3] <= 8128 < full[-1]
    quick = long_ladder(True, 4064, 8128, 8192)
    assert quick[0] <= 4064 < quick[1] <= 8128 < quick[-1]


def test_restart_impact_counts_waiting_and_in_flight():
    def rec(i, send, end, ok=True):
        return Record(f"r{i}", send, send_s=send, first_token_s=end - 0.1 if ok else None,
                      end_s=end, output_tokens=2 if ok else 0, status=200,
                      error=None if ok else "stream error UNAVAILABLE")
    recs = [rec(0, 1.0, 2.0), rec(1, 9.0, 11.0, ok=False), rec(2, 12.0, 40.0),
            rec(3, 30.0, 41.0), rec(4, 50.0, 51.0)]
    imp = report.restart_impact(recs, [{"t": 10.0, "down_s": 30.0, "ok": True}])
    assert imp["restarts"] == 1 and imp["down_s"] == 30.0
    assert imp["arrived_while_down"]["n"] == 2 and imp["arrived_while_down"]["ok"] == 2
    assert imp["in_flight_at_stop"] == {"n": 1, "ok": 0, "failed": 1, "ttft_mean_s": None,
                                        "errors": {"stream error UNAVAILABLE": 1}}
    res = _result("burst", {"cold-restart": {**_entry(1.0, 1.0, switches=1, time_s=30.0),
                                             "restart_impact": imp}})
    md = summary.markdown(summary.build({"burst": res}, "c", 1.0, True))
    assert "2 requests arrived meanwhile: 2 waited in the router and were served" in md
    assert "1 in flight at the stop: 0 finished, 1 failed" in md


def test_verify_finds_a_stale_table(results, tmp_path):
    for name, res in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    summ = summary.build(results, "flying bench all", 60.0, False)
    (tmp_path / "summary.json").write_text(json.dumps(summ))
    md = summary.markdown(summ)
    (tmp_path / "summary.md").write_text(md)
    assert summary.verify(tmp_path) == []
    (tmp_path / "summary.md").write_text(md.replace("| 4000.0 |", "| 400.0 |"))
    assert any("TTFT p90 ms" in b for b in summary.verify(tmp_path))
    results["burst"]["systems"]["flying"]["metrics"]["all"]["failed"] = 5
    (tmp_path / "burst.json").write_text(json.dumps(results["burst"]))
    assert any("rows differ" in b for b in summary.verify(tmp_path))


def test_headlines_compare_with_the_best_static_layout_per_metric(results):
    h = results["burst"]["headline"]
    # P90 TTFT: static DP (0.5 s) is the better static layout, not static TP (4.0 s)
    assert h["best_static_p90_ttft"] == "static-dp"
    assert h["p90_ttft_flying_over_best_static"] == pytest.approx(0.8 / 0.5)
    assert h["best_static_tok_s"] == "static-dp"
    assert h["tok_s_flying_over_best_static"] == pytest.approx(0.95)
    md = summary.markdown(json.loads(json.dumps(summary.build(results, "x", 60.0, True))))
    assert "burst P90 TTFT, Flying / best static (static-dp): **1.60x**" in md
    prio = _result("priority", {
        "static-dp": _entry(1.0, 900.0, urgent=0.4, ttft_mean=0.8),
        "static-tp": _entry(3.0, 700.0, urgent=0.15, ttft_mean=2.0),
        "flying": _entry(1.0, 900.0, urgent=0.1, ttft_mean=0.9)})["headline"]
    assert (prio["best_static_mean_ttft_all"], prio["best_static_mean_ttft_urgent"]) == (
        "static-dp", "static-tp")
    assert prio["mean_ttft_all_flying_over_best_static"] == pytest.approx(0.9 / 0.8)
    assert prio["mean_ttft_urgent_flying_over_best_static"] == pytest.approx(0.1 / 0.15)


def test_trace_headlines_compare_p90_ttft_and_goodput_with_the_best_static():
    def entry(p90, goodput):
        e = _entry(p90, 100.0)
        e["metrics"]["all"]["goodput_req_s"] = goodput
        return e
    res = _result("azure", {"static-dp": entry(0.6, 4.0), "static-tp": entry(0.9, 4.5),
                            "flying": entry(0.5, 4.2)})
    h = res["headline"]
    assert (h["best_static_trace_p90_ttft"], h["best_static_goodput"]) == (
        "static-dp", "static-tp")
    assert h["trace_p90_ttft_flying_over_best_static"] == pytest.approx(0.5 / 0.6)
    assert h["goodput_flying_over_best_static"] == pytest.approx(4.2 / 4.5)
    md = summary.markdown(json.loads(json.dumps(summary.build({"azure": res}, "x", 1.0, True))))
    assert "goodput, Flying / best static (static-tp): **0.93x**" in md


def test_azure_workload_keeps_the_trace_times_and_caps_lengths():
    from bench import workloads_suite as ws
    from bench.datasets import TokenCounter
    from bench.sim.traces import azure
    w = ws.azure(True, TokenCounter(None))
    rows = azure("conv")[:len(w.requests)]
    assert len(w.requests) == 100
    assert [r.arrival_s for r in w.requests] == pytest.approx(
        [float(t) * ws.AZURE_TIME_SCALE for t in rows[:, 0]])
    assert all(1 <= r.max_tokens <= ws.AZURE_MAX_OUTPUT for r in w.requests)
    assert [r.max_tokens for r in w.requests] == [int(min(max(g, 1), 128)) for g in rows[:, 2]]
    assert max(r.prompt_tokens for r in w.requests) <= ws.AZURE_MAX_PROMPT + 8
