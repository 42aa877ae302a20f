"""WorkerGroup: the Python API the agent drives (no gRPC, no proto).

    group = WorkerGroup(GroupConfig(model=..., num_workers=2))
    group.start()                                 # spawns workers, waits until every layout is warm
    group.submit(RequestSpec(...), on_event)      # on_event(TokenEvent | Finished), driver thread
    group.abort(request_id) -> bool
    group.reconfigure((2,), PreemptMode.HARD, timeout_s=5.0) -> SwitchReport   (blocking)
    group.status() -> GroupStatus
    group.shutdown()
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import multiprocessing as mp
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence

from flying import logs
from flying_core import device, model_support
from flying_core import layout as lay
from flying_core.admission import shed_victim
from flying_core.commands import (
    Abort,
    Adopt,
    CachedPrefix,
    CollectStats,
    Export,
    Failed,
    Ready,
    Shed,
    Stop,
    StopCmd,
    Submit,
    Switch,
)
from flying_core.config import GroupConfig, WorkerConfig
from flying_core.cost_profile import CostProfile
from flying_core.driver import Driver
from flying_core.errors import (
    Aborted,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from flying_core.handoff import HandoffStats
from flying_core.request import Detokenizer, Request, check_sampling
from flying_core.sequencer import Sequencer
from flying_core.types import (
    Event,
    GroupStatus,
    KVExport,
    PreemptMode,
    RequestSpec,
    SwitchReport,
    WorkerInfo,
    WorkerStats,
)
from flying_core.worker import worker_main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_ids(rank: int) -> tuple[int, ...]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (cpus[rank % len(cpus)],) if cpus else ()


class WorkerGroup:
    def __init__(self, cfg: GroupConfig):
        self.cfg = cfg
        self.log = logs.get("flying.group")
        self.procs: list = []
        self.conns: list = []
        self.driver: Driver | None = None
        self._thread: threading.Thread | None = None
        self._switch_lock = threading.Lock()
        self._tokenizer = None
        self._grammars = None        # flying_core.grammar.Grammars, on the first structured request
        self.seq: Sequencer | None = None
        self.info: WorkerInfo | None = None
        self.worker_info: list[WorkerInfo] = []
        self.startup_s = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 900.0) -> None:
        t0 = time.perf_counter()
        cfg = self.cfg
        # one line naming what a CUDA node lacks, before any process starts
        device.check(cfg.device, cfg.num_workers, enforce_eager=cfg.enforce_eager)
        model_support.check_folder(cfg.model)   # quantized / MoE / sliding window: refused here
        ctx = mp.get_context("spawn")
        port = self.dist_port = _free_port()
        for rank in range(cfg.num_workers):
            parent, child = ctx.Pipe()
            delay = cfg.worker_delays[rank] if rank < len(cfg.worker_delays) else 0.0
            wcfg = WorkerConfig(cfg, rank, port, _cpu_ids(rank), delay)
            p = ctx.Process(target=worker_main, args=(wcfg, child), daemon=True,
                            name=f"flying-worker{rank}")
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        from transformers import AutoTokenizer
        self._tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        self.seq = Sequencer(self.conns, [p.sentinel for p in self.procs])
        try:
            self.worker_info = [self._ready(r, t0 + timeout_s) for r in range(cfg.num_workers)]
            self.info = self.worker_info[0]
            layout = lay.validate(cfg.layout or (1,) * cfg.num_workers, cfg.num_workers,
                                  self.info.sizes)
            costs = CostProfile()
            if cfg.profile:
                costs.probe(self.seq, cfg.num_workers, self.info.sizes)
        except Exception:
            self.shutdown(0)
            raise
        self.driver = Driver(cfg, self.seq, self.info, self._eos_ids(), layout, costs)
        self._thread = threading.Thread(target=self.driver.run, name="flying-driver",
                                        daemon=True)
        self._thread.start()
        self.startup_s = time.perf_counter() - t0
        self.log.info("worker group ready", workers=cfg.num_workers, layout=list(layout),
                      sizes=self.info.sizes, startup_s=round(self.startup_s, 1),
                      kv_blocks=self.info.num_blocks)

    def _ready(self, rank: int, deadline: float) -> WorkerInfo:
        reply = self.seq.reply_from(rank, timeout=max(1.0, deadline - time.perf_counter()))
        if isinstance(reply, Failed):
            raise Unavailable(f"worker {rank} failed: {reply.error}")
        assert isinstance(reply, Ready), reply
        return reply.info

    def _eos_ids(self) -> frozenset[int]:
        ids = set()
        if self._tokenizer.eos_token_id is not None:
            ids.add(self._tokenizer.eos_token_id)
        try:
            from transformers import GenerationConfig
            gen = GenerationConfig.from_pretrained(self.cfg.model).eos_token_id
            ids |= set(gen if isinstance(gen, list) else [gen] if gen is not None else [])
        except (OSError, ValueError):
            pass
        return frozenset(ids)

    def alive(self) -> bool:
        d = self.driver
        return bool(d and not d.failed and self._thread and self._thread.is_alive()
                    and all(p.is_alive() for p in self.procs))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        if self.driver is not None:
            self.driver.post(Stop())
            if self._thread:
                self._thread.join(timeout_s)
        for conn in self.conns:
            try:
                conn.send(StopCmd(-1))
            except (OSError, BrokenPipeError):
                pass
        end = time.perf_counter() + timeout_s
        for p in self.procs:
            p.join(max(0.1, end - time.perf_counter()))
            if p.is_alive():
                p.kill()
                p.join(5)
        self.procs, self.conns = [], []
        # vLLM's CPU all-reduce segments are named after the node's port: remove what killed
        # workers could not (our own KV files are unlinked as soon as every worker maps them)
        for path in glob.glob(f"/dev/shm/flying{getattr(self, 'dist_port', 'x')}-*"):
            with contextlib.suppress(OSError):
                os.unlink(path)

    # ------------------------------------------------------------------ requests

    @property
    def tokenizer(self):
        return self._tokenizer

    def validate(self, spec: RequestSpec) -> None:
        s, d = spec.sampling, self.driver
        if not spec.prompt_token_ids:
            raise InvalidArgument("prompt is empty")
        vocab = self.info.vocab_size
        if any(t < 0 or t >= vocab for t in spec.prompt_token_ids):
            raise InvalidArgument(f"prompt token ids must be in [0, {vocab})")
        if s.max_tokens <= 0:
            raise InvalidArgument("max_tokens must be > 0")
        total = len(spec.prompt_token_ids) + s.max_tokens
        if total > d.max_model_len:
            raise InvalidArgument(
                f"prompt ({len(spec.prompt_token_ids)} tokens) + max_tokens ({s.max_tokens}) = "
                f"{total} exceeds the model's context of {d.max_model_len} tokens")
        largest = self.driver.pool.num_blocks * self.cfg.num_workers * self.cfg.block_size
        if total > largest:
            raise InvalidArgument(f"{total} tokens need more KV than the whole node holds "
                                  f"({largest} tokens)")
        if s.temperature < 0 or not 0 < s.top_p <= 1 or s.top_k < -1:
            raise InvalidArgument("temperature must be >= 0, top_p in (0, 1], top_k >= -1")
        check_sampling(s, vocab)
        if spec.instance is not None and spec.instance < 0:
            raise InvalidArgument("instance must be >= 0")
        if not 0 <= spec.continued < len(spec.prompt_token_ids):
            raise InvalidArgument("continued must be in [0, prompt length)")
        if s.prompt_logprobs is not None and (spec.continued or (
                spec.split is not None and spec.split.remote)):
            raise InvalidArgument("prompt_logprobs: not for a continued segment or a "
                                  "cross-node split (the prompt's logits are computed once)")
        if spec.split is not None and not (0 < spec.split.handoff_at < total and (
                spec.split.remote or spec.split.to_instance >= 0)):
            raise InvalidArgument(f"split.handoff_at must be in [1, {total - 1}] and "
                                  "split.to_instance >= 0")

    def _check_submit(self, spec: RequestSpec) -> None:
        if not self.alive():
            raise Unavailable("worker group is not serving" + (
                f": {self.driver.failed}" if self.driver and self.driver.failed else ""))
        self.validate(spec)
        if len(self.driver.requests) + self.driver.inbox.qsize() >= self.cfg.max_queue:
            self._shed_for(spec)
        if spec.request_id in self.driver.requests:
            raise InvalidArgument(f"request id {spec.request_id!r} is already in use")

    def _shed_for(self, spec: RequestSpec) -> None:
        """Full queue: the least urgent not-started request gives way to a more urgent
        arrival (admission.shed_victim); else the arrival is refused. Both: RESOURCE_EXHAUSTED."""
        full = f"queue full ({self.cfg.max_queue} requests)"
        queued = [(r.spec.priority, r.arrival, r.id) for r in list(self.driver.requests.values())
                  if r.started is None and not r.in_flight and not r.done]
        victim = shed_victim(queued, spec.priority)
        if victim is None:
            raise ResourceExhausted(full)
        self.log.info("request shed for a more urgent one", shed=victim,
                      request_id=spec.request_id, priority=spec.priority)
        self.driver.post(Shed(victim, f"{full}; shed for a more urgent request"))

    @staticmethod
    def _seed(spec: RequestSpec) -> int:
        return spec.sampling.seed if spec.sampling.seed is not None else random.getrandbits(63)

    def submit(self, spec: RequestSpec, on_event: Callable[[Event], None]) -> None:
        self.driver.post(Submit(self._request(spec, on_event)))

    def export_kv(self, request_id: str, timeout_s: float = 30.0, skip: int = 0) -> KVExport:
        """The KV a cross-node first segment left held here (once; the blocks are freed),
        without its first `skip` blocks (the receiver caches them)."""
        return self._call(Export(request_id, skip), timeout_s, f"KV export of {request_id!r}")

    def cached_prefix_blocks(self, tokens: Sequence[int], timeout_s: float = 30.0) -> int:
        """How many leading full blocks of `tokens` (a request to adopt: all but its last
        token have KV) an instance here caches; the sender need not send them."""
        return self._call(CachedPrefix(tuple(tokens)), timeout_s, "prefix cache lookup")

    def adopt(self, spec: RequestSpec, kv: KVExport | None,
              on_event: Callable[[Event], None]) -> None:
        """Run the second segment of a request whose first ran on another node. spec's prompt
        is every token so far; kv (or None: recompute) holds the KV of all but the last."""
        self.driver.post(Adopt(self._request(spec, on_event), kv))

    def _request(self, spec: RequestSpec, on_event: Callable[[Event], None]) -> Request:
        self._check_submit(spec)
        if spec.sampling.top_k == -1:
            spec = dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling, top_k=0))
        s = spec.sampling
        detok = Detokenizer(self._tokenizer, s.stop, spec.prompt_token_ids, spec.continued,
                            include_stop=s.include_stop_str_in_output,
                            skip_special=s.skip_special_tokens)
        grammar = None
        if s.structured is not None:
            if self._grammars is None:
                from flying_core.grammar import Grammars
                self._grammars = Grammars(self._tokenizer, self.info.vocab_size,
                                          self.driver.eos_ids)
            grammar = self._grammars.state(s.structured)
        return Request(spec, on_event, self._seed(spec), detok, eos_ids=self.driver.eos_ids,
                       grammar=grammar)

    def abort(self, request_id: str) -> bool:
        if self.driver is None or request_id not in self.driver.requests:
            return False
        self.driver.post(Abort(request_id))
        return True

    # ------------------------------------------------------------------ layouts

    def check_layout(self, layout: Sequence[int]) -> tuple[int, ...]:
        return lay.validate(layout, self.cfg.num_workers, self.info.sizes)

    def reconfigure(self, layout: Sequence[int], mode: PreemptMode = PreemptMode.SOFT,
                    timeout_s: float | None = None) -> SwitchReport:
        new = self.check_layout(layout)
        if not self.alive():
            raise Unavailable("worker group is not serving")
        if not self._switch_lock.acquire(blocking=False):
            raise Aborted("another reconfigure is in progress")
        try:
            if new == self.driver.instances.layout:
                return SwitchReport(new, 0.0)
            bound = self.cfg.soft_bound_s if timeout_s is None else min(timeout_s,
                                                                        self.cfg.soft_bound_s)
            wait_s = (timeout_s if timeout_s is not None else self.cfg.soft_bound_s) + 60
            report = self._call(Switch(new, mode, time.perf_counter() + bound), wait_s,
                                f"switch to {list(new)}")
            self.log.info("layout switched", layout=list(new), mode=mode.value,
                          switch_ms=round(report.switch_ms, 2), migrated=report.migrated,
                          drained=report.drained, kv_bytes=report.kv_bytes_moved)
            return report
        finally:
            self._switch_lock.release()

    def status(self) -> GroupStatus:
        return self.driver.status()

    def worker_stats(self, timeout_s: float = 30.0) -> list[WorkerStats]:
        """Every worker's RSS, KV pool pointer and number of process groups, by rank."""
        return self._call(CollectStats(), timeout_s, "a stats request")

    def handoff_stats(self) -> HandoffStats:
        return dataclasses.replace(self.driver.handoff_stats)

    def _call(self, cmd, timeout_s: float, what: str):
        """Post a command with a result future to the driver and wait for its answer."""
        self.driver.post(cmd)
        try:
            return cmd.result.result(timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"{what} did not finish in {timeout_s:.0f}s") from None

    def kv_blocks_used(self) -> int:
        d = self.driver
        return d.pool.used(range(self.cfg.num_workers))
