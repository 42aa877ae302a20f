"""The wire: every conversion between flying.v1 proto messages and the plain types of
`flying_core.types`, both directions, for the agent and the router.

Only this module and the gRPC servicers/clients at the edges touch proto types; everything
behind them (worker group, policy, REST gateway) sees plain frozen dataclasses.
"""
from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from flying.v1 import flying_pb2 as pb
from flying_core.errors import InvalidArgument
from flying_core.kv_format import KVFormat
from flying_core.types import (
    Finished,
    GroupStatus,
    InstanceStatus,
    KVExport,
    LayoutCost,
    PreemptMode,
    PrefixCacheStats,
    RequestSpec,
    SamplingSpec,
    Split,
    StructuredSpec,
    SwitchReport,
    TokenEvent,
    TokenLogprob,
)

# ---------------------------------------------------------------- requests


def sampling_from_pb(s: pb.SamplingParams) -> SamplingSpec:
    return SamplingSpec(
        max_tokens=s.max_tokens,
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=s.top_k if s.HasField("top_k") else 0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop), ignore_eos=s.ignore_eos,
        logprobs=s.logprobs if s.HasField("logprobs") else None, min_p=s.min_p,
        presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
        logit_bias=tuple(sorted(s.logit_bias.items())), min_tokens=s.min_tokens,
        stop_token_ids=tuple(s.stop_token_ids),
        include_stop_str_in_output=s.include_stop_str_in_output,
        skip_special_tokens=s.skip_special_tokens if s.HasField("skip_special_tokens")
        else True,
        structured=StructuredSpec(s.structured.kind, s.structured.spec)
        if s.HasField("structured") else None,
        prompt_logprobs=s.prompt_logprobs if s.HasField("prompt_logprobs") else None)


def sampling_to_pb(s: SamplingSpec) -> pb.SamplingParams:
    out = pb.SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                            top_k=s.top_k, stop=list(s.stop), ignore_eos=s.ignore_eos,
                            min_p=s.min_p, presence_penalty=s.presence_penalty,
                            frequency_penalty=s.frequency_penalty,
                            repetition_penalty=s.repetition_penalty,
                            logit_bias=dict(s.logit_bias), min_tokens=s.min_tokens,
                            stop_token_ids=list(s.stop_token_ids),
                            include_stop_str_in_output=s.include_stop_str_in_output,
                            skip_special_tokens=s.skip_special_tokens)
    if s.seed is not None:
        out.seed = s.seed
    if s.logprobs is not None:
        out.logprobs = s.logprobs
    if s.prompt_logprobs is not None:
        out.prompt_logprobs = s.prompt_logprobs
    if s.structured is not None:
        out.structured.kind, out.structured.spec = s.structured.kind, s.structured.spec
    return out


def logprob_to_pb(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob, rank=lp.rank,
                           top_ids=[t for t, _ in lp.top], top_logprobs=[v for _, v in lp.top])


