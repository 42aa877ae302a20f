"""Open-loop load generator: replays a workload against an OpenAI-compatible endpoint.

Each request is sent at its arrival time (``POST {base}/v1/completions``, ``stream: true``,
``temperature: 0``, ``ignore_eos``, ``priority``, ``stream_options.include_usage``) whatever
the state of earlier ones, and yields one :class:`~bench.records.Record`: send time, TTFT,
the time of every streamed token chunk and how many tokens it carried (from ``logprobs``
when ``token_logprobs`` asks for them: ``logprobs: 0`` returns each sampled token, so a
chunk bundling k tokens is counted as k), end time, output tokens (the final usage when the
server reports it, else the number of token chunks), HTTP status and error text. Each
record keeps its scheduled and actual send time: ``send_lag_guard`` refuses a run whose
load generator fell behind its schedule. Failed
requests are recorded, never dropped; the whole run is bounded by ``total_timeout_s``.

HTTP is aiohttp's (as vLLM's own benchmark client): on this box it costs 65 us of CPU per
streamed chunk where httpx cost 154 (300 streams of 128 chunks at 30 req/s against a stub SSE
server, client and server on a core each), and a load generator sharing two cores with the
servers must stay cheap to keep its schedule.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from bench.records import Record
from bench.workloads import Request
from flying import heap

ERROR_TEXT_MAX = 500


@dataclass
class ClientConfig:
    base_url: str
    model: str | None = None              # None: the first id of GET /v1/models, if any
    api_key: str | None = None
    endpoint: str = "/v1/completions"
    include_usage: bool = True
    ignore_eos: bool = True
    temperature: float = 0.0
    send_priority: bool = True            # stock vLLM needs --scheduling-policy priority
    extra_body: dict = field(default_factory=dict)
    request_timeout_s: float = 300.0      # one request, first byte to last
    total_timeout_s: float = 900.0        # the whole run
    connect_timeout_s: float = 10.0
    max_connections: int | None = None    # None: unbounded (open loop)
    token_logprobs: bool = False          # ask logprobs=0: exact tokens per streamed chunk
    start_at: float | None = None         # wall clock (time.time()) of arrival 0; None: now


def request_body(req: Request, cfg: ClientConfig, model: str | None) -> dict:
    body: dict = {"prompt": req.prompt, "max_tokens": req.max_tokens,
                  "temperature": cfg.temperature, "stream": True}
    if model:
        body["model"] = model
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    if cfg.send_priority:
        body["priority"] = req.priority
    if cfg.token_logprobs:
        body["logprobs"] = 0
    if cfg.include_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(cfg.extra_body)
    return body


def _chunk_text(obj: dict) -> str:
    """The generated text of one streamed event (completions ``text`` or chat ``delta``)."""
    choices = obj.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    c = choices[0]
    if "text" in c:
        return c.get("text") or ""
    return (c.get("delta") or {}).get("content") or ""


def _chunk_token_count(obj: dict) -> int | None:
    """Tokens in one streamed event when it lists them (completions ``logprobs.tokens``,
    chat ``logprobs.content``); None when it does not say."""
    choices = obj.get("choices") or []
    lp = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
    if not isinstance(lp, dict):
        return None
    toks = lp.get("tokens") if "tokens" in lp else lp.get("content")
    return len(toks) if isinstance(toks, list) and toks else None


def _finish_reason(obj: dict) -> str | None:
    choices = obj.get("choices") or []
    if choices and isinstance(choices[0], dict):
        return choices[0].get("finish_reason")
    return None


class _Run:
    def __init__(self, session: aiohttp.ClientSession, cfg: ClientConfig, model: str | None):
        self.session, self.cfg, self.model = session, cfg, model
        self.url = cfg.base_url.rstrip("/") + cfg.endpoint
        lead = 0.0 if cfg.start_at is None else max(0.0, cfg.start_at - time.time())
        self.t0 = time.perf_counter() + lead

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def one(self, req: Request, rec: Record) -> None:
        delay = req.arrival_s - self.now()
        if delay > 0:
            await asyncio.sleep(delay)       # cancelled here: recorded as not sent
        body = request_body(req, self.cfg, self.model)
        rec.send_s = self.now()
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s):
                await self._stream(body, rec)
        except asyncio.CancelledError:
            rec.error = rec.error or "total timeout"
            raise
        except TimeoutError:
            rec.error = rec.error or f"request timeout ({self.cfg.request_timeout_s:g} s)"
        except aiohttp.ClientError as e:
            rec.error = rec.error or f"{type(e).__name__}: {e}"[:ERROR_TEXT_MAX]
        except (ValueError, KeyError, TypeError) as e:       # malformed events
            rec.error = rec.error or f"bad stream: {type(e).__name__}: {e}"[:ERROR_TEXT_MAX]
        finally:
            if rec.end_s is None:
                rec.end_s = self.now()

    async def _stream(self, body: dict, rec: Record) -> None:
        async with self.session.post(self.url, json=body) as resp:
            rec.status = resp.status
            if resp.status != 200:
                text = (await resp.read()).decode("utf-8", errors="replace")
                rec.error = f"HTTP {resp.status}: {text}"[:ERROR_TEXT_MAX]
                rec.end_s = self.now()
                return
            chunks, done, counted = 0, False, True
            async for raw in resp.content:
                if not raw.startswith(b"data:"):
                    continue
                data = raw[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                t = self.now()
                obj = json.loads(data)
                if "error" in obj:
                    err = obj["error"]
                    msg = err.get("message", err) if isinstance(err, dict) else err
                    code = err.get("code") if isinstance(err, dict) else None
                    rec.error = f"stream error {code or ''}: {msg}".strip()[:ERROR_TEXT_MAX]
                    continue
                k = _chunk_token_count(obj)
                if _chunk_text(obj) or k:
                    chunks += 1
                    rec.token_times.append(t)
                    counted = counted and k is not None
                    rec.chunk_tokens.append(k or 0)
                    if rec.first_token_s is None:
                        rec.first_token_s = t
                rec.finish_reason = _finish_reason(obj) or rec.finish_reason
                usage = obj.get("usage")
                if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                    rec.output_tokens = int(usage["completion_tokens"])
                    rec.prompt_tokens = int(usage.get("prompt_tokens") or rec.prompt_tokens)
                    rec.usage_reported = True
            rec.end_s = self.now()
            if not counted:
                rec.chunk_tokens = []          # some chunk did not say: see Record.chunk_sizes
            if not rec.usage_reported:
                rec.output_tokens = sum(rec.chunk_tokens) if counted and chunks else chunks
            if not done and rec.error is None:
                rec.error = "stream ended without [DONE]"


async def discover_model(session: aiohttp.ClientSession, base_url: str) -> str | None:
    """The first model id served at ``base_url`` (None when it cannot be listed)."""
    try:
        async with session.get(base_url.rstrip("/") + "/v1/models") as r:
            data = (await r.json(content_type=None)).get("data") or []
            return data[0]["id"] if r.status == 200 and data else None
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError,
            AttributeError):
        return None


def _new_record(req: Request) -> Record:
    return Record(id=req.id, arrival_s=req.arrival_s, priority=req.priority, cls=req.cls,
                  prompt_tokens=req.prompt_tokens, max_tokens=req.max_tokens)


async def run_workload(requests: Sequence[Request], cfg: ClientConfig) -> list[Record]:
    """Replay ``requests`` (open loop, at their arrival times); one record per request, in
    the input order. Requests still running (or not yet sent) when ``total_timeout_s``
    expires are cancelled and recorded as failed."""
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    connector = aiohttp.TCPConnector(limit=cfg.max_connections or 0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                    connect=cfg.connect_timeout_s)
    records = [_new_record(r) for r in requests]
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout,
                                     read_bufsize=1 << 20) as session:
        model = cfg.model or await discover_model(session, cfg.base_url)
        run = _Run(session, cfg, model)
        tasks = [asyncio.create_task(run.one(q, rec)) for q, rec in zip(requests, records)]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=cfg.total_timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    for rec in records:
        if rec.send_s is None:
            rec.error = rec.error or "not sent before the total timeout"
    return records


MAX_SEND_LAG_S = float(os.environ.get("FLYING_BENCH_MAX_SEND_LAG_MS", "50")) / 1e3


def send_lag_guard(records: Sequence[Record], max_p99_s: float) -> str | None:
    """Why a run must be refused because its load generator fell behind (None: it kept to
    its schedule): the p99 of (actual send - scheduled send) over the requests sent."""
    lags = sorted(r.send_lag for r in records if r.send_lag is not None)
    if not lags:
        return None
    p99 = float(np.percentile(lags, 99))
    if p99 <= max_p99_s:
        return None
    return (f"invalid: the load generator fell behind (send-lag p99 {p99 * 1e3:.0f} ms > "
            f"{max_p99_s * 1e3:.0f} ms; max {lags[-1] * 1e3:.0f} ms)")


@contextlib.contextmanager
def realtime():
    """Run the calling thread at real-time priority (SCHED_RR 1, not inherited by children)
    where the OS allows it, so on a box whose cores the servers saturate the load generator
    still wakes on time (at normal priority it waited on the run queue about as long as it
    ran, and its sends fell 0.2 s behind at the burst peaks). Yields whether it did."""
    try:
        old = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except (AttributeError, OSError):          # not Linux, or no CAP_SYS_NICE: as is
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, old[0], old[1])


def _run_here(requests: Sequence[Request], cfg: ClientConfig) -> list[Record]:
    heap.freeze_startup_heap()     # no full-heap GC pause inside a measured TTFT
    try:
        with realtime():
            return asyncio.run(run_workload(requests, cfg))
    finally:
        heap.unfreeze_heap()


def run(requests: Sequence[Request], cfg: ClientConfig, isolated: bool = False
        ) -> list[Record]:
    """Blocking wrapper around :func:`run_workload`, at real-time priority when allowed.
    `isolated`: in a process of its own (spawned; give `cfg.start_at` a second or two ahead
    for its start), so that nothing else in the caller — its threads, gRPC pollers, a cold
    restarter — holds the GIL while a send is due (one such stall put a 0.23 s gap into a
    burst's schedule)."""
    if not isolated:
        return _run_here(requests, cfg)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_run_here, list(requests), cfg).result()
