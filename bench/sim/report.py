"""Summaries and the timeline plot of simulated runs (the bench's metric names)."""
from __future__ import annotations

import numpy as np

from bench.sim.cluster import Cluster

SLO_TTFT_S, SLO_TPOT_S = 1.0, 0.05     # the bench's goodput SLO (bench/results summary.md)
MARKS = 200                            # switches a timeline marks one by one


def summarize(c: Cluster, weight: int = 1) -> dict:
    """The run's figures; with a node weight M (`flying sim --node-weight`) the cluster's:
    tokens/s, goodput and switches M times the simulated nodes', the rest per request."""
    done = [r for r in c.done if r.t_first >= 0]
    ttft = np.array([r.t_first - r.arrival for r in done]) * 1e3
    tpot = np.array([(r.t_done - r.t_first) / (r.output - 1) for r in done if r.output > 1])
    good = sum(1 for r in done if r.t_first - r.arrival <= SLO_TTFT_S and (
        r.output <= 1 or (r.t_done - r.t_first) / (r.output - 1) <= SLO_TPOT_S))
    t0 = min((r.arrival for r in done), default=0.0)
    span = max((r.t_done for r in done), default=0.0) - t0
    return {
        "requests": c.n, "finished": len(done), "failed": len(c.failed),
        "unfinished": c.n - len(done) - len(c.failed),
        "ttft_p50_ms": pct(ttft, 50), "ttft_p90_ms": pct(ttft, 90), "ttft_p99_ms": pct(ttft, 99),
        "tpot_p50_ms": pct(tpot * 1e3, 50),
        "output_tok_s": weight * sum(r.output for r in done) / span if span > 0 else 0.0,
        "goodput_rps": weight * good / span if span > 0 else 0.0,
        "switches": weight * len(c.switch_events),
        "switch_s_total": weight * float(sum(e[4] for e in c.switch_events)),
        "sim_span_s": span,
    }


def pct(a, q) -> float:
    return float(np.percentile(a, q)) if len(a) else 0.0


def plot_timeline(runs: dict[str, Cluster], rows: np.ndarray, path, title: str,
                  weight: int = 1) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    step = next(iter(runs.values())).cfg.timeline_s if runs else 1.0
    if len(rows):
        bins = np.arange(0, rows[-1, 0] + step, step)
        h, _ = np.histogram(rows[:, 0], bins)
        a1.plot(bins[:-1], weight * h / step, color="grey")
    a1.set_ylabel("arrivals / s")
    a1.set_title(title)
    many = any(len(c.switch_events) > MARKS for c in runs.values())
    a3 = a2.twinx() if many else None
    for name, c in runs.items():
        b = sorted(c.tokens_by_bucket)
        line, = a2.plot([x * step for x in b],
                        [weight * c.tokens_by_bucket[x] / step for x in b],
                        label=f"{name} ({weight * len(c.switch_events)} switches)", lw=1)
        if a3 is None:
            for e in c.switch_events:
                a2.axvline(e[0], color=line.get_color(), alpha=0.15, lw=0.5)
        elif c.switch_events:            # too many to mark one by one: switches a minute
            t = np.array([e[0] for e in c.switch_events])
            h, edges = np.histogram(t, np.arange(0, t.max() + 60.0, 60.0))
            a3.step(edges[:-1], weight * h, where="post", color=line.get_color(), alpha=0.5,
                    lw=0.8, ls="--")
    if a3 is not None:
        a3.set_ylabel("switches / min (dashed)")
    a2.set_ylabel("output tokens / s (finished)")
    a2.set_xlabel("time (s)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
