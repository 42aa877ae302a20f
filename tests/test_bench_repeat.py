"""`flying bench repeat`: interleaved rounds in a rotated order, every round's target ratios
with their spread and the verdict at the median round, and `flying bench check` recomputing
repeat.json / repeat.md from the round folders (themselves checked against their records)."""
from __future__ import annotations

import json

import pytest

from bench import repeat
from bench.cli import check
from tests.test_bench_recheck import _recs, _write


def _rounds(tmp_path, flying_ttfts):
    for k, ttft in enumerate(flying_ttfts, start=1):
        d = tmp_path / "burst" / f"round-{k}"
        d.mkdir(parents=True)
        _write(d, {"static-dp": _recs(0.2), "static-tp": _recs(2.0), "flying": _recs(ttft)})
    res = repeat.gather(tmp_path, ["burst"], len(flying_ttfts), "cmd", False)
    res["wall_s"] = 1.0
    (tmp_path / "repeat.json").write_text(json.dumps(res))
    (tmp_path / "repeat.md").write_text(repeat.markdown(res))
    return res


def test_every_system_leads_a_round_and_every_round_runs_all_three():
    orders = [repeat.order(k) for k in (1, 2, 3)]
    assert {o[0] for o in orders} == set(repeat.SYSTEMS)
    assert all(sorted(o) == sorted(repeat.SYSTEMS) for o in orders)
    assert repeat.order(4) == repeat.order(1)


def test_the_verdict_is_the_median_round_not_the_best(tmp_path):
    res = _rounds(tmp_path, [0.18, 0.22, 0.26])     # Flying / best static: 0.9, 1.1, 1.3
    sc = res["scenarios"]["burst"]
    ratios = [r["ratios"][0] for r in sc["rows"]]
    assert ratios[0] < 1.0 < ratios[1] < ratios[2]
    p90 = sc["targets"][0]
    assert (p90["min"], p90["median"], p90["max"]) == tuple(ratios)
    assert p90["rounds_met"] == 1 and p90["met_at_median"] is False   # one lucky round of 3
    over_tp = sc["targets"][1]                                          # static TP / Flying
    assert over_tp["met_at_median"] is True and over_tp["rounds_met"] == 3
    md = repeat.markdown(res)
    assert "| P90 TTFT Flying / best static | <= 1.05 | 1.10 | 1 of 3 | **no** |" in md
    assert "| 2 | tp, flying, dp |" in md


def test_check_recomputes_the_rounds_and_finds_an_edit(tmp_path):
    res = _rounds(tmp_path, [0.18, 0.22])
    assert check(str(tmp_path)) == []
    res["scenarios"]["burst"]["targets"][0]["median"] = 0.5     # a better-looking figure
    (tmp_path / "repeat.json").write_text(json.dumps(res))
    (tmp_path / "repeat.md").write_text(repeat.markdown(res))
    assert any("repeat.json" in b for b in check(str(tmp_path)))
    (tmp_path / "repeat.md").write_text("edited")
    assert any("repeat.md" in b for b in check(str(tmp_path)))


def test_a_round_folder_that_its_records_do_not_give_fails_the_check(tmp_path):
    _rounds(tmp_path, [0.18, 0.22])
    path = tmp_path / "burst" / "round-2" / "burst.json"
    res = json.loads(path.read_text())
    res["systems"]["flying"]["metrics"]["all"]["ttft_p90"] = 0.01
    path.write_text(json.dumps(res))
    assert any(b.startswith("burst/round-2:") for b in check(str(tmp_path)))


def test_the_suite_runs_the_systems_in_the_order_given(tmp_path, monkeypatch):
    from bench import scenarios as sc
    ran = []

    class Bed:        # the testbed's two entry points; measure() is what runs a system
        def static(self, name, layout):
            return name

        def flying(self, start):
            return "flying", lambda: None
    suite = sc.Suite.__new__(sc.Suite)
    suite.cfg = type("Cfg", (), {"workers": 2})()
    monkeypatch.setattr(suite, "measure", lambda scenario, run_: ran.append(run_),
                        raising=False)
    suite.agent_systems(Bed(), "burst", cold=False, order=repeat.order(2))
    assert ran == ["static-tp", "flying", "static-dp"]


@pytest.mark.parametrize("extra", [{"scenarios": "burst,long"}, {"rounds": 0}])
def test_a_bad_argument_is_refused_before_anything_starts(extra, capsys):
    from bench.cli import run_bench
    assert run_bench("repeat", out="/nonexistent/never-written", extra=extra) == 2
    assert "--rounds 1 or more" in capsys.readouterr().err


def test_the_rounds_are_plotted_against_their_targets(tmp_path):
    from bench import plots_suite
    res = _rounds(tmp_path, [0.18, 0.22, 0.26])
    png = plots_suite.repeat_rounds(res, tmp_path / "repeat.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
