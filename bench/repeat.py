"""``flying bench repeat [--scenarios S,...] [--rounds N] [--quick] [--out D]``: the policy
targets over interleaved rounds of the same workload.

On this 2-core box two runs of the same layout on the same requests differ by 15-40 % (the
box's speed drifts over minutes), so one run of each system cannot settle a 5 % target. Here
one agent serves N rounds of each scenario; every round replays the scenario's workload
(the suite's seed) on static DP, static TP and Flying, the order rotated round by round
(round 1 DP, TP, Flying; round 2 TP, Flying, DP; ...) so that neither the box's drift nor
a warm cache favours one system. Each round is a suite output of its own,
``D/<scenario>/round-k/`` (the scenario JSON, per-request records, summary.json /
summary.md: ``flying bench check --out`` that folder); ``D/repeat.json`` / ``D/repeat.md``
give every round's target ratios, their spread (min, median, max) and in how many rounds
each target was met; ``D/repeat.png`` plots them. The verdict is the median round's ratio: one lucky or unlucky round
settles nothing. ``flying bench check --out D`` recomputes both files from the round
folders (whose JSON it checks against their records).
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench import metrics as mx
from bench import plots_suite, report, summary

SYSTEMS = ("static-dp", "static-tp", "flying")
STATICS = report.STATICS
DEFAULT = ("priority", "low", "burst", "azure")


def _metric(res: dict, system: str, key: str, cls: str | None = None) -> float | None:
    """One system's figure in a round (a class's: its mean TTFT, the only one a target asks)."""
    if cls:
        assert key == "ttft_mean", key
        return report.class_mean(res, system, cls)
    return report.all_metrics(res, system).get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    r = mx.ratio(a, b)
    return None if r is None else round(r, 4)


def _vs_best(key: str, lower: bool, cls: str | None = None) -> Callable[[dict], float | None]:
    def get(res: dict) -> float | None:
        vals = [v for s in STATICS if (v := _metric(res, s, key, cls)) is not None]
        return _ratio(_metric(res, "flying", key, cls), (min if lower else max)(vals)) \
            if vals else None
    return get


def _a_over_b(a: str, b: str, key: str, cls: str | None = None
              ) -> Callable[[dict], float | None]:
    return lambda res: _ratio(_metric(res, a, key, cls), _metric(res, b, key, cls))


# scenario -> (the metric shown per system (key, class, title), [(target title, ratio, op,
# bound)]): the targets on this box, each a ratio of one round's figures
TARGETS: dict[str, tuple[tuple[str, str | None, str], list[tuple]]] = {
    "burst": (("ttft_p90", None, "P90 TTFT"), [
        ("P90 TTFT Flying / best static", _vs_best("ttft_p90", True), "<=", 1.05),
        ("P90 TTFT static TP / Flying", _a_over_b("static-tp", "flying", "ttft_p90"), ">=",
         4.79),
        ("tok/s Flying / static DP", _a_over_b("flying", "static-dp", "output_tok_s"), ">=",
         0.97)]),
    "low": (("ttft_mean", None, "mean TTFT"), [
        ("mean TTFT Flying / best static", _vs_best("ttft_mean", True), "<=", 1.05)]),
    "priority": (("ttft_mean", None, "mean TTFT"), [
        ("all mean TTFT Flying / best static", _vs_best("ttft_mean", True), "<=", 1.05),
        ("urgent mean TTFT Flying / static TP",
         _a_over_b("flying", "static-tp", "ttft_mean", "urgent"), "<=", 1.0),
        ("tok/s Flying / static DP", _a_over_b("flying", "static-dp", "output_tok_s"), ">=",
         0.97)]),
    "azure": (("ttft_p90", None, "P90 TTFT"), [
        ("P90 TTFT Flying / best static", _vs_best("ttft_p90", True), "<=", 1.0),
        ("goodput Flying / best static", _vs_best("goodput_req_s", False), ">=", 1.0),
        ("tok/s Flying / static DP", _a_over_b("flying", "static-dp", "output_tok_s"), ">=",
         0.97)]),
}


def order(k: int) -> tuple[str, ...]:
    """Round k's system order: the three rotated by k - 1."""
    i = (k - 1) % len(SYSTEMS)
    return SYSTEMS[i:] + SYSTEMS[:i]


def met(v: float | None, op: str, bound: float) -> bool | None:
    """Whether ratio `v` meets the target `op bound` (None: no ratio)."""
    return None if v is None else (v <= bound if op == "<=" else v >= bound)


