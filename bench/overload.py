"""Overload: ``--factor`` x the node's capacity against a real router + agent.

Capacity is the agent's queue (``--max-queue``, running + waiting requests). The client
keeps ``factor * capacity`` streaming completions in flight (``POST /v1/completions`` on the
router) for ``--seconds`` or until ``--requests`` have been sent; a random share is cancelled
by the client after its first chunk. Asserted and recorded: every accepted request (HTTP 200)
completes with a finish reason or is cancelled by its client (none lost); every refusal is a
429 with Retry-After; the agent serves afterwards; the router's and agent's RSS (the agent
with its workers) and the KV blocks in use return to their baseline. Writes
``<out>/overload.json``.

    flying bench overload [--seconds 60] [--factor 10] [--requests N] [--quick]
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

RSS_SLACK = 1.25            # RSS afterwards within 25 % (+ 64 MiB) of the baseline
RSS_SLACK_BYTES = 64 << 20


@dataclass(frozen=True)
class OverloadConfig:
    seconds: float = 60.0
    factor: float = 10.0
    requests: int | None = None      # stop after this many requests instead of seconds
    max_queue: int = 16              # the agent's capacity (running + waiting)
    cancel_share: float = 0.2
    max_tokens: int = 32
    seed: int = 0


def rss(pid: int, children: bool = True) -> int:
    import psutil
    p = psutil.Process(pid)
    procs = [p] + (p.children(recursive=True) if children else [])
    return sum(x.memory_info().rss for x in procs if x.is_running())


def rss_ok(before: int, after: int) -> bool:
    return after <= before * RSS_SLACK + RSS_SLACK_BYTES


def lost(outcomes: Counter) -> int:
    """Accepted requests that neither completed nor were cancelled by their client."""
    return outcomes["accepted_broken"]


def _finish_reason(data: str) -> str | None:
    if not data or data == "[DONE]":
        return None
    try:
        choices = json.loads(data).get("choices") or []
    except ValueError:
        return None
    return choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None


async def _one(client: httpx.AsyncClient, url: str, cfg: OverloadConfig, rng: random.Random,
               out: Counter, bad: list) -> None:
    body = {"prompt": "the quick brown fox " * rng.randint(1, 8), "temperature": 0,
            "max_tokens": rng.randint(1, cfg.max_tokens), "stream": True, "ignore_eos": True,
            "priority": rng.randint(0, 3)}
    cancel = rng.random() < cfg.cancel_share
    accepted = False
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code == 429:
                out["refused_429"] += 1
                if "retry-after" not in r.headers:
                    out["refused_without_retry_after"] += 1
                return
            if r.status_code != 200:
                out[f"http_{r.status_code}"] += 1
                bad.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                return
            out["accepted"] += 1
            accepted = True
            finished = False
            async for line in r.aiter_lines():
                if cancel and line.startswith("data:"):
                    out["cancelled_by_client"] += 1
                    return                            # closing the stream cancels it
                if line.startswith("data:") and _finish_reason(line[5:].strip()):
                    finished = True
            if finished:
                out["completed"] += 1
            else:
                out["accepted_broken"] += 1
                bad.append("an accepted stream ended without a finish reason")
    except httpx.HTTPError as e:      # accepted then broken: lost; before a status: unanswered
        out["accepted_broken" if accepted else "client_error"] += 1
        bad.append(f"{'accepted, then ' if accepted else 'before a status: '}"
                   f"{type(e).__name__}: {str(e)[:200]}")


async def drive(url: str, cfg: OverloadConfig) -> tuple[Counter, list, float]:
    rng = random.Random(cfg.seed)
    out: Counter = Counter()
    bad: list[str] = []
    inflight = max(1, int(cfg.factor * cfg.max_queue))
    limits = httpx.Limits(max_connections=inflight + 8, max_keepalive_connections=inflight)
    t0 = time.monotonic()
    sent = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(180.0), limits=limits) as client:
        tasks: set[asyncio.Task] = set()
        while True:
            over = (sent >= cfg.requests) if cfg.requests else (
                time.monotonic() - t0 >= cfg.seconds)
            if over:
                break
            while len(tasks) < inflight and not (cfg.requests and sent >= cfg.requests):
                tasks.add(asyncio.create_task(_one(client, url, cfg, rng, out, bad)))
                sent += 1
            done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks:
            await asyncio.wait(tasks)
    out["sent"] = sent
    return out, bad, time.monotonic() - t0


def _kv_used(bed) -> int:
    return sum(i.kv_blocks_used for i in bed.status().instances)


def _settle(bed, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and _kv_used(bed):
        time.sleep(0.5)


def run(out_dir: Path, cfg: OverloadConfig, log=print) -> int:
    from bench.procs import stop_all
    from bench.systems import BedConfig, Testbed
    from flying_dev import checkpoints
    out_dir.mkdir(parents=True, exist_ok=True)
    bed_cfg = BedConfig(model=str(checkpoints.ensure("tiny")), max_model_len=2048,
                        agent_flags=("--max-queue", str(cfg.max_queue)))
    t0 = time.time()
    res: dict = {"config": asdict(cfg)}
    try:
        with Testbed(bed_cfg, out_dir / "logs") as bed:
            log(f"overload: agent + router up ({time.time() - t0:.0f} s); "
                f"{cfg.factor:g}x capacity {cfg.max_queue}")
            base = {"router": rss(bed.router.proc.pid), "agent": rss(bed.agent.proc.pid),
                    "kv_blocks": _kv_used(bed)}
            outcomes, bad, run_s = asyncio.run(drive(bed.router_url, cfg))
            _settle(bed)
            after = {"router": rss(bed.router.proc.pid), "agent": rss(bed.agent.proc.pid),
                     "kv_blocks": _kv_used(bed)}
            probe, probe_bad, _ = asyncio.run(drive(bed.router_url, OverloadConfig(
                requests=1, factor=1, max_queue=1, cancel_share=0.0, seed=cfg.seed + 1)))
            serving = probe["completed"] == 1
            res.update(outcomes=dict(outcomes), problems=bad[:20], run_s=run_s,
                       rss_before=base, rss_after=after, serving_after=serving)
    finally:
        stop_all()
    o = Counter(res.get("outcomes", {}))
    b, a = res.get("rss_before", {}), res.get("rss_after", {})
    checks = {"no_accepted_lost": "outcomes" in res and lost(o) == 0 and not o["client_error"]
              and all(not k.startswith("http_") for k in o),
              "refusals_have_retry_after": o["refused_without_retry_after"] == 0,
              "serving_after": bool(res.get("serving_after")),
              "kv_back_to_baseline": a.get("kv_blocks") == b.get("kv_blocks"),
              "rss_back_to_baseline": bool(b) and all(rss_ok(b[k], a[k])
                                                     for k in ("router", "agent"))}
    res.update(checks=checks, ok=all(checks.values()), wall_s=time.time() - t0)
    (out_dir / "overload.json").write_text(json.dumps(res, indent=2, default=str))
    log(f"overload {'OK' if res['ok'] else 'FAILED'}: {dict(o)}; checks {checks}; "
        f"{out_dir / 'overload.json'}")
    return 0 if res["ok"] else 1
