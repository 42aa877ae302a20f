"""summary.json and summary.md from the scenario JSON files (pure: dicts in, text out).

The markdown is generated from the same rows that summary.json stores, so the README table
can be checked against the JSON it came from (:func:`parse_markdown_tables`).
"""
from __future__ import annotations

import json
from pathlib import Path

from bench import report

HEADLINE_TEXT = {
    "p90_ttft_flying_over_best_static": "burst P90 TTFT, Flying / best static ({})",
    "p90_ttft_static_tp_over_flying": "burst P90 TTFT, static TP / Flying",
    "tok_s_flying_over_best_static": "output tokens/s, Flying / best static ({})",
    "tok_s_flying_over_static_dp": "output tokens/s, Flying / static DP",
    "mean_ttft_flying_over_best_static": "mean TTFT, Flying / best static ({})",
    "mean_ttft_all_flying_over_best_static": "mean TTFT of all requests, Flying / best static "
                                             "({})",
    "mean_ttft_urgent_flying_over_best_static": "mean TTFT of urgent requests, Flying / best "
                                                "static ({})",
    "mean_ttft_all_static_tp_over_flying": "mean TTFT of all requests, static TP / Flying",
    "mean_ttft_urgent_static_tp_over_flying": "mean TTFT of urgent requests, static TP / Flying",
    "trace_p90_ttft_flying_over_best_static": "trace P90 TTFT, Flying / best static ({})",
    "goodput_flying_over_best_static": "goodput, Flying / best static ({})",
    "longest_flying_over_static_dp": "longest request served, Flying / static DP",
}


def columns(scenario: str) -> list[tuple[str, str, str]]:
    return report.COLUMNS + report.EXTRA.get(scenario, [])


def build(results: dict[str, dict], command: str, wall_s: float, quick: bool) -> dict:
    """``results``: scenario name -> that scenario's JSON (as written by bench.scenarios)."""
    first = next(iter(results.values()), {})
    return {"command": command, "quick": quick, "wall_s": wall_s,
            "machine": first.get("machine") or report.machine(),
            "slo": first.get("slo"),
            "scenarios": {name: {"title": res.get("title", name),
                                 "workload": (res.get("workload") or {}).get("description"),
                                 "json": f"{name}.json", "rows": report.rows(name, res),
                                 "headline": res.get("headline") or {},
                                 **({"box": b} if (b := _box(res)) else {})}
                          for name, res in results.items()}}


def _box(res: dict) -> dict:
    """system -> [box probe before, after] (bench/box.py, Python part, ms) where recorded."""
    return {name: [e["box_before"]["python_ms"], (e.get("box_after") or {}).get("python_ms")]
            for name, e in res.get("systems", {}).items() if e.get("box_before")}


def write(out: str | Path, summ: dict) -> str:
    """Write ``<out>/summary.json`` and ``<out>/summary.md``; returns the markdown."""
    Path(out, "summary.json").write_text(json.dumps(summ, indent=2, default=str))
    md = markdown(summ)
    Path(out, "summary.md").write_text(md)
    return md


def _headline_lines(h: dict) -> list[str]:
    out = []
    for key, text in HEADLINE_TEXT.items():
        if key in h:
            v = h[key]
            best = h.get("best_static_" + key.split("_flying_over_best_static")[0])
            text = text.format(best or "-")
            out.append(f"- {text}: " + (f"**{v:.2f}x**" if isinstance(v, float) else
                                         f"**{v if v is not None else '-'}**"))
    if "longest_served" in h:
        out.append("- longest request served (prompt + output tokens): " + ", ".join(
            f"{s} {v if v is not None else '-'}" for s, v in h["longest_served"].items()))
    cold = h.get("cold_restart")
    if cold:
        a, f = cold["arrived_while_down"], cold["in_flight_at_stop"]
        wait = f", mean TTFT {a['ttft_mean_s']:.1f} s" if a.get("ttft_mean_s") else ""
        out.append(f"- cold restart: {cold['restarts']} restart(s), agent down "
                   f"{cold['down_s']:.1f} s; {a['n']} requests arrived meanwhile: {a['ok']} "
                   f"waited in the router and were served{wait}, {a['failed']} failed; "
                   f"{f['n']} in flight at the stop: {f['ok']} finished, {f['failed']} failed")
    return out


