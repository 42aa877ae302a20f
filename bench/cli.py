"""``flying bench [all|burst|low|priority|azure|long|check|switch|micro|engine|prefix|soak|seeds|
repeat] [--quick] [--out D]``.

``repeat`` (bench/repeat.py: ``--scenarios S,...`` over ``--rounds N`` interleaved rounds of
the same workload, default priority, low, burst, azure x 5; static DP, static TP and Flying in
an order rotated round by round; every target ratio per round, its spread, and the verdict at
the median round) is a separate run.

``seeds`` (bench/seeds.py: the burst scenario over ``--seeds N`` seeds of its pattern, default
5; static DP, static TP and Flying; the spread of the headline ratios) is a separate run.

``soak`` (bench/soak.py: ``--switches N`` random SOFT/HARD switches of a 4-worker group,
default 1000, ``--quick`` 30; tokens checked against plain vLLM; default out
bench/results/soak) and ``overload`` (bench/overload.py: ``--factor`` x capacity for
``--seconds`` or ``--requests`` against a real router + agent, random client cancels) are
separate runs too.

``switch`` (bench/switch.py: switch latency, cold restarts, memory), ``micro``
(bench/micro.py: colocation vs disaggregation vs adaptive micro-requests), ``engine``
(bench/engine.py: Flying vs stock ``vllm serve`` on one core, ``--model tiny|smollm2|both``)
and ``prefix`` (bench/prefix.py: prefix caching on/off vs stock vLLM, cache-aware routing vs
load only; ``--model tiny|smollm2``, default tiny) are separate runs, not part of ``all``.

Runs the scenarios over every system (bench/scenarios.py), then writes ``<out>/summary.json``
and ``<out>/summary.md`` (the README table, with the command that made it) and prints the
tables; ``check`` recomputes every metric and headline from the committed per-request
records (``<out>/records/*.jsonl.gz``) and verifies that the JSON and ``<out>/summary.md``
match them. Exit status 0 when every system ran, kept to its schedule (send-lag guard) and no
request failed (cold restart excepted: its failed requests are the
recorded cost of restarting), 1 otherwise, 2 on a bad argument. ``check`` also verifies
``<out>/engine.md`` against ``engine.json`` when there is one.

Bounded time on the 2-core box: the full suite about 30 minutes (traffic: ~60 s of burst and
of the Azure trace per system; plus one agent start, two stock vLLM starts and the cold
restarts, ~85 s each since the agent compiles its models at start).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

VLLM_TP_ENV = "FLYING_BENCH_VLLM_TP"   # stock vLLM TP=2 too: "1" yes, "0" no; default: full runs


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _on_sigterm() -> None:
    try:
        signal.signal(signal.SIGTERM, _interrupt)      # so every child is stopped on SIGTERM
    except ValueError:                                 # not the main thread
        pass


def _command(scenario: str, quick: bool, out: str) -> str:
    return "flying bench " + scenario + (" --quick" if quick else "") + \
        (f" --out {out}" if out != ".bench" else "")


def problems(results: dict[str, dict]) -> list[str]:
    """Why the run is not clean: failed requests (not cold restart's), systems not run."""
    out = []
    for name, res in results.items():
        for system, e in res["systems"].items():
            status = e.get("status", "")
            if status.startswith(("not run: failed", "invalid")):
                out.append(f"{name}/{system}: {status[:200]}")
            if system == "cold-restart":
                continue
            if name == "long":     # a too-long request must get a clear 4xx, the system live
                for p in e.get("probes", []):
                    if not p["ok"] and (p["status"] is None or p["status"] >= 500
                                        or p.get("serves_after") is False):
                        out.append(f"long/{system}: {p['context']} tokens: {p['status']} "
                                   f"{(p.get('error') or '')[:120]}")
                continue
            failed = ((e.get("metrics") or {}).get("all") or {}).get("failed") or 0
            if failed:
                out.append(f"{name}/{system}: {failed} failed requests")
    return out


def check(out: str) -> list[str]:
    """What in ``<out>``'s markdown tables does not match their JSON (suite and engine)."""
    from bench import engine_report, summary
    if Path(out, "repeat.json").is_file():
        from bench import repeat
        return repeat.verify(out)
    if Path(out, "seeds.json").is_file():
        from bench import seeds
        return seeds.verify(out)
    found = [f for f in ("summary.json", "engine.json") if Path(out, f).is_file()]
    if not found:
        return [f"{out}: neither summary.json, engine.json nor seeds.json"]
    from bench import recheck
    return (recheck.verify(out) + summary.verify(out) if "summary.json" in found else []) + \
        (engine_report.verify(out) if "engine.json" in found else [])


def run_bench(scenario: str = "all", quick: bool = False, out: str = ".bench",
              model: str = "both", switches: int | None = None,
              extra: dict | None = None) -> int:
    from bench import scenarios as sc
    from bench import summary
    from bench.procs import stop_all
    from bench.systems import Testbed
    from flying_dev import checkpoints

    if scenario in ("switch", "micro"):   # the worker-group and micro-request benchmarks
        from bench import micro, switch
        if scenario == "switch":
            switch.run(Path(out) / "switch", quick)
        else:
            micro.run_micro(Path(out) / "micro", quick)
        return 0
    if scenario == "soak":            # random switches on a 4-worker group (bench/soak.py)
        from bench import soak
        _on_sigterm()
        return soak.run(Path(out), switches, quick, log=_log)
    if scenario == "overload":        # factor x capacity on a real router + agent
        from bench import overload
        _on_sigterm()
        return overload.run(Path(out), overload.OverloadConfig(**(extra or {})), log=_log)
    if scenario == "seeds":           # the burst scenario over N seeds of its pattern
        from bench import seeds
        _on_sigterm()
        n = (extra or {}).get("seeds", 5)
        return seeds.run(out, quick, n, _command(scenario, quick, out) + f" --seeds {n}",
                         log=_log)
    if scenario == "repeat":          # interleaved rounds of the same workloads
        from bench import repeat
        _on_sigterm()
        names = (extra or {}).get("scenarios") or ",".join(repeat.DEFAULT)
        n = (extra or {}).get("rounds", 5)
        names_ = names.split(",")
        if any(x not in repeat.TARGETS for x in names_) or n < 1:
            print(f"flying bench repeat: --scenarios from {', '.join(repeat.TARGETS)} (got "
                  f"{names!r}), --rounds 1 or more (got {n})", file=sys.stderr)
            return 2
        return repeat.run(out, quick, names_, n, _command(scenario, quick, out)
                          + f" --scenarios {names} --rounds {n}", log=_log)
    if scenario == "engine":
        from bench.engine import run_engine
        _on_sigterm()
        return run_engine(quick, model, out, _log)
    if scenario == "prefix":
        from bench.prefix import run_prefix
        _on_sigterm()
        return run_prefix(out, quick, "tiny" if model == "both" else model, log=_log)
    if scenario == "check":           # do <out>'s tables match the JSON they came from?
        bad = check(out)
        print("\n".join(bad) or f"{out}: the markdown tables match their JSON")
        return 1 if bad else 0
    names = sc.NAMES if scenario == "all" else (scenario,)
    if any(n not in sc.NAMES for n in names):
        print(f"flying bench: unknown scenario {scenario!r} (choose all, "
              f"{', '.join(sc.NAMES)})", file=sys.stderr)
        return 2
    _on_sigterm()
    t0 = time.time()
    command = _command(scenario, quick, out)
    _log(f"{command}: scenarios {', '.join(names)}; logs in {out}/logs")
    suite = sc.Suite(out, quick, str(checkpoints.ensure("tiny")), _log, command)
    with_tp = os.environ.get(VLLM_TP_ENV, "0" if quick else "1") == "1"
    vllm = ["vllm-dp"] + (["vllm-tp"] if with_tp else [])
    try:
        try:
            with Testbed(suite.cfg, Path(out) / "logs") as bed:
                _log(f"agent ready ({bed.agent_starts[-1]['ready_s']:.0f} s)")
                for name in names:
                    suite.agent_systems(bed, name)
        except Exception as e:  # noqa: BLE001 - the testbed did not start: record it
            for name in names:
                for system in ("static-dp", "static-tp", "flying", "cold-restart"):
                    suite.result(name)["systems"].setdefault(
                        system, {"status": f"not run: failed: testbed: {str(e)[:1500]}"})
        for v in vllm:
            suite.vllm(names, v)
        if "vllm-tp" not in vllm:
            for name in names:
                suite.skip(name, "vllm-tp", f"skipped to keep the run short ({VLLM_TP_ENV}="
                           f"{os.environ.get(VLLM_TP_ENV, '0')}; full runs include it)")
        for name in names:
            suite.plot(name)
    finally:
        stop_all()
    wall = time.time() - t0
    results = {n: suite.result(n) for n in names}
    md = summary.write(out, summary.build(results, command, wall, quick))
    print(md, flush=True)
    bad = problems(results)
    for b in bad:
        _log(f"PROBLEM: {b}")
    _log(f"done in {wall / 60:.1f} min; {out}/summary.md")
    return 1 if bad else 0
