"""Where a decode step's time goes: `python -m bench.profile_step --model tiny`.

Three measurements, each in its own fresh process (one core, fp32, 256-token prompts):

- ``runner``: a Worker built in-process (the code a worker process runs, minus the pipe) steps
  decode batches of 1, 8 and 32; the runner's own perf_counter spans split each step into
  batch arrays, attention metadata, model forward, compute_logits and sampling. The StepCmd's
  pickle round trip is timed here too.
- ``group``: a real 1-worker WorkerGroup serves the same batches; the bench wraps the driver's
  methods (no driver edit) to time schedule, chunks, pipe send (pickling included), the wait
  for the worker, recv (unpickling) and finish_step (token events, detokenizer), and the
  period between two decode steps as the driver sees it.
- ``vllm``: plain ``vllm.LLM`` offline, same prompts: (T(1 + K tokens) - T(1 token)) / K is
  its decode step, engine included: the floor Flying's step is held to.

Writes ``.bench/profile_step-<model>.json`` and prints a table (ms per decode step, median).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from flying_dev.reference import subprocess_env

REPO = Path(__file__).resolve().parent.parent
PROMPT = 256


def _med(xs) -> float:
    return round(statistics.median(xs), 3) if xs else float("nan")


def _prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab - 10) for _ in range(PROMPT)] for _ in range(n)]


def _group_cfg(model: str, eager: bool, batch: int, steps: int):
    from flying_core.config import GroupConfig
    kw = {"enforce_eager": eager} if "enforce_eager" in GroupConfig.__dataclass_fields__ else {}
    tokens = batch * (PROMPT + steps + 64)
    return GroupConfig(model=model, num_workers=1, dtype="float32", max_running=max(batch, 32),
                       kv_bytes=max(64 << 20, tokens * 40 * 1024), max_batch_tokens=512,
                       profile=False, **kw)


# ------------------------------------------------------------------------------ runner


def phase_runner(model: str, batches: list[int], steps: int, eager: bool) -> dict:
    from flying_core import worker as wmod
    from flying_core.commands import SampleParams, SeqChunk, StepCmd
    from flying_core.config import WorkerConfig

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = WorkerConfig(_group_cfg(model, eager, max(batches), steps), 0, port, (0,))
    wmod._pin_threads(cfg)
    t0 = time.perf_counter()
    w = wmod.Worker(cfg)
    out = {"load_s": w.load_s, "warm_s": w.warm_s, "startup_s": time.perf_counter() - t0}
    runner, bs = w.runners[1], cfg.group.block_size
    per_seq = -(-(PROMPT + steps + 8) // bs)
    for batch in batches:
        prompts = _prompts(batch, w.info.vocab_size, batch)
        tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
        last = []
        for i, p in enumerate(prompts):
            r = runner.step((SeqChunk(f"r{i}", tuple(p), 0, tables[i], SampleParams()),))
            last.append(r[0][1])
        rows: dict[str, list[float]] = {}
        for k in range(steps):
            seqs = tuple(SeqChunk(f"r{i}", (last[i],), PROMPT + k, tables[i], SampleParams())
                         for i in range(batch))
            cmd = StepCmd(k, 0, 0, 1, seqs)
            t = time.perf_counter()
            blob = pickle.dumps(cmd, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(blob)
            pk = time.perf_counter() - t
            t = time.perf_counter()
            res = runner.step(seqs)
            total = time.perf_counter() - t
            last = [tok for _, tok, _ in res]
            spans = dict(getattr(runner, "spans", {}))
            spans["other"] = total - sum(spans.values())
            spans.update(total=total, pickle_cmd=pk, cmd_bytes=len(blob) / 1e3)
            for name, v in spans.items():
                rows.setdefault(name, []).append(v * (1 if name == "cmd_bytes" else 1e3))
        out[str(batch)] = {k: _med(v[2:]) for k, v in rows.items()}
    return out


# ------------------------------------------------------------------------------ group


class _Timer:
    """Wraps bound methods of driver-side objects and adds their time to the current step."""

    def __init__(self):
        self.cur: dict[str, float] = {}

    def wrap(self, obj, name: str, key: str | None = None):
        orig = getattr(obj, name)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                k = key or name
                self.cur[k] = self.cur.get(k, 0.0) + time.perf_counter() - t
        setattr(obj, name, timed)


def phase_group(model: str, batches: list[int], steps: int, eager: bool) -> dict:
    from flying_core.group import WorkerGroup
    from tests.groupkit import submit, wait_all

    out = {}
    for batch in batches:
        g = WorkerGroup(_group_cfg(model, eager, batch, steps))
        g.start()
        try:
            out[str(batch)] = _group_batch(g, batch, steps, submit, wait_all)
        finally:
            g.shutdown()
    return out


def _group_batch(g, batch: int, steps: int, submit, wait_all) -> dict:
    d, tm = g.driver, _Timer()
    pending: dict[int, dict] = {}
    rows: list[dict] = []
    last_end = [0.0]
    for sched in d.instances:
        tm.wrap(sched, "schedule")
        tm.wrap(sched, "chunks")
    for conn in d.seq.conns:
        tm.wrap(conn, "send_bytes", "send")
        tm.wrap(conn, "recv", "recv")
    orig_dispatch, orig_finish = d.dispatch, d.finish_step

    def dispatch():
        before, tm.cur = d.seq.ticket, {}
        t = time.perf_counter()
        orig_dispatch()
        if d.seq.ticket != before:
            pending[d.seq.ticket] = dict(tm.cur, dispatch=time.perf_counter() - t,
                                     sent=time.perf_counter())

    def finish_step(sched, reply):
        batch_now = sched.step.batch
        got = time.perf_counter()
        recv = tm.cur.get("recv", 0.0)
        t = time.perf_counter()
        orig_finish(sched, reply)
        end = time.perf_counter()
        rec = pending.pop(reply.ticket, None)
        decode = len(batch_now) == batch and all(n == 1 for _, n in batch_now)
        if rec and decode and last_end[0]:
            rec.update(worker=reply.ms / 1e3, finish=end - t, recv=recv,
                       wait=got - rec["sent"] - recv - reply.ms / 1e3, period=end - last_end[0])
            rec.pop("sent")
            rows.append(rec)
        last_end[0] = end if decode else 0.0
        tm.cur = {}

    d.dispatch, d.finish_step = dispatch, finish_step
    prompts = _prompts(batch, g.info.vocab_size, batch)
    streams = [submit(g, p, max_tokens=steps + 4) for p in prompts]
    wait_all(streams, timeout=1800)
    keys = sorted({k for r in rows for k in r})
    res = {k: _med([r.get(k, 0.0) * 1e3 for r in rows[2:]]) for k in keys}
    res["steps"] = len(rows)
    res["driver_other"] = round(res["period"] - sum(
        res[k] for k in ("dispatch", "wait", "worker", "recv", "finish")), 3)
    return res


# ------------------------------------------------------------------------------ vllm


def phase_vllm(model: str, batches: list[int], steps: int, eager: bool) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=model, dtype="float32", enforce_eager=eager, max_model_len=2048, seed=0,
              kv_cache_memory_bytes=_group_cfg(model, eager, max(batches), steps).kv_bytes)
    out = {"startup_s": time.perf_counter() - t0}
    vocab = llm.get_tokenizer().vocab_size
    for batch in batches:
        prompts = [TokensPrompt(prompt_token_ids=p) for p in _prompts(batch, vocab, batch)]

        def run(n, prompts=prompts):
            sp = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
            t = time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            return time.perf_counter() - t
        t1, tk = min(run(1) for _ in range(2)), min(run(1 + steps) for _ in range(2))
        out[str(batch)] = {"step": round((tk - t1) / steps * 1e3, 3)}
    return out


# ------------------------------------------------------------------------------ parent


PHASES = {"runner": phase_runner, "group": phase_group, "vllm": phase_vllm}


def _child(phase: str, args) -> dict:
    cmd = [sys.executable, "-m", "bench.profile_step", "--phase", phase, "--model", args.model,
           "--steps", str(args.steps), "--batches", *map(str, args.batches)]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    env = subprocess_env()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if phase == "vllm":
        env.pop("VLLM_CPU_OMP_THREADS_BIND")
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    line = next((x for x in reversed(res.stdout.splitlines()) if x.startswith("{")), None)
    if res.returncode or line is None:
        raise RuntimeError(f"{phase} failed:\n{res.stderr[-4000:]}")
    return json.loads(line)


ROWS = [("runner", "batch", "worker: batch arrays"), ("runner", "metadata", "worker: attn metadata"),
        ("runner", "forward", "worker: model forward"), ("runner", "logits", "worker: logits"),
        ("runner", "sample", "worker: sampling"), ("runner", "other", "worker: step rest"),
        ("runner", "total", "worker: runner.step"), ("runner", "pickle_cmd", "StepCmd pickle rt"),
        ("runner", "cmd_bytes", "StepCmd kB"),
        ("group", "schedule", "driver: schedule"), ("group", "chunks", "driver: chunks"),
        ("group", "send", "driver: pipe send"), ("group", "dispatch", "driver: dispatch"),
        ("group", "worker", "worker: step (reply.ms)"),
        ("group", "wait", "pipe + worker loop"), ("group", "recv", "driver: pipe recv"),
        ("group", "finish", "driver: finish+detok"), ("group", "driver_other", "driver: rest"),
        ("group", "period", "STEP PERIOD"), ("vllm", "step", "vLLM offline step")]


def table(res: dict, batches: list[int]) -> str:
    lines = [f"{'ms per decode step':28s}" + "".join(f"{'b=' + str(b):>10s}" for b in batches)]
    for phase, key, label in ROWS:
        vals = [res.get(phase, {}).get(str(b), {}).get(key) for b in batches]
        if any(v is not None for v in vals):
            lines.append(f"{label:28s}" + "".join(
                f"{v:10.2f}" if v is not None else f"{'-':>10s}" for v in vals))
    for b in batches:
        g, r = res.get("group", {}).get(str(b)), res.get("runner", {}).get(str(b))
        if g and r:
            # the model's share of the worker's step, measured in-process, applied to the
            # worker's step time in the group run (one process's numbers, not two)
            model = g["worker"] * (r["forward"] + r["logits"]) / r["total"]
            lines.append(f"b={b}: non-model {g['period'] - model:.2f} ms of {g['period']:.2f} "
                         f"({100 * (1 - model / g['period']):.1f} %)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | a model folder")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=24, help="decode steps measured per batch")
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    ap.add_argument("--enforce-eager", action="store_true", help="Flying and vLLM both eager")
    ap.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = ap.parse_args(argv)
    if args.model in ("tiny", "smollm2"):
        from flying_dev.checkpoints import ensure
        args.model = str(ensure(args.model))
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.model, args.batches, args.steps,
                                            args.enforce_eager)))
        return
    res = {"model": args.model, "enforce_eager": args.enforce_eager, "batches": args.batches,
           "steps": args.steps}
    for phase in args.phases:
        res[phase] = _child(phase, args)
    name = Path(args.model).name + (f"-{args.tag}" if args.tag else "")
    path = REPO / ".bench" / f"profile_step-{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(table(res, args.batches))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