def table(scenario: str, rows: list[dict]) -> list[str]:
    cols = columns(scenario)
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if "failed" not in r:
            lines.append(f"| {r['system']} | {r.get('status', 'not run')} |"
                         + " |" * (len(cols) - 2))
            continue
        lines.append("| " + " | ".join(report.fmt(r.get(k), f) for _, k, f in cols) + " |")
    return lines


def markdown(summary: dict) -> str:
    m, slo = summary["machine"], summary.get("slo") or {}
    lines = [f"Measured on {m['label']} ({m['system']}, Python {m['python']}, "
             + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ").",
             "", f"Command: `{summary['command']}` "
             f"({'quick' if summary['quick'] else 'full'} run, "
             f"{summary['wall_s'] / 60:.1f} min wall time).", ""]
    if slo:
        lines += [f"Goodput counts requests with TTFT <= {slo['ttft_s'] * 1e3:.0f} ms and "
                  f"TPOT <= {slo['tpot_s'] * 1e3:.0f} ms. Times are absolute for this "
                  "machine; compare systems by their ratios.", ""]
    for name, sc in summary["scenarios"].items():
        lines += [f"### {sc['title']}", ""]
        if sc.get("workload"):
            lines += [f"Workload: {sc['workload']} (`{sc['json']}`).", ""]
        hl = _headline_lines(sc.get("headline") or {})
        if hl:
            lines += hl + [""]
        lines += table(name, sc["rows"]) + [""]
        if sc.get("box"):
            lines += ["Box speed before → after each system (`bench/box.py`, ms of a fixed "
                      "Python loop; the box is a shared VM whose speed drifts): " + ", ".join(
                          f"{k} {a} → {b if b is not None else '-'}"
                          for k, (a, b) in sc["box"].items()) + ".", ""]
    return "\n".join(lines)


def parse_markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The tables of :func:`markdown` back as {section title: [{header: cell}]}."""
    out: dict[str, list[dict[str, str]]] = {}
    title, head = None, None
    for ln in text.splitlines():
        if ln.startswith("### "):
            title, head = ln[4:], None
        elif ln.startswith("|") and title is not None:
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if head is None:
                head = cells
            elif set(ln.replace("|", "")) != {"-"}:
                out.setdefault(title, []).append(dict(zip(head, cells)))
        elif not ln.startswith("|"):
            head = None if not ln.strip() else head
    return out


def verify(out: str | Path) -> list[str]:
    """Mismatches between ``<out>/summary.md``, ``<out>/summary.json`` and the scenario JSON
    files they were built from (empty: the README table matches its JSON)."""
    out = Path(out)
    summ = json.loads((out / "summary.json").read_text())
    tables = parse_markdown_tables((out / "summary.md").read_text())
    bad = []
    for name, sc in summ["scenarios"].items():
        res = json.loads((out / sc["json"]).read_text())
        fresh = json.loads(json.dumps(report.rows(name, res), default=str))
        if fresh != sc["rows"]:
            bad.append(f"{name}: summary.json rows differ from {sc['json']}")
        table = tables.get(sc["title"], [])
        if len(table) != len(sc["rows"]):
            bad.append(f"{name}: {len(table)} table rows, {len(sc['rows'])} in the JSON")
        for md_row, js in zip(table, sc["rows"]):
            cells = {h: report.fmt(js.get(k), f) for h, k, f in columns(name)} \
                if "failed" in js else {"system": js["system"], "failed": js["status"]}
            for h, v in cells.items():
                if md_row.get(h) != v:
                    bad.append(f"{name}/{js['system']}/{h}: table {md_row.get(h)!r}, JSON {v!r}")
    return bad
