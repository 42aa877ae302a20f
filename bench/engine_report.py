"""engine.json -> rows, the README tables (engine.md) and their check (pure: dicts in, text out).

Rows are recomputed from the client JSON that vLLM's benchmark client wrote for each run
(``output_throughput``, ``median_tpot_ms``, ``median_ttft_ms``, ``failed``), so
``flying bench check`` can verify engine.md against engine.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.metrics import ratio
from bench.report import fmt, one_line
from bench.summary import parse_markdown_tables

SERVING = "Serving: vLLM's benchmark client against each server"
OFFLINE = "Offline: the engine alone (1-worker WorkerGroup vs vllm.LLM)"
RATIO = "Flying / best vLLM"
COLUMNS = [("model", "model", "s"), ("concurrency", "concurrency", "d"),
           ("system", "system", "s"), ("out tok/s", "output_tok_s", ".1f"),
           ("TPOT p50 ms", "tpot_p50_ms", ".1f"), ("TTFT p50 ms", "ttft_p50_ms", ".1f"),
           ("failed", "failed", "d"), (RATIO, "ratio", ".2f")]
OFFLINE_COLUMNS = [("model", "model", "s"), ("batch", "batch", "d"), ("engine", "engine", "s"),
                   ("out tok/s", "output_tok_s", ".1f"), (RATIO, "ratio", ".2f")]
ORDER = {"flying": 0, "vllm": 1, "vllm-eager": 2, "tiny": 0, "smollm2": 1}


def run_row(run: dict) -> dict:
    c = run["client"]
    return {"model": run["model"], "concurrency": run["concurrency"], "system": run["system"],
            "output_tok_s": c.get("output_throughput"), "tpot_p50_ms": c.get("median_tpot_ms"),
            "ttft_p50_ms": c.get("median_ttft_ms"), "failed": c.get("failed", 0),
            "completed": c.get("completed")}


def _with_ratios(rows: list[dict], group: tuple[str, str], who: str) -> list[dict]:
    """Flying's rows get Flying / the best vLLM variant of the same group (out tok/s)."""
    for r in rows:
        r["ratio"] = None
        if r[who] == "flying":
            best = max((o["output_tok_s"] or 0.0 for o in rows if o[who] != "flying"
                        and all(o[k] == r[k] for k in group)), default=None)
            r["ratio"] = ratio(r["output_tok_s"], best)
    return sorted(rows, key=lambda r: (ORDER.get(r["model"], 9), r[group[1]],
                                       ORDER.get(r[who], 9)))


def rows(res: dict) -> list[dict]:
    return _with_ratios([run_row(r) for r in res.get("runs", [])], ("model", "concurrency"),
                        "system")


def offline_rows(res: dict) -> list[dict]:
    got = [{k: r[k] for k in ("model", "batch", "engine", "output_tok_s")}
           for r in res.get("offline", [])]
    return _with_ratios(got, ("model", "batch"), "engine")


def _table(cols, data: list[dict]) -> list[str]:
    return ["| " + " | ".join(h for h, _, _ in cols) + " |",
            "|" + "|".join("---" for _ in cols) + "|",
            *("| " + " | ".join(fmt(r.get(k), f) for _, k, f in cols) + " |" for r in data)]


def markdown(res: dict) -> str:
    m, w, cores = res["machine"], res["workload"], res["cores"]
    lines = [f"Measured on {m['label']} ({m['system']}, Python {m['python']}, "
             + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ").", "",
             f"Command: `{res['command']}` ({'quick' if res['quick'] else 'full'} run, "
             f"{res.get('wall_s', 0.0) / 60:.1f} min wall time).", "",
             f"Servers on core {cores['server']} (every process), vLLM's client on core "
             f"{cores['client']}; {res['dtype']}, KV {res['kv_bytes'] / 2**20:.0f} MiB, "
             f"random {w['input_len']}-token prompts, {w['output_len']} output tokens, "
             "ignore_eos, greedy, closed loop at each concurrency.", "",
             f"### {SERVING}", "", *_table(COLUMNS, rows(res)), ""]
    if res.get("offline"):
        lines += [f"### {OFFLINE}", "", *_table(OFFLINE_COLUMNS, offline_rows(res)), ""]
    for r in res.get("refused", []):
        lines.append(f"- refused (load generator fell behind): {r['model']}/{r['system']} "
                     f"concurrency {r['concurrency']}: {r['lag']['refused']}")
    for e in res.get("errors", []):
        lines.append(f"- not run: {e['model']}/{e['system']}: {one_line(e['error'], 200)}")
    return "\n".join(lines).rstrip() + "\n"


def problems(res: dict) -> list[str]:
    """Why the run set is not clean: refused runs, systems that failed, failed requests."""
    out = [f"{r['model']}/{r['system']} c={r['concurrency']}: refused: {r['lag']['refused']}"
           for r in res.get("refused", [])]
    out += [f"{e['model']}/{e['system']}: {one_line(e['error'], 300)}"
            for e in res.get("errors", [])]
    out += [f"{r['model']}/{r['system']} c={r['concurrency']}: {r['failed']} failed requests"
            for r in rows(res) if r["failed"]]
    return out


def verify(out: str | Path) -> list[str]:
    """Mismatches between ``<out>/engine.md`` and ``<out>/engine.json`` (empty: they agree)."""
    out = Path(out)
    if not (out / "engine.md").is_file():
        return [f"{out}/engine.md is missing (engine.json has no table to check against)"]
    res = json.loads((out / "engine.json").read_text())
    tables = parse_markdown_tables((out / "engine.md").read_text())
    bad = []
    for title, cols, data in ((SERVING, COLUMNS, rows(res)),
                              (OFFLINE, OFFLINE_COLUMNS, offline_rows(res))):
        table = tables.get(title, [])
        if len(table) != len(data):
            bad.append(f"engine.md '{title}': {len(table)} rows, {len(data)} in engine.json")
        for md_row, r in zip(table, data):
            for h, k, f in cols:
                if md_row.get(h) != fmt(r.get(k), f):
                    bad.append(f"engine.md {r['model']}/{r.get('system', r.get('engine'))}/"
                               f"{h}: table {md_row.get(h)!r}, JSON {fmt(r.get(k), f)!r}")
    return bad
