"""vLLM's own benchmark client (``vllm bench serve``), run in this process with a send-lag probe.

``python -m bench.vllm_client --out-dir D --tag T --sweep C:N:OUT[,...] <vllm bench serve
flags>`` parses the flags with vLLM's parser (``vllm.benchmarks.serve.add_cli_args``) and calls
its ``main`` once per sweep entry (concurrency, prompts, output tokens; vLLM is imported once):
the same code as ``vllm bench serve`` (whose console script fails in this venv, see
bench/vllm_serve.py), with two additions, applied alike to every system it drives:

* **Send lag.** vLLM's client does not report whether it kept up, so its request function is
  wrapped (the entry of ``ASYNC_REQUEST_FUNCS`` for the backend) to record, per call, when the
  wrapper was entered, when the request was sent (the client's own ``start_time``, taken just
  before the POST) and when the call returned. At ``--request-rate inf`` the client is a
  closed loop of ``--max-concurrency`` slots, so a request is *due* at the start of the main
  run (the first C requests) or at the moment a slot frees: the k-th return of the main run
  frees the slot of request C+k (asyncio's semaphore wakes its waiters in order). Send lag =
  sent - due: how long a due request waited for the client's event loop. A second probe is a
  timer that asks to wake every 5 ms and records how late it woke: the *loop lag*, the delay
  any ready callback (a send, a streamed token's timestamp) suffered, which shows the client
  process being starved of CPU (other processes on its core, GC, parsing). Both are measured
  on the main run only (the last ``--num-prompts`` calls, after any warm-up) and written
  beside the run's result (:func:`run_files`); :func:`lag_summary` reduces them and bench/engine.py refuses a run whose p99
  of either is over 50 ms.
* **Same prompts for every server.** vLLM's client re-aligns random prompts through the
  server's ``/tokenize`` when the lengths disagree; only vLLM's server has that endpoint, so
  the systems would get different prompts. Both serve the tokenizer the client loads
  (``--tokenizer``), so the re-alignment is skipped.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from bench.metrics import percentile

TICK_S = 0.005
MAX_LAG_S = 0.050            # the refusal threshold for send lag and loop lag (p99)


class LagProbe:
    """Per-call times (perf_counter) and loop-timer lateness, recorded while the client runs."""

    def __init__(self, tick_s: float = TICK_S):
        self.tick_s = tick_s
        self.calls: list[list[float]] = []      # [entered, sent, returned]
        self.ticks: list[list[float]] = []      # [woke, late]
        self._ticker: asyncio.Task | None = None

    def wrap(self, request_func):
        async def timed(request_func_input, session, pbar=None):
            if self._ticker is None:
                self._ticker = asyncio.get_running_loop().create_task(self._tick())
            entered = time.perf_counter()
            output = await request_func(request_func_input=request_func_input,
                                        session=session, pbar=pbar)
            self.calls.append([entered, output.start_time, time.perf_counter()])
            return output
        return timed

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.tick_s)
            woke = time.perf_counter()
            self.ticks.append([woke, max(0.0, woke - t - self.tick_s)])

    def to_dict(self) -> dict:
        return {"tick_s": self.tick_s, "calls": sorted(self.calls), "ticks": self.ticks}


def send_lags(calls: list[list[float]], num_prompts: int, concurrency: int) -> list[float]:
    """Send lag of each main-run request (seconds); ``calls`` as :class:`LagProbe` records
    them, the main run being the last ``num_prompts`` by entry time."""
    main = sorted(calls)[-num_prompts:] if num_prompts else []
    if not main:
        return []
    t0 = main[0][0]
    freed = sorted(c[2] for c in main)
    c = max(1, concurrency)
    return [sent - (t0 if i < c else freed[i - c]) for i, (_, sent, _) in enumerate(main)]


def lag_summary(lag: dict, num_prompts: int, concurrency: int) -> dict:
    """p99 / max send lag and loop lag (ms) of the main run, and whether the run is valid."""
    lags = send_lags(lag["calls"], num_prompts, concurrency)
    main = sorted(lag["calls"])[-num_prompts:] if num_prompts else []
    t0, t1 = (main[0][0], max(c[2] for c in main)) if main else (0.0, 0.0)
    loop = [late for woke, late in lag["ticks"] if t0 <= woke <= t1]

    def ms(v):
        return None if v is None else round(v * 1e3, 3)
    out = {"requests": len(lags), "ticks": len(loop),
           "send_lag_p99_ms": ms(percentile(lags, 99)), "send_lag_max_ms": ms(max(lags or [0])),
           "loop_lag_p99_ms": ms(percentile(loop, 99)), "loop_lag_max_ms": ms(max(loop or [0])),
           "limit_ms": MAX_LAG_S * 1e3}
    over = [k for k in ("send_lag_p99_ms", "loop_lag_p99_ms")
            if out[k] is not None and out[k] > MAX_LAG_S * 1e3]
    if len(lags) < num_prompts:
        over.append(f"only {len(lags)} of {num_prompts} requests recorded")
    out["refused"] = "; ".join(f"{k} {out[k]} > {MAX_LAG_S * 1e3:g}" if k in out else k
                               for k in over) or None
    return out


def run_files(out_dir: Path, tag: str, concurrency: int, output_len: int) -> tuple[Path, Path]:
    """Where one run of a sweep leaves vLLM's result JSON and the probe's record."""
    stem = f"{tag}-c{concurrency}-o{output_len}"
    return Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.lag.json"


def _take(argv: list[str], flag: str) -> str:
    if flag not in argv:
        raise SystemExit(f"bench.vllm_client: {flag} is required")
    i = argv.index(flag)
    value = argv[i + 1]
    del argv[i:i + 2]
    return value


def main(argv: list[str] | None = None) -> int:
    """``--out-dir D --tag T --sweep C:N:OUT[,...]`` + vLLM's flags: one run per sweep entry
    (concurrency, prompts, output tokens), each saved as :func:`run_files` names it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out_dir, tag, sweep = _take(argv, "--out-dir"), _take(argv, "--tag"), _take(argv, "--sweep")
    from vllm.benchmarks import serve
    from vllm.benchmarks.lib.endpoint_request_func import ASYNC_REQUEST_FUNCS
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser(prog="bench.vllm_client")
    serve.add_cli_args(parser)
    base = parser.parse_args(argv)
    send = ASYNC_REQUEST_FUNCS[base.backend]

    async def same_prompts(base_url, model_id, input_requests, ssl_context=None):
        return input_requests
    serve._align_prompts_to_server_tokenizer = same_prompts
    for index, entry in enumerate(sweep.split(",")):
        c, n, out = (int(x) for x in entry.split(":"))
        result, lag = run_files(Path(out_dir), tag, c, out)
        args = argparse.Namespace(**vars(base))        # vLLM's main edits its args
        args.max_concurrency, args.num_prompts, args.random_output_len = c, n, out
        # a seed per run: no prompt repeats across the runs of a sweep, so a server with
        # prefix caching (stock vLLM's default) gets no hit the other server cannot have
        args.seed = base.seed + index
        args.save_result, args.result_dir, args.result_filename = True, out_dir, result.name
        probe = LagProbe()
        ASYNC_REQUEST_FUNCS[base.backend] = probe.wrap(send)
        serve.main(args)
        lag.write_text(json.dumps(probe.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
