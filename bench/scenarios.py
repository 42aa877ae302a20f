"""The five scenarios, run side by side over every system; one JSON (+ PNGs) per scenario.

Every system replays the same requests through its REST front door (bench/client.py, open
loop). Agent-based systems run first, scenario by scenario, on one shared agent (see
bench/systems.py); Flying runs before cold restart, whose restarts mirror the layout switches
Flying's policy made in the same scenario (same times into the run; for ``long``, the same
offsets from the probe that caused them). Stock vLLM runs last, one server per layout for
every scenario. ``run_all`` writes ``<out>/<scenario>.json`` after every system, so a cut-off
run still leaves what it measured.

Per-request records go to ``<out>/records/<scenario>-<system>.jsonl.gz`` (committed beside
summary.json; ``flying bench check`` recomputes every metric from them). A system whose load
generator fell behind (send-lag p99 over ``FLYING_BENCH_MAX_SEND_LAG_MS``, default 50 ms) is
refused: its entry says ``invalid: ...`` and carries no metrics, and the run exits nonzero.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from bench import box, plots, plots_suite, report
from bench import workloads_suite as ws
from bench.client import MAX_SEND_LAG_S, ClientConfig, run, send_lag_guard
from bench.datasets import TokenCounter
from bench.metrics import SLO
from bench.model_files import extended_model, kv_bytes_per_token, vllm_server
from bench.records import Record, load_jsonl, save_jsonl
from bench.systems import BedConfig, SystemRun, Testbed, switch_report

NAMES = ("burst", "low", "priority", "azure", "long")
BENCH_SLO = SLO(ttft_s=1.0, tpot_s=0.05)
START = {"burst": "tp", "low": "tp", "priority": "tp", "azure": "tp", "long": "dp"}   # Flying's first layout
KV_BYTES, MAX_MODEL_LEN = 16 << 20, 8192
VLLM_LAYOUTS = {"vllm-dp": (1, 2), "vllm-tp": (2, 1)}    # (tp, dp)
START_LEAD_S = 3.0        # arrival 0 this long after replay() is called (process start)
Log = Callable[[str], None]


def replay(run_: SystemRun, reqs, on_start: Callable[[float], None] | None = None
           ) -> tuple[list[Record], float, float]:
    t0 = time.time() + START_LEAD_S          # the load generator's own process starts first
    cfg = ClientConfig(base_url=run_.base_url, model=run_.model, request_timeout_s=900.0,
                       token_logprobs=True, start_at=t0,
                       total_timeout_s=(reqs[-1].arrival_s if reqs else 0.0) + 1200.0)
    if on_start:
        on_start(t0)
    recs = run(reqs, cfg, isolated=True)
    return recs, t0, time.time()


def probe_ladder(run_: SystemRun, reqs, on_send: Callable[[int, float], None] | None = None
                 ) -> tuple[list[Record], list[dict], float, float]:
    """Long context: one request at a time; after the first failure only the last (over the
    model context) is still sent. After every failure a short request checks the system
    still serves (no crash). Record times are relative to the ladder's start."""
    recs: list[Record] = []
    probes: list[dict] = []
    t0 = time.time()
    check = [ws.wl.Request("serves-after", 0.0, "hello there", 2, 4)]
    for i, req in enumerate(reqs):
        if probes and not probes[-1]["ok"] and i < len(reqs) - 1:
            continue
        if on_send:
            on_send(i, time.time())
        (r,), rt0, rt1 = replay(run_, [req])
        shift = rt0 - t0
        for attr in ("send_s", "first_token_s", "end_s"):
            if getattr(r, attr) is not None:
                setattr(r, attr, getattr(r, attr) + shift)
        r.token_times = [t + shift for t in r.token_times]
        r.arrival_s = r.send_s if r.send_s is not None else shift
        recs.append(r)
        p = {"index": i, "context": req.meta["context"], "prompt_tokens": req.prompt_tokens,
             "ok": r.ok, "status": r.status, "error": r.error, "ttft_s": r.ttft,
             "e2e_s": r.e2e, "t_send": shift, "t_end": rt1 - t0}
        if not r.ok:
            p["serves_after"] = replay(run_, check)[0][0].ok
        probes.append(p)
    return recs, probes, t0, time.time()


