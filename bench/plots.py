"""Figures (matplotlib, Agg backend): a run timeline and latency CDFs per system."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.records import Record  # noqa: E402

Layout = Any                       # "DP=4", "TP=2x2", (2, 2), [1, 1, 1, 1], ...
Events = Sequence[tuple[float, Layout]]

CDF_METRICS = {
    "ttft": ("TTFT (s)", lambda rs: [r.ttft for r in rs if r.ok]),
    "tpot": ("TPOT (s)", lambda rs: [r.tpot for r in rs if r.ok]),
    "itl": ("inter-token latency (s)", lambda rs: [g for r in rs if r.ok for g in r.itls]),
    "e2e": ("end-to-end latency (s)", lambda rs: [r.e2e for r in rs if r.ok]),
}


def layout_label(layout: Layout) -> str:
    """``(2, 1, 1)`` -> ``"2+1+1"``; strings pass through."""
    if isinstance(layout, str):
        return layout
    if isinstance(layout, Sequence):
        return "+".join(str(x) for x in layout)
    return str(layout)


def arrival_rate(arrivals: Sequence[float], bin_s: float = 1.0,
                 t_end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bin starts, requests per second in each bin)."""
    if not len(arrivals):
        return np.zeros(0), np.zeros(0)
    end = max(t_end or 0.0, max(arrivals)) + bin_s
    edges = np.arange(0.0, end + bin_s / 2, bin_s)
    counts, edges = np.histogram(np.asarray(arrivals), bins=edges)
    return edges[:-1], counts / bin_s


def _layout_axis(ax, layouts: Mapping[str, Events], t_end: float) -> None:
    labels: list[str] = []
    for events in layouts.values():
        for _, lay in events:
            if layout_label(lay) not in labels:
                labels.append(layout_label(lay))
    level = {lab: i for i, lab in enumerate(labels)}
    for name, events in layouts.items():
        ev = sorted(events, key=lambda e: e[0])
        if not ev:
            continue
        ts = [t for t, _ in ev] + [max(t_end, ev[-1][0])]
        ys = [level[layout_label(lay)] for _, lay in ev]
        ax.step(ts, ys + ys[-1:], where="post", label=name)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylabel("layout")
    if len(layouts) > 1:
        ax.legend(loc="upper right", fontsize="small")


def timeline(systems: Mapping[str, Sequence[Record]], path: str | Path, *,
             layouts: Events | Mapping[str, Events] | None = None, bin_s: float = 1.0,
             slo_ttft_s: float | None = None, title: str = "") -> Path:
    """Arrival rate (top), TTFT per request by send time (middle; failed requests as
    crosses on the top edge), and the layout over time (bottom, when ``layouts`` is given:
    one ``[(t, layout), ...]`` list, or one per system/node)."""
    if layouts is not None and not isinstance(layouts, Mapping):
        layouts = {"node": layouts}
    rows = 3 if layouts else 2
    fig, axes = plt.subplots(rows, 1, sharex=True, figsize=(10, 2.4 * rows + 0.6),
                             height_ratios=[1, 1.6, 0.9][:rows])
    all_recs = [r for recs in systems.values() for r in recs]
    t_end = max([r.end_s or r.arrival_s for r in all_recs] + [0.0])
    first = next(iter(systems.values()), [])
    x, rate = arrival_rate([r.arrival_s for r in first], bin_s, t_end)
    axes[0].bar(x, rate, width=bin_s, align="edge", color="0.6")
    axes[0].set_ylabel(f"arrivals (req/s, {bin_s:g} s bins)")
    ax = axes[1]
    ttft_max = max([r.ttft for r in all_recs if r.ok and r.ttft is not None] + [1e-3])
    for name, recs in systems.items():
        ok = [r for r in recs if r.ok and r.ttft is not None]
        line = ax.scatter([r.send_s for r in ok], [r.ttft for r in ok], s=6, label=name)
        bad = [r for r in recs if not r.ok]
        if bad:
            ax.scatter([r.send_s if r.send_s is not None else r.arrival_s for r in bad],
                       [ttft_max * 1.05] * len(bad), marker="x", s=14,
                       color=line.get_facecolor()[0], label=f"{name} failed")
    if slo_ttft_s is not None:
        ax.axhline(slo_ttft_s, color="red", linestyle="--", linewidth=0.8, label="SLO")
    ax.set_ylabel("TTFT (s)")
    ax.legend(loc="upper right", fontsize="small")
    if layouts:
        _layout_axis(axes[2], layouts, t_end)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def latency_cdfs(systems: Mapping[str, Sequence[Record]], path: str | Path, *,
                 metrics: Sequence[str] = ("ttft", "tpot", "e2e"), log_x: bool = False,
                 title: str = "") -> Path:
    """One panel per metric, one empirical CDF per system (successful requests)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        label, get = CDF_METRICS[m]
        for name, recs in systems.items():
            vals = np.sort([v for v in get(recs) if v is not None])
            if len(vals):
                ax.step(vals, np.arange(1, len(vals) + 1) / len(vals), where="post",
                        label=name)
        ax.set_xlabel(label)
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("log")
    axes[0][0].set_ylabel("CDF")
    axes[0][0].legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
