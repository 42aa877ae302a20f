"""`flying sim` end to end: summary.json's schema and the timeline PNG."""
from __future__ import annotations

import json

from flying.cli import main

KEYS = {"ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms", "output_tok_s",
        "goodput_rps", "switches"}


def test_flying_sim_writes_summary_and_timeline(tmp_path):
    rc = main(["sim", "--trace", "burst", "--nodes", "2", "--profile", "cpu-2core-tiny",
               "--systems", "static-dp,flying", "--out", str(tmp_path)])
    assert rc == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert set(s["systems"]) == {"static-dp", "flying"}
    for m in s["systems"].values():
        assert KEYS <= set(m) and m["finished"] == s["requests"] == 480
        assert m["ttft_p50_ms"] <= m["ttft_p90_ms"] <= m["ttft_p99_ms"]
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


def test_flying_sim_refuses_an_unknown_profile_or_system(tmp_path, capsys):
    assert main(["sim", "--profile", "nope", "--out", str(tmp_path)]) == 2
    assert "no profile 'nope'" in capsys.readouterr().err
    assert main(["sim", "--trace", "burst", "--systems", "static-dp,bogus",
                 "--out", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err