class Suite:
    def __init__(self, out: str | Path, quick: bool, model: str, log: Log = print,
                 command: str = ""):
        self.out, self.quick, self.log, self.command = Path(out), quick, log, command
        self.out.mkdir(parents=True, exist_ok=True)
        self.model = str(extended_model(model, self.out / "model", MAX_MODEL_LEN))
        self.cfg = BedConfig(self.model, kv_bytes=KV_BYTES, max_model_len=MAX_MODEL_LEN)
        per_tok = kv_bytes_per_token(self.model)
        blocks = KV_BYTES // (per_tok * 32) - 1              # the pool keeps one block back
        self.replica_tokens = blocks * 32
        self.merged_tokens = min(MAX_MODEL_LEN, 2 * blocks * 32)
        self.tc = TokenCounter(self.model)
        self.results: dict[str, dict] = {}
        self.workloads: dict[str, ws.Workload] = {}

    def workload(self, name: str) -> ws.Workload:
        if name not in self.workloads:
            self.workloads[name] = ws.long(self.quick, self.tc, self.replica_tokens,
                                           self.merged_tokens, MAX_MODEL_LEN) \
                if name == "long" else ws.BUILDERS[name](self.quick, self.tc)
        return self.workloads[name]

    def result(self, name: str) -> dict:
        if name not in self.results:
            w = self.workload(name)
            self.results[name] = report.scenario_skeleton(
                name, self.quick, self.command, w.info(), BENCH_SLO,
                {"model": self.model, "workers": self.cfg.workers, "dtype": self.cfg.dtype,
                 "kv_bytes_per_worker": KV_BYTES, "max_model_len": MAX_MODEL_LEN,
                 "replica_tokens": self.replica_tokens, "merged_tokens": self.merged_tokens,
                 "flying_start_layout": START[name]})
        return self.results[name]

    # -------------------------------------------------------------------- one system
    def measure(self, scenario: str, run_: SystemRun, schedule=None) -> None:
        """Replay the scenario on ``run_``; ``schedule(t0)`` starts a cold-restart plan."""
        w, res = self.workload(scenario), self.result(scenario)
        t_wall = time.time()
        self.log(f"[{scenario}] {run_.name}: {len(w.requests)} requests ...")
        entry: dict = {"status": "ok", "start_layout": list(run_.layout)
                       if not isinstance(run_.layout, str) else run_.layout,
                       "loadavg_before": os.getloadavg(), "box_before": box.probe()}
        if scenario == "long":
            recs, probes, t0, t1 = probe_ladder(run_, w.requests, schedule)
            entry["probes"] = probes
            entry["longest_served"] = max((p["context"] for p in probes if p["ok"]), default=0)
        else:
            recs, t0, t1 = replay(run_, w.requests, schedule)
        path = self.out / "records" / f"{scenario}-{run_.name}.jsonl.gz"
        path.parent.mkdir(exist_ok=True)
        save_jsonl(recs, path)
        entry["records"] = str(path.relative_to(self.out))
        entry["switches"] = switch_report(run_, t0, t1)
        entry["max_send_lag_p99_s"] = MAX_SEND_LAG_S
        invalid = send_lag_guard(recs, MAX_SEND_LAG_S)
        if invalid:
            entry["status"] = invalid
        else:
            entry["metrics"] = report.metrics_for(recs, BENCH_SLO)
        if run_.name == "cold-restart":
            entry["restart_impact"] = report.restart_impact(recs, entry["switches"]["events"])
        entry["wall_s"] = time.time() - t_wall
        entry["loadavg_after"] = os.getloadavg()      # the box is shared: note its load
        entry["box_after"] = box.probe()               # and its speed (bench/box.py)
        entry.update(run_.info)
        res["systems"][run_.name] = entry
        a = (entry.get("metrics") or {}).get("all") or {}
        self.log(f"[{scenario}] {run_.name}: {entry['status']} failed={a.get('failed')} "
                 f"ttft_p90={a.get('ttft_p90')} switches={entry['switches']['count']} "
                 f"({entry['wall_s']:.0f} s)")
        self.save(scenario)

    def skip(self, scenario: str, system: str, reason: str) -> None:
        self.result(scenario)["systems"][system] = {"status": f"not run: {reason}"}
        self.log(f"[{scenario}] {system}: not run: {reason}")
        self.save(scenario)

    # ----------------------------------------------------------------- agent systems
    def agent_systems(self, bed: Testbed, scenario: str, cold: bool = True,
                      order: tuple[str, ...] = ("static-dp", "static-tp", "flying")) -> None:
        """Static DP, static TP and Flying (in ``order``), then cold restart if ``cold``."""
        n = self.cfg.workers
        dp, tp = (1,) * n, (n,)
        start = tp if START[scenario] == "tp" else dp

        def flying() -> None:
            run_, close = bed.flying(start)
            try:
                self.measure(scenario, run_)
            finally:
                close()
        runs = {name: (lambda n=name, lo=layout: self.measure(scenario, bed.static(n, lo)))
                for name, layout in (("static-dp", dp), ("static-tp", tp))}
        runs["flying"] = flying
        for name in order:
            self._guard(scenario, name, runs[name])
        if cold:
            self._guard(scenario, "cold-restart", lambda: self._cold(bed, scenario, start))

    def _cold(self, bed: Testbed, scenario: str, start) -> None:
        run_, cr = bed.cold_restart(start)
        fly = self.result(scenario)["systems"].get("flying", {})
        run_.info["mirrors"] = "flying's switches in this scenario"
        if scenario == "long":
            plan = report.probe_plan(fly)

            def schedule(i: int, t: float) -> None:      # called as probe i is sent
                cr.join()
                layout, offset = plan.get(i, (None, 0.0))
                if layout is not None:
                    cr.follow([(t + offset, tuple(layout), "mirror flying: probe "
                                f"{i} served in {report.label(layout)}")])
        else:
            events = [e for e in fly.get("switches", {}).get("events", []) if e.get("ok")]

            def schedule(t0: float) -> None:
                cr.follow([(t0 + e["t"] - e.get("s", 0.0), tuple(e["layout"]),
                            e.get("reason", "")) for e in events])
        try:
            self.measure(scenario, run_, schedule)
        finally:
            cr.join()

    def _guard(self, scenario: str, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken system must not end the suite
            self.skip(scenario, name, f"failed: {type(e).__name__}: {str(e)[:1500]}")

    # ------------------------------------------------------------------------ vllm
    def vllm(self, scenarios, name: str) -> None:
        from bench.vllm_serve import ServerFailed
        tp, dp = VLLM_LAYOUTS[name]
        srv = vllm_server(name, self.cfg, tp, dp, self.out / "logs")
        try:
            srv.start()
            ready = srv.wait_ready(600)
        except (ServerFailed, OSError) as e:
            srv.stop()
            for sc in scenarios:
                self.skip(sc, name, f"vllm serve (tp={tp}, dp={dp}) did not start: "
                          f"{str(e)[-1200:]}")
            return
        try:
            layout = (tp,) if tp > 1 else (1,) * dp
            for sc in scenarios:
                run_ = SystemRun(name, srv.base_url, "tiny", layout,
                                 info={"startup_s": ready,
                                       "max_model_len": srv.cfg.max_model_len})
                self._guard(sc, name, lambda sc=sc, r=run_: self.measure(sc, r))
        finally:
            srv.stop()

    # ----------------------------------------------------------------------- output
    def save(self, scenario: str) -> None:
        res = self.result(scenario)
        res["headline"] = report.headline(scenario, res)
        (self.out / f"{scenario}.json").write_text(json.dumps(res, indent=2, default=str))

    def plot(self, scenario: str) -> None:
        res = self.result(scenario)
        recs, layouts = {}, {}
        for name, e in res["systems"].items():
            if e.get("records") and e.get("metrics"):       # invalid runs are not shown
                recs[name] = load_jsonl(self.out / e["records"])
                if not name.startswith("vllm"):
                    layouts[name] = [tuple(x) for x in e["switches"]["timeline"]]
        if not recs:
            return
        title = f"{scenario} ({res['machine']['label']})"
        res["plots"] = [str(plots.timeline(recs, self.out / f"{scenario}-timeline.png",
                                           layouts=layouts, slo_ttft_s=BENCH_SLO.ttft_s,
                                           title=title).name)]
        if scenario != "long":
            res["plots"].append(str(plots.latency_cdfs(
                recs, self.out / f"{scenario}-cdf.png", log_x=True, title=title).name))
        else:
            res["plots"].append(str(plots_suite.long_probes(
                res, self.out / "long-probes.png", title=title).name))
        self.save(scenario)