def logprob_from_pb(lp: pb.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(lp.token_id, lp.logprob, lp.rank,
                        tuple(zip(lp.top_ids, lp.top_logprobs)))


def spec_from_pb(req: pb.GenerateRequest, tokenizer) -> RequestSpec:
    """Validate the wire request and tokenize its prompt. Raises InvalidArgument."""
    which = req.WhichOneof("input")
    if which == "prompt":
        if not req.prompt:
            raise InvalidArgument("prompt is empty")
        ids = tuple(tokenizer.encode(req.prompt))
    elif which == "prompt_token_ids":
        ids = tuple(req.prompt_token_ids.ids)
    else:
        raise InvalidArgument("request has neither prompt nor prompt_token_ids")
    if not ids:
        raise InvalidArgument("prompt is empty")
    if not req.HasField("sampling") or req.sampling.max_tokens <= 0:
        raise InvalidArgument("sampling.max_tokens must be > 0")
    if not 0 <= req.continued_tokens < len(ids):
        raise InvalidArgument(f"continued_tokens must be in [0, {len(ids)}) (the prompt's "
                              f"length), got {req.continued_tokens}")
    return RequestSpec(
        request_id=req.request_id or f"req-{uuid.uuid4().hex[:16]}",
        prompt_token_ids=ids, sampling=sampling_from_pb(req.sampling), priority=req.priority,
        instance=req.instance if req.HasField("instance") else None,
        split=Split(req.split.handoff_at, req.split.to_instance, req.split.remote)
        if req.HasField("split") else None, continued=req.continued_tokens)


def request_to_pb(request_id: str, sampling: SamplingSpec, *, prompt: str | None = None,
                  prompt_token_ids: Sequence[int] | None = None,
                  priority: int = 0) -> pb.GenerateRequest:
    """A GenerateRequest with token ids when given, else the prompt text."""
    out = pb.GenerateRequest(request_id=request_id, sampling=sampling_to_pb(sampling),
                             priority=priority)
    if prompt_token_ids is not None:
        out.prompt_token_ids.ids.extend(prompt_token_ids)
    else:
        out.prompt = prompt or ""
    return out


# ---------------------------------------------------------------- responses


def chunk_to_pb(events: list[TokenEvent]) -> pb.GenerateResponse:
    """One chunk for the tokens a request produced since its last chunk (one per step when
    the stream keeps up; several when it fell behind)."""
    return pb.GenerateResponse(chunk=pb.Chunk(
        token_ids=[t for ev in events for t in ev.token_ids],
        text="".join(ev.text for ev in events),
        logprobs=[logprob_to_pb(lp) for ev in events for lp in ev.logprobs],
        prompt_logprobs=[logprob_to_pb(lp) for ev in events for lp in ev.prompt_logprobs]))


def complete_to_pb(ev: Finished, node: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(complete=pb.Complete(
        finish_reason=ev.reason.value, request_id=ev.request_id,
        usage=pb.Usage(prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens),
        ttft_ms=ev.ttft_ms, queue_ms=ev.queue_ms, served_by=f"{node}/{ev.instance}"))


# ---------------------------------------------------------------- KV export


def kv_to_chunks(kv: KVExport) -> Iterable[pb.KVChunk]:
    for i, block in enumerate(kv.blocks):
        yield pb.KVChunk(index=i, total=len(kv.blocks), dtype=kv.dtype,
                         block_shape=list(kv.block_shape), num_computed=kv.num_computed,
                         data=block, crc32=zlib.crc32(block), layout=kv.layout,
                         first_block=kv.first_block)


def kv_from_chunks(chunks: list[pb.KVChunk]) -> KVExport:
    """Reassemble an exported KV; raises ValueError unless every chunk arrived intact."""
    if not chunks:
        raise ValueError("no KV chunks")
    first = chunks[0]
    if [c.index for c in chunks] != list(range(first.total)) or len(chunks) != first.total:
        raise ValueError(f"KV chunks out of order or missing ({len(chunks)}/{first.total})")
    for c in chunks:
        if zlib.crc32(c.data) != c.crc32 or c.dtype != first.dtype \
                or c.first_block != first.first_block \
                or list(c.block_shape) != list(first.block_shape) or c.layout != first.layout:
            raise ValueError(f"KV chunk {c.index} is corrupt")
    order, row = KVFormat.parse_layout(first.layout)
    return KVExport(first.dtype, tuple(first.block_shape), first.num_computed,
                    tuple(c.data for c in chunks), f"{order}/{row}", first.first_block)


# ---------------------------------------------------------------- reconfigure


def layout_from_pb(req: pb.ReconfigureRequest) -> tuple[int, ...]:
    """The requested instance sizes, parsed once at the edge. Only emptiness is a wire error
    (INVALID_ARGUMENT); whether the node can form the layout is `flying_core.layout.validate`'s
    rule (FAILED_PRECONDITION), applied by the worker group."""
    if not req.instance_sizes:
        raise InvalidArgument("instance_sizes is empty")
    return tuple(req.instance_sizes)


def mode_from_pb(mode: int) -> PreemptMode:
    return PreemptMode.HARD if mode == pb.HARD else PreemptMode.SOFT


def reconfigure_to_pb(layout: Sequence[int], mode: PreemptMode,
                      deadline_ms: float = 0.0) -> pb.ReconfigureRequest:
    return pb.ReconfigureRequest(instance_sizes=list(layout), deadline_ms=deadline_ms,
                                 mode=pb.HARD if mode == PreemptMode.HARD else pb.SOFT)


def report_to_pb(r: SwitchReport) -> pb.ReconfigureResponse:
    return pb.ReconfigureResponse(instance_sizes=list(r.layout), switch_ms=r.switch_ms,
                                  migrated=r.migrated, recomputed=r.recomputed,
                                  drained=r.drained, kv_bytes_moved=r.kv_bytes_moved)


def report_from_pb(r: pb.ReconfigureResponse) -> SwitchReport:
    return SwitchReport(layout=tuple(r.instance_sizes), switch_ms=r.switch_ms,
                        migrated=r.migrated, recomputed=r.recomputed, drained=r.drained,
                        kv_bytes_moved=r.kv_bytes_moved)


# ---------------------------------------------------------------- status


def topology_to_pb(topo: Any) -> pb.Topology:
    """`topo`: an `agent.topology.Topology` (read by attribute: flying does not import agent)."""
    return pb.Topology(kind=topo.kind, note=topo.note, devices=[
        pb.Device(index=d.index, name=d.name, memory_total_bytes=d.memory_total,
                  memory_used_bytes=d.memory_used, nvlink_peers=list(d.nvlink_peers))
        for d in topo.devices])


def status_to_pb(st: GroupStatus | None, *, node: str, model: str, workers: int, state: str,
                 topology: pb.Topology, restarts: int) -> pb.NodeStatus:
    out = pb.NodeStatus(node=node, model=model, num_workers=workers, state=state,
                        topology=topology, restarts=restarts)
    if st is None:
        return out
    out.instance_sizes.extend(st.layout)
    out.possible_tp_sizes.extend(st.possible_tp_sizes)
    out.block_size, out.switches, out.max_model_len = st.block_size, st.switches, st.max_model_len
    for i in st.instances:
        out.instances.append(pb.InstanceStatus(
            index=i.index, workers=list(i.workers), tp_size=i.tp_size, waiting=i.waiting,
            running=i.running, kv_blocks_total=i.kv_blocks_total,
            kv_blocks_used=i.kv_blocks_used, max_context_tokens=i.max_context_tokens,
            available=i.available))
    for c in st.costs:
        out.costs.append(pb.LayoutCost(
            tp_size=c.tp_size, prefill_ms_per_token=c.prefill_ms_per_token,
            decode=[pb.StepCost(batch_size=b, decode_ms=ms) for b, ms in c.decode_ms.items()]))
    out.unplaced = st.unplaced
    out.unplaced_max_tokens = st.unplaced_max_tokens
    pc = st.prefix_cache
    out.prefix_cache.CopyFrom(pb.PrefixCacheStats(
        enabled=pc.enabled, query_tokens=pc.query_tokens, hit_tokens=pc.hit_tokens,
        cached_blocks=pc.cached_blocks, evictions=pc.evictions))
    return out


def status_from_pb(st: pb.NodeStatus) -> GroupStatus:
    return GroupStatus(
        state=st.state, layout=tuple(st.instance_sizes),
        instances=tuple(InstanceStatus(
            index=i.index, workers=tuple(i.workers), waiting=i.waiting, running=i.running,
            kv_blocks_total=i.kv_blocks_total, kv_blocks_used=i.kv_blocks_used,
            max_context_tokens=i.max_context_tokens, available=i.available)
            for i in st.instances),
        possible_tp_sizes=tuple(st.possible_tp_sizes), block_size=st.block_size,
        max_model_len=st.max_model_len,
        costs=tuple(LayoutCost(c.tp_size, c.prefill_ms_per_token,
                               {d.batch_size: d.decode_ms for d in c.decode})
                    for c in st.costs),
        switches=st.switches, restarts=st.restarts, unplaced=st.unplaced,
        unplaced_max_tokens=st.unplaced_max_tokens,
        prefix_cache=PrefixCacheStats(
            st.prefix_cache.enabled, st.prefix_cache.query_tokens, st.prefix_cache.hit_tokens,
            st.prefix_cache.cached_blocks, st.prefix_cache.evictions))
