"""`flying bench seeds`: per-seed headline ratios, their spread, and `flying bench check`
recomputing seeds.json / seeds.md from the seed folders (themselves checked against records)."""
from __future__ import annotations

import json

from bench import seeds
from bench.cli import check
from tests.test_bench_recheck import _recs, _write


def _seeds(tmp_path, flying_ttfts):
    for k, ttft in enumerate(flying_ttfts, start=1):
        d = tmp_path / f"seed-{k}"
        d.mkdir()
        _write(d, {"static-dp": _recs(0.2), "static-tp": _recs(0.6), "flying": _recs(ttft)})
    res = seeds.gather(tmp_path, list(range(1, len(flying_ttfts) + 1)), "cmd", True)
    res["wall_s"] = 1.0
    (tmp_path / "seeds.json").write_text(json.dumps(res))
    (tmp_path / "seeds.md").write_text(seeds.markdown(res))
    return res


def test_every_seed_is_reported_with_the_spread_not_only_the_best(tmp_path):
    res = _seeds(tmp_path, [0.1, 0.3, 0.4])
    ratios = [r["p90_ttft_flying_over_best_static"] for r in res["seeds"]]
    assert len(ratios) == 3 and ratios[0] < 1.0 < ratios[1] < ratios[2]
    sp = res["spread"]["p90_ttft_flying_over_best_static"]
    assert (sp["min"], sp["median"], sp["max"]) == (ratios[0], ratios[1], ratios[2])
    assert all(r["best_static"] == "static-dp" for r in res["seeds"])
    md = seeds.markdown(res)
    assert md.count("\n| ") == 3 + 3 + 1 and "| median |" in md


def test_check_recomputes_the_seeds_and_finds_an_edit(tmp_path):
    res = _seeds(tmp_path, [0.1, 0.3])
    assert check(str(tmp_path)) == []
    res["seeds"][1]["p90_ttft_flying_over_best_static"] = 0.5     # a better-looking figure
    (tmp_path / "seeds.json").write_text(json.dumps(res))
    assert any("seeds.json" in b for b in check(str(tmp_path)))
    (tmp_path / "seeds.md").write_text(seeds.markdown(res))
    assert any("seeds.json" in b for b in check(str(tmp_path)))


def test_a_seed_folder_that_its_records_do_not_give_fails_the_check(tmp_path):
    _seeds(tmp_path, [0.1, 0.3])
    burst = tmp_path / "seed-2" / "burst.json"
    res = json.loads(burst.read_text())
    res["systems"]["flying"]["metrics"]["all"]["ttft_p90"] = 0.01
    burst.write_text(json.dumps(res))
    assert any(b.startswith("seed-2:") for b in check(str(tmp_path)))
