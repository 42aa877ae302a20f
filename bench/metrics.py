"""Latency / throughput summaries of a run's records, per system and per priority class.

Latency percentiles are over successful requests; ITL percentiles pool every gap between
streamed token chunks. Rates (output tokens/s, goodput) divide by the run's span: from the
first send to the last end, unless a duration is given. Empty figures are ``None`` so that
every summary is plain-JSON serialisable.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bench.records import Record


@dataclass
class SLO:
    ttft_s: float = 1.0
    tpot_s: float = 0.1

    def met(self, r: Record) -> bool:
        """Successful, TTFT within bound and TPOT within bound (a single-token answer has no
        TPOT and is judged on its TTFT)."""
        if not r.ok or r.ttft is None or r.ttft > self.ttft_s:
            return False
        return r.tpot is None or r.tpot <= self.tpot_s


@dataclass
class Summary:
    n: int
    ok: int
    failed: int
    duration_s: float | None
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    ttft_mean: float | None
    tpot_mean: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    itl_p50: float | None
    itl_p99: float | None
    e2e_p50: float | None
    e2e_p99: float | None
    output_tokens: int
    output_tok_s: float | None
    request_rate: float | None           # completed requests per second
    slo_ttft_s: float
    slo_tpot_s: float
    slo_met: int
    slo_attainment: float | None         # share of all requests meeting the SLO
    goodput_req_s: float | None          # requests meeting the SLO per second
    send_lag_p99: float | None           # load-generator lateness
    errors: dict

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.percentile(vals, q)) if vals else None


def mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def span(records: Sequence[Record]) -> float | None:
    """From the first send to the last end."""
    starts = [r.send_s for r in records if r.send_s is not None]
    ends = [r.end_s for r in records if r.end_s is not None]
    if not starts or not ends:
        return None
    d = max(ends) - min(starts)
    return d if d > 0 else None


def _rate(count: float, duration: float | None) -> float | None:
    return count / duration if duration else None


def _error_kinds(records: Iterable[Record]) -> dict:
    out: dict[str, int] = {}
    for r in records:
        if not r.ok:
            key = str(r.status) if r.status not in (None, 200) else (r.error or "?")[:60]
            out[key] = out.get(key, 0) + 1
    return out


def summarize(records: Sequence[Record], slo: SLO | None = None,
              duration_s: float | None = None) -> Summary:
    slo = slo or SLO()
    good = [r for r in records if r.ok]
    dur = duration_s if duration_s is not None else span(records)
    ttft = [r.ttft for r in good]
    tpot = [r.tpot for r in good]
    e2e = [r.e2e for r in good]
    itl = [g for r in good for g in r.itls]
    out_tok = sum(r.output_tokens for r in good)
    met = sum(1 for r in records if slo.met(r))
    return Summary(
        n=len(records), ok=len(good), failed=len(records) - len(good), duration_s=dur,
        ttft_p50=percentile(ttft, 50), ttft_p90=percentile(ttft, 90),
        ttft_p99=percentile(ttft, 99), ttft_mean=mean(ttft),
        tpot_mean=mean(tpot), tpot_p50=percentile(tpot, 50), tpot_p99=percentile(tpot, 99),
        itl_p50=percentile(itl, 50), itl_p99=percentile(itl, 99),
        e2e_p50=percentile(e2e, 50), e2e_p99=percentile(e2e, 99),
        output_tokens=out_tok, output_tok_s=_rate(out_tok, dur),
        request_rate=_rate(len(good), dur),
        slo_ttft_s=slo.ttft_s, slo_tpot_s=slo.tpot_s, slo_met=met,
        slo_attainment=met / len(records) if records else None,
        goodput_req_s=_rate(met, dur),
        send_lag_p99=percentile([r.send_lag for r in records], 99),
        errors=_error_kinds(records))


def by_class(records: Sequence[Record], key: Callable[[Record], str] | str = "cls",
             slo: SLO | None = None, duration_s: float | None = None) -> dict[str, Summary]:
    """One summary per group (``key`` an attribute name or a function). Rates use the whole
    run's span, so the groups' throughputs add up to the total."""
    get = (lambda r: str(getattr(r, key))) if isinstance(key, str) else key
    dur = duration_s if duration_s is not None else span(records)
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(get(r), []).append(r)
    return {k: summarize(v, slo, dur) for k, v in sorted(groups.items())}


def report(systems: Mapping[str, Sequence[Record]], slo: SLO | None = None) -> dict:
    """``{system: {"all": summary, "by_class": {...}, "by_priority": {...}}}`` as plain
    dicts, ready for ``json.dump``."""
    out = {}
    for name, recs in systems.items():
        out[name] = {
            "all": summarize(recs, slo).to_dict(),
            "by_class": {k: s.to_dict() for k, s in by_class(recs, "cls", slo).items()},
            "by_priority": {k: s.to_dict()
                            for k, s in by_class(recs, "priority", slo).items()},
        }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0 (for "x times better" tables)."""
    return a / b if a is not None and b else None


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)


def table(systems_report: Mapping[str, dict], fields: Sequence[str] = (
        "n", "failed", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_mean", "itl_p99",
        "e2e_p99", "output_tok_s", "goodput_req_s")) -> str:
    """A plain-text table of each system's overall summary (seconds shown as ms)."""
    def fmt(f: str, v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float) and f.split("_")[0] in ("ttft", "tpot", "itl", "e2e"):
            return f"{v * 1e3:.1f}"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    head = ["system"] + [f + ("_ms" if f.split("_")[0] in ("ttft", "tpot", "itl", "e2e")
                              else "") for f in fields]
    rows = [[name] + [fmt(f, rep["all"].get(f)) for f in fields]
            for name, rep in systems_report.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(x).rjust(w) for x, w in zip(row, widths))
                     for row in [head, *rows])
