"""`flying bench check`, first half: recompute every figure from the committed records.

For each scenario JSON named in ``<out>/summary.json``, every system entry that names its
per-request records (``records/<scenario>-<system>.jsonl.gz``) is recomputed from them: the
send-lag verdict (``bench.client.send_lag_guard``), every metric (``report.metrics_for``
under the scenario's SLO), the long scenario's probe outcomes and longest request served;
then the scenario's headline ratios (``report.headline``) and the summary.json copy of them.
`bench.summary.verify` then checks summary.json's rows and the README table against the
scenario JSON, so a README figure that does not follow from the records fails the check.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench import report
from bench.client import send_lag_guard
from bench.metrics import SLO
from bench.records import load_jsonl


def _same(a, b, rel: float = 1e-9) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return a == b


def _diff(where: str, stored, fresh) -> list[str]:
    if isinstance(stored, dict) and isinstance(fresh, dict):
        out = []
        for k in sorted(set(stored) | set(fresh)):
            out += _diff(f"{where}.{k}", stored.get(k), fresh.get(k))
        return out
    return [] if _same(stored, fresh) else [f"{where}: stored {stored!r}, records give {fresh!r}"]


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


def check_scenario(out: Path, name: str, res: dict) -> list[str]:
    """Mismatches between one scenario JSON and the records it names."""
    bad: list[str] = []
    slo = SLO(**res["slo"]) if res.get("slo") else SLO()
    fresh_res = {**res, "systems": {k: dict(v) for k, v in res["systems"].items()}}
    for system, e in res["systems"].items():
        if not e.get("records"):
            if e.get("metrics"):
                bad.append(f"{name}/{system}: metrics without records")
            continue
        path = out / e["records"]
        if not path.is_file():
            bad.append(f"{name}/{system}: records {e['records']} missing")
            continue
        recs = load_jsonl(path)
        limit = e.get("max_send_lag_p99_s")
        verdict = send_lag_guard(recs, limit) if limit is not None else None
        if verdict and e.get("metrics"):
            bad.append(f"{name}/{system}: reported although {verdict}")
        if not verdict and not e.get("metrics") and str(e.get("status", "")).startswith(
                "invalid"):
            bad.append(f"{name}/{system}: marked invalid, but the records keep to schedule")
        if e.get("metrics"):
            fresh = _plain(report.metrics_for(recs, slo))
            bad += _diff(f"{name}/{system}/metrics", e["metrics"], fresh)
            fresh_res["systems"][system]["metrics"] = fresh
        if e.get("probes") is not None:
            oks = [p["ok"] for p in e["probes"]]
            if oks != [r.ok for r in recs]:
                bad.append(f"{name}/{system}: probe outcomes differ from the records")
            longest = max((p["context"] for p, r in zip(e["probes"], recs) if r.ok), default=0)
            if e.get("longest_served") != longest:
                bad.append(f"{name}/{system}: longest_served {e.get('longest_served')}, "
                           f"records give {longest}")
    bad += _diff(f"{name}/headline", res.get("headline"),
                 _plain(report.headline(name, fresh_res)))
    return bad


def verify(out: str | Path) -> list[str]:
    """Everything in ``<out>``'s scenario JSON and summary.json that its records do not give."""
    out = Path(out)
    summ = json.loads((out / "summary.json").read_text())
    bad: list[str] = []
    for name, sc in summ["scenarios"].items():
        res = json.loads((out / sc["json"]).read_text())
        bad += check_scenario(out, name, res)
        bad += _diff(f"{name}/summary.json headline", sc.get("headline"), res.get("headline"))
    return bad