def gather(out: Path, scenarios: list[str], rounds: int, command: str, quick: bool) -> dict:
    """repeat.json's content from the round folders' scenario JSON."""
    res: dict = {"command": command, "quick": quick, "rounds": rounds, "scenarios": {}}
    for name in scenarios:
        (key, cls, _), targets = TARGETS[name]
        rows = []
        for k in range(1, rounds + 1):
            sc = json.loads((out / name / f"round-{k}" / f"{name}.json").read_text())
            ms = {s: _metric(sc, s, key, cls) for s in SYSTEMS}
            rows.append({"round": k, "order": list(order(k)),
                         "ms": {s: None if v is None else round(v * 1e3, 1)
                                for s, v in ms.items()},
                         "switches": ((sc.get("headline") or {}).get("switches") or {})
                         .get("flying"),
                         "ratios": [t[1](sc) for t in targets]})
        verdicts = []
        for i, (title, _, op, bound) in enumerate(targets):
            vals = [r["ratios"][i] for r in rows if r["ratios"][i] is not None]
            med = statistics.median(vals) if vals else None
            verdicts.append({"target": f"{op} {bound}", "title": title,
                             "min": min(vals, default=None), "median": med,
                             "max": max(vals, default=None),
                             "rounds_met": sum(bool(met(v, op, bound)) for v in vals),
                             "met_at_median": met(med, op, bound)})
        res["scenarios"][name] = {"rows": rows, "targets": verdicts}
    return res


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    lines = [f"Command: `{res['command']}`", ""]
    for name, sc in res["scenarios"].items():
        (_, _, shown), targets = TARGETS[name]
        head = ["round", "order", *(f"{shown} {s} ms" for s in SYSTEMS),
                *(t[0] for t in targets), "Flying switches"]
        lines += [f"**{name}** ({res['rounds']} rounds)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sc["rows"]:
            lines.append("| " + " | ".join(
                [str(r["round"]), ", ".join(s.replace("static-", "") for s in r["order"]),
                 *(_fmt(r["ms"][s], ".1f") for s in SYSTEMS),
                 *(_fmt(v, ".2f") for v in r["ratios"]), _fmt(r["switches"], "d")]) + " |")
        for stat in ("min", "median", "max"):
            lines.append("| " + " | ".join(
                [stat, "", "", "", "", *(_fmt(t[stat], ".2f") for t in sc["targets"]), ""])
                + " |")
        lines += ["", "| target | bound | median | rounds met | met at the median |",
                  "|---|---|---|---|---|"]
        for t in sc["targets"]:
            met = {True: "yes", False: "**no**", None: "-"}[t["met_at_median"]]
            lines.append(f"| {t['title']} | {t['target']} | {_fmt(t['median'], '.2f')} | "
                         f"{t['rounds_met']} of {res['rounds']} | {met} |")
        lines.append("")
    return "\n".join(lines)


def verify(out: str | Path) -> list[str]:
    """What in ``<out>``/repeat.json and repeat.md the round folders do not give."""
    from bench import recheck
    out = Path(out)
    stored = json.loads((out / "repeat.json").read_text())
    bad: list[str] = []
    for name in stored["scenarios"]:
        for k in range(1, stored["rounds"] + 1):
            d = out / name / f"round-{k}"
            bad += [f"{name}/round-{k}: {b}" for b in recheck.verify(d) + summary.verify(d)]
    fresh = gather(out, list(stored["scenarios"]), stored["rounds"], stored["command"],
                   stored["quick"])
    if json.loads(json.dumps(fresh)) != {k: v for k, v in stored.items() if k != "wall_s"}:
        bad.append("repeat.json: differs from what the round folders give")
    if (out / "repeat.md").read_text() != markdown(stored):
        bad.append("repeat.md: differs from repeat.json")
    return bad


def run(out: str | Path, quick: bool, scenarios: list[str], rounds: int, command: str,
        log=print) -> int:
    from bench import scenarios as sc
    from bench.cli import problems
    from bench.procs import stop_all
    from bench.systems import Testbed
    from flying_dev import checkpoints

    out, t0 = Path(out), time.time()
    model = str(checkpoints.ensure("tiny"))
    suites = {(name, k): sc.Suite(out / name / f"round-{k}", quick, model, log,
                                  f"{command} ({name}, round {k})")
              for name in scenarios for k in range(1, rounds + 1)}
    try:
        with Testbed(next(iter(suites.values())).cfg, out / "logs") as bed:
            for (name, k), suite in suites.items():
                t = time.time()
                log(f"[{name}] round {k} of {rounds}: {', '.join(order(k))}")
                suite.agent_systems(bed, name, cold=False, order=order(k))
                summary.write(suite.out, summary.build({name: suite.result(name)},
                                                       suite.command, time.time() - t, quick))
                suite.plot(name)
    finally:
        stop_all()
    res = gather(out, scenarios, rounds, command, quick)
    res["wall_s"] = time.time() - t0
    (out / "repeat.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (out / "repeat.md").write_text(md)
    plots_suite.repeat_rounds(res, out / "repeat.png", f"flying bench repeat ({out.name})")
    print(md, flush=True)
    bad = [b for (name, _), s in suites.items() for b in problems({name: s.result(name)})]
    for b in bad:
        log(f"PROBLEM: {b}")
    return 1 if bad else 0
