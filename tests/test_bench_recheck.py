"""`flying bench check` recomputes every figure from the committed (gzipped) records, the
send-lag guard refuses a run whose load generator fell behind, ITL counts tokens."""
from __future__ import annotations

import gzip
import json

import pytest

from bench import report, summary
from bench.cli import check, problems
from bench.client import send_lag_guard
from bench.metrics import SLO
from bench.records import Record, load_jsonl, save_jsonl

SLO_ = SLO(ttft_s=1.0, tpot_s=0.05)


def _recs(ttft: float, n: int = 20, lag: float = 0.001) -> list[Record]:
    out = []
    for i in range(n):
        send = i * 0.1 + lag
        times = [send + ttft + 0.02 * k for k in range(5)]
        out.append(Record(id=str(i), arrival_s=i * 0.1, send_s=send, first_token_s=times[0],
                          token_times=times, chunk_tokens=[1] * 5, end_s=times[-1] + 0.001,
                          output_tokens=5, usage_reported=True, status=200))
    return out


def _write(out, systems: dict[str, list[Record]]) -> None:
    (out / "records").mkdir()
    res = report.scenario_skeleton("burst", True, "x", {"description": "t"}, SLO_, {})
    for name, recs in systems.items():
        path = out / "records" / f"burst-{name}.jsonl.gz"
        save_jsonl(recs, path)
        res["systems"][name] = {
            "status": "ok", "records": str(path.relative_to(out)), "max_send_lag_p99_s": 0.05,
            "metrics": report.metrics_for(recs, SLO_),
            "switches": {"count": 0, "time_s": 0.0, "events": [], "timeline": []}}
    res["headline"] = report.headline("burst", res)
    (out / "burst.json").write_text(json.dumps(res, default=str))
    summ = json.loads(json.dumps(summary.build({"burst": res}, "x", 60.0, True), default=str))
    (out / "summary.json").write_text(json.dumps(summ))
    (out / "summary.md").write_text(summary.markdown(summ))


@pytest.fixture
def out(tmp_path):
    _write(tmp_path, {"static-dp": _recs(0.2), "static-tp": _recs(0.6), "flying": _recs(0.3)})
    return tmp_path


def test_records_are_gzipped_and_round_trip(out):
    path = out / "records" / "burst-flying.jsonl.gz"
    with gzip.open(path, "rt") as f:
        assert json.loads(f.readline())["id"] == "0"
    assert load_jsonl(path)[3].token_times == _recs(0.3)[3].token_times


def test_check_recomputes_from_the_records(out):
    assert check(str(out)) == []


def test_a_changed_record_fails_the_check(out):
    path = out / "records" / "burst-flying.jsonl.gz"
    recs = load_jsonl(path)
    for r in recs[:5]:
        r.first_token_s += 5.0                        # five slow requests more
    save_jsonl(recs, path)
    bad = check(str(out))
    assert any("burst/flying/metrics.all.ttft_p90" in b for b in bad)
    assert any("burst/headline.p90_ttft_flying_over_best_static" in b for b in bad)


def test_a_readme_figure_that_does_not_follow_fails(out):
    res = json.loads((out / "burst.json").read_text())
    res["systems"]["flying"]["metrics"]["all"]["ttft_p90"] = 0.1      # edited by hand
    (out / "burst.json").write_text(json.dumps(res))
    assert any("ttft_p90" in b for b in check(str(out)))
    (out / "records" / "burst-static-dp.jsonl.gz").unlink()
    assert any("records records/burst-static-dp.jsonl.gz missing" in b for b in check(str(out)))


def test_send_lag_guard_refuses_a_late_load_generator(tmp_path):
    assert send_lag_guard(_recs(0.2, lag=0.001), 0.05) is None
    late = _recs(0.2, lag=0.2)
    verdict = send_lag_guard(late, 0.05)
    assert verdict.startswith("invalid:") and "p99 200 ms > 50 ms" in verdict
    # a run reported although its records say it lagged fails the check
    _write(tmp_path, {"static-dp": _recs(0.2), "flying": late})
    assert any("reported although invalid" in b for b in check(str(tmp_path)))
    # an invalid entry is a problem for the run's exit status
    res = {"burst": {"systems": {"flying": {"status": verdict}}}}
    assert problems(res) == [f"burst/flying: {verdict[:200]}"]


def test_itl_and_tpot_count_tokens_not_chunks():
    # 3 chunks: 1 token at 1.0, then 4 tokens at 1.4, then 2 tokens at 1.6 (7 tokens)
    r = Record(id="a", arrival_s=0.0, send_s=0.0, first_token_s=1.0,
               token_times=[1.0, 1.4, 1.6], chunk_tokens=[1, 4, 2], end_s=1.6,
               output_tokens=7, usage_reported=True, status=200)
    assert r.itls == pytest.approx([0.1] * 6)
    assert r.tpot == pytest.approx(0.6 / 6)
    # counts unknown: the usage total is spread over the chunks after the first
    r.chunk_tokens = []
    assert r.chunk_sizes() == [1, 3, 3] and len(r.itls) == 6
    assert r.itls == pytest.approx([0.4 / 3] * 3 + [0.2 / 3] * 3)
