"""The one place where proto types meet the router's plain types."""
from __future__ import annotations

from agent.convert import sampling_to_pb
from flying.v1 import flying_pb2 as pb
from flying_core.types import GroupStatus, InstanceStatus, LayoutCost
from router.backend import GatewayRequest


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
        unplaced_max_tokens=st.unplaced_max_tokens)


def gateway_to_pb(req: GatewayRequest) -> pb.GenerateRequest:
    out = pb.GenerateRequest(request_id=req.request_id, sampling=sampling_to_pb(req.sampling),
                             priority=req.priority)
    if req.prompt_token_ids is not None:
        out.prompt_token_ids.ids.extend(req.prompt_token_ids)
    else:
        out.prompt = req.prompt or ""
    return out
