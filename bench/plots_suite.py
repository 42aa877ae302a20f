"""The long-context figure: TTFT of every probe by its context length, per system, with the
failed ones (and their HTTP status) on the top edge and the testbed's limits marked."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def long_probes(result: dict, path: str | Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.2))
    top = max([p["ttft_s"] or 0.0 for e in result["systems"].values()
               for p in e.get("probes", [])] + [1.0]) * 1.6
    names = [n for n, e in result["systems"].items() if e.get("probes")]
    for k, name in enumerate(names):
        probes = result["systems"][name]["probes"]
        ok = [p for p in probes if p["ok"]]
        dots = ax.scatter([p["context"] for p in ok], [p["ttft_s"] for p in ok], s=28,
                          label=name, zorder=3)
        color = dots.get_facecolor()[0]
        for p in probes:
            if not p["ok"]:
                y = top / (1.25 ** k)
                ax.scatter([p["context"]], [y], marker="x", s=40, color=color, zorder=3)
                ax.annotate(str(p["status"]), (p["context"], y), fontsize=7,
                            xytext=(4, 2), textcoords="offset points", color=color)
    tb = result.get("testbed", {})
    for key, text in (("replica_tokens", "one replica's KV"), ("merged_tokens", "merged KV"),
                      ("max_model_len", "model context")):
        if tb.get(key):
            ax.axvline(tb[key], color="0.5", linestyle=":", linewidth=1)
            ax.annotate(text, (tb[key], 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=7, color="0.4",
                        xytext=(3 if key == "max_model_len" else -9, 0),
                        textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("context of the request (prompt + output tokens)")
    ax.set_ylabel("TTFT (s); x = failed (HTTP status)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    p = Path(path)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def repeat_rounds(res: dict, path: str | Path, title: str = "") -> Path:
    """`flying bench repeat`: every round's target ratio (dots), the median round's (bar) and
    the target (dashed), one panel per scenario; a ratio on the target's good side is green."""
    from bench import repeat  # repeat.py writes this figure (it imports this module)
    scenarios = list(res["scenarios"].items())
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.3 * len(scenarios), 4.2),
                             squeeze=False)
    for ax, (name, sc) in zip(axes[0], scenarios):
        for i, t in enumerate(sc["targets"]):
            op, bound = t["target"].split()
            bound = float(bound)
            vals = [r["ratios"][i] for r in sc["rows"] if r["ratios"][i] is not None]
            good = [repeat.met(v, op, bound) for v in vals]
            ax.scatter([i] * len(vals), vals, s=22, zorder=3,
                       c=["tab:green" if g else "tab:red" for g in good])
            if t["median"] is not None:
                ax.hlines(t["median"], i - 0.25, i + 0.25, color="black", linewidth=2)
            ax.hlines(bound, i - 0.35, i + 0.35, color="0.4", linestyles="dashed")
        ax.set_xticks(range(len(sc["targets"])))
        ax.set_xticklabels([textwrap.fill(t["title"], 16) for t in sc["targets"]], fontsize=6.5)
        ax.set_xlim(-0.6, len(sc["targets"]) - 0.4)
        ax.set_title(f"{name} ({len(sc['rows'])} rounds)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("ratio (dots: rounds; bar: median; dashed: target)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
