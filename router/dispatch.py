"""Routing one request: classify, place, wait for a merge if needed, stream, retry elsewhere.

When its node answers UNAVAILABLE (a worker or the whole node died, the node is draining), a
request is retried on another node: from scratch if it produced no token yet, else continued
from its tokens (every token so far as the prompt; the new node recomputes their KV), and the
client's stream goes on. A request that cannot be retried (no token ids at the router, a
cross-node micro-request, attempts used up) ends with the error. Nothing is dropped silently.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from flying import logs
from flying.errors import error_from_grpc
from flying.v1 import flying_pb2 as pb
from flying_core.errors import InvalidArgument, ResourceExhausted, Unavailable
from router.agents import Cluster
from router.classify import classify
from router.micro import (
    continue_request,
    merge_complete,
    penalized,
    plan_split,
    resume_request,
)
from router.placement import PlacementConfig, Unplaced, place
from router.policy import LoadSignals, PendingRequest
from router.policy_signals import ArrivalOnset, MeanLength
from router.prefix_affinity import PrefixAffinity
from router.views import single_worker_tokens

log = logs.get("flying.router")
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE,)


@dataclass
class NodeLoad:
    """What the router measured of one node's traffic, for the layout policy (`signals`).
    `onset_rps_per_worker`: the rate per worker whose sudden arrival is an onset
    (`policy_signals.ArrivalOnset`; `PolicyConfig.trend_rate`, the rate the policy's trend
    looks for)."""
    onset_rps_per_worker: float = 4.0
    window_s: float = 2.0          # the arrival rate is a count over this window
    base_window_s: float = 8.0     # ... and the onset test's base also over this one
    arrivals: deque = field(default_factory=deque)
    urgent_waiting: dict[str, float] = field(default_factory=dict)
    held: int = 0
    longest: dict[str, int] = field(default_factory=dict)
    # of its requests' prompts, from 6 on (an onset's alarm needs 6 arrivals: at 40 req/s
    # the 16th comes 0.25 s after it, and the default 256 tokens had TP's capacity equal to
    # DP's on this box, so the split waited for the next tick); arrival order says nothing of
    # a prompt's length, unlike the order in which outputs finish
    prompts: MeanLength = field(default_factory=lambda: MeanLength(min_n=6))
    outputs: MeanLength = field(default_factory=MeanLength)   # of its finished requests
    onset: ArrivalOnset = field(default_factory=ArrivalOnset)
    _recent: deque = field(default_factory=deque)             # arrivals, base_window_s

    def _forget(self, now: float) -> None:
        for q, keep in ((self.arrivals, self.window_s), (self._recent, self.base_window_s)):
            while q and now - q[0] > keep:
                q.popleft()

    def arrived(self, now: float, prompt_tokens: int, workers: int = 1) -> bool:
        """Count an arrival; True when it makes an arrival-rate onset (wake the policy)."""
        self._forget(now)
        self.prompts.add(prompt_tokens, now)
        # the rate before it, the higher of two windows' (a 2 s count alone reads a steady
        # load low often enough to see a jump in its own noise)
        base = max(len(self.arrivals) / self.window_s, len(self._recent) / self.base_window_s)
        self.arrivals.append(now)
        self._recent.append(now)
        return self.onset.arrived(now, base, self.onset_rps_per_worker * max(1, workers))

    def finished(self, output_tokens: int, now: float | None = None) -> None:
        self.outputs.add(output_tokens, now)

    def signals(self, now: float, pending: tuple[PendingRequest, ...] = ()) -> LoadSignals:
        self._forget(now)
        oldest = min(self.urgent_waiting.values(), default=now)
        return LoadSignals(arrival_rate=len(self.arrivals) / self.window_s,
                           arrival_window_s=self.window_s,
                           queue_depth=self.held, pending=pending,
                           urgent_waiting=len(self.urgent_waiting),
                           urgent_wait_s=now - oldest,
                           longest_inflight_tokens=max(self.longest.values(), default=0),
                           prompt_tokens=self.prompts.mean(),
                           output_tokens=self.outputs.mean(),
                           onset_rate=self.onset.rate(now),
                           onset_arrivals=self.onset.arrivals(now))


class Dispatcher:
    def __init__(self, cluster: Cluster, tokenizer=None, placement_wait_s: float = 60.0,
                 max_attempts: int = 3, micro_requests: str = "off",
                 prefix_routing: bool = True, onset_rps_per_worker: float = 4.0):
        self.cluster, self.tokenizer = cluster, tokenizer
        self.onset_rps_per_worker = onset_rps_per_worker   # PolicyConfig.trend_rate
        self.affinity = PrefixAffinity() if prefix_routing else None
        self.micro_requests = micro_requests
        self.placement_wait_s, self.max_attempts = placement_wait_s, max_attempts
        self.loads: dict[str, NodeLoad] = {}
        self.pending: dict[str, PendingRequest] = {}
        self.reserved: dict[str, int] = {}   # node -> instance the policy keeps for urgent
        self.placed = 0   # placements so far: equal instances are taken in turn
        self.kick = asyncio.Event()   # wakes the policy loop (a merge needed, an onset)

    def load(self, node: str) -> NodeLoad:
        if node not in self.loads:
            self.loads[node] = NodeLoad(self.onset_rps_per_worker)
        return self.loads[node]

    def signals(self) -> dict[str, LoadSignals]:
        now = time.monotonic()
        return {a.name: self.load(a.name).signals(now) for a in self.cluster.agents}

    def prompt_tokens(self, req: pb.GenerateRequest) -> int:
        if req.WhichOneof("input") == "prompt_token_ids":
            return len(req.prompt_token_ids.ids)
        if not req.prompt:
            raise InvalidArgument("prompt is empty")
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(req.prompt)
            req.prompt_token_ids.ids.extend(ids)   # the agent need not tokenize again
            return len(ids)
        return len(req.prompt) // 3 + 1

    async def _place(self, req: pb.GenerateRequest, exclude: set[str]):
        n_prompt = self.prompt_tokens(req)
        if req.sampling.max_tokens <= 0:
            raise InvalidArgument("max_tokens must be > 0")
        end = time.monotonic() + self.placement_wait_s
        while True:
            every = self.cluster.views(placing=True)
            views = [v for v in every if v.name not in exclude and v.serving] or every
            cls = classify(n_prompt, req.sampling.max_tokens, req.priority,
                           single_worker_tokens(views))
            tokens = req.prompt_token_ids.ids
            cached = (self.affinity.cached_tokens(tokens, views)
                      if self.affinity is not None and len(tokens) else None)
            found, why = place(views, cls.context_tokens, cls.urgent,
                               PlacementConfig(queue_when_full=True), n_prompt, cached,
                               self.reserved, turn=self.placed)
            if found is not None:
                self.placed += 1
                view = next(v for v in views if v.name == found.node)
                if (agent := self.cluster.by_name(found.node)) is not None:
                    agent.placed(found.instance, -(-cls.context_tokens // max(
                        1, view.status.block_size)))
                self.pending.pop(req.request_id, None)
                if cached is not None:
                    self.affinity.record(tokens, view, found.instance)
                return found, cls
            if why == Unplaced.TOO_LONG:
                limit = max((v.status.max_model_len for v in views if v.status), default=0)
                raise InvalidArgument(f"{cls.context_tokens} tokens (prompt + max_tokens) fit "
                                      f"no node, even merged (model context {limit})")
            if why == Unplaced.NEEDS_MERGE:
                self.pending[req.request_id] = PendingRequest(cls.context_tokens, cls.urgent)
                self.kick.set()
            if time.monotonic() > end:
                self.pending.pop(req.request_id, None)
                if why == Unplaced.NO_NODE:
                    raise Unavailable("no serving node")
                raise ResourceExhausted(f"no instance could take the request ({why})")
            await self.cluster.next_status(min(2 * self.cluster.poll_s,
                                               end - time.monotonic()))

    def _split(self, req: pb.GenerateRequest, placement) -> str | None:
        if self.micro_requests == "adaptive":
            if penalized(req.sampling):
                return None
            return plan_split(req, self.cluster.views(), placement.node, placement.instance)
        if self.micro_requests == "disagg":
            view = next((v for v in self.cluster.views() if v.name == placement.node), None)
            n_prompt = len(req.prompt_token_ids.ids)
            if view and view.status and len(view.status.instances) >= 2 and n_prompt:
                req.instance = 0                        # the prefill instance
                req.split.handoff_at, req.split.to_instance = n_prompt, 1   # decode instance
        return None

    async def _second_segment(self, req, tokens: list[int], first_agent, node: str | None,
                              first: pb.Complete):
        """Resume a cross-node micro-request on `node` (B pulls the KV from A)."""
        target = self.cluster.by_name(node) if node else None
        if target is None or not target.view().serving:
            target = first_agent   # B went away: A resumes it (recompute of its own KV)
        cont = resume_request(req, tokens, first_agent.address)
        call = target.generate(cont)
        try:
            async for resp in call:
                if resp.HasField("complete"):
                    yield merge_complete(first, resp.complete, len(req.prompt_token_ids.ids),
                                         len(tokens))
                else:
                    yield resp
        except grpc.aio.AioRpcError as e:
            raise error_from_grpc(e) from None
        finally:
            call.cancel()

    async def generate(self, req: pb.GenerateRequest):
        """Stream GenerateResponses from a node; raises FlyingError."""
        if not req.request_id:
            req.request_id = f"rt-{time.monotonic_ns():x}"
        exclude: set[str] = set()
        rid = req.request_id
        carried: list[int] = []        # tokens earlier attempts streamed before their node died
        n_prompt = 0
        for attempt in range(1, self.max_attempts + 1):
            placement, cls = await self._place(req, exclude)
            agent = self.cluster.by_name(placement.node)
            load = self.load(placement.node)
            status = agent.view().status
            if load.arrived(time.monotonic(), len(req.prompt_token_ids.ids),
                            sum(status.layout) if status else 1):
                self.kick.set()      # the policy reads the onset now, not at its next tick
            load.longest[req.request_id] = cls.context_tokens
            if cls.urgent:
                load.urgent_waiting[req.request_id] = time.monotonic()
            req.instance = placement.instance
            remote = self._split(req, placement)
            call = agent.generate(req)
            produced, done, tokens = False, False, []
            try:
                async for resp in call:
                    if not produced:
                        load.urgent_waiting.pop(req.request_id, None)
                    produced = True
                    done = resp.HasField("complete")
                    if done and resp.complete.finish_reason == "handoff":
                        async for tail in self._second_segment(req, tokens, agent, remote,
                                                               resp.complete):
                            yield tail
                        return
                    tokens.extend(resp.chunk.token_ids)
                    if done:
                        load.finished(len(carried) + len(tokens), time.monotonic())
                    if done and carried:
                        resp = merge_complete(resp.complete, resp.complete, n_prompt,
                                              len(carried))
                        resp.complete.request_id = rid
                    yield resp
                return
            except grpc.aio.AioRpcError as e:
                resumable = not produced or (
                    remote is None and not req.HasField("split")
                    and len(req.prompt_token_ids.ids) > 0
                    and len(tokens) < req.sampling.max_tokens)
                if e.code() in RETRY_CODES and resumable and attempt < self.max_attempts:
                    log.warning("retrying on another node", node=placement.node,
                                error=e.details(), attempt=attempt, request_id=req.request_id,
                                tokens_so_far=len(carried) + len(tokens))
                    exclude.add(placement.node)
                    agent.healthy = False   # until its next good poll: wait, don't hammer it
                    if tokens:
                        n_prompt = n_prompt or len(req.prompt_token_ids.ids)
                        carried += tokens
                        req = continue_request(req, tokens, attempt)
                    continue
                raise error_from_grpc(e) from None
            finally:
                load.urgent_waiting.pop(req.request_id, None)
                load.longest.pop(req.request_id, None)
                if not done:
                    call.cancel()
