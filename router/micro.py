"""Micro-requests at the router: where to split a request (same node or another node), and
the second segment of a cross-node split (the request resumed on node B with A's KV)."""
from __future__ import annotations

from flying.v1 import flying_pb2 as pb
from router.split_policy import Side, choose_split
from router.views import NodeView


def _side(view: NodeView, inst) -> Side | None:
    costs = {c.tp_size: c for c in view.status.costs}
    cost = costs.get(inst.tp_size)
    if cost is None or not cost.decode_ms:
        return None
    return Side(cost, inst.running, (inst.running + inst.waiting) * cost.step_ms(inst.running + 1),
                inst.waiting)


def plan_split(req: pb.GenerateRequest, views: list[NodeView], node: str, instance: int
               ) -> str | None:
    """Set req.split when a split pays off (split_policy); returns the node of the second
    segment when it is another node (cross-node: the router resumes it there)."""
    req.ClearField("split")
    n_prompt = len(req.prompt_token_ids.ids)
    home = next((v for v in views if v.name == node and v.serving), None)
    if home is None or n_prompt == 0 or instance >= len(home.status.instances):
        return None
    a = _side(home, home.status.instances[instance])
    if a is None:
        return None
    best = None
    for v in views:
        if not v.serving:
            continue
        for inst in v.status.instances:
            if not inst.available or (v.name == node and inst.index == instance):
                continue
            b = _side(v, inst)
            if b is None:
                continue
            d = choose_split(n_prompt, req.sampling.max_tokens, a, b)
            key = (d.makespan_ms, v.name != node)     # prefer the same node on ties
            if d.split and (best is None or key < best[0]):
                best = (key, d, v.name, inst.index)
    if best is None:
        return None
    _, d, target, index = best
    req.split.handoff_at = n_prompt + d.d
    if target == node:
        req.split.to_instance = index
        return None
    req.split.remote = True
    return target


def penalized(s: pb.SamplingParams) -> bool:
    """Requests whose sampling depends on which tokens are output, not prompt: vLLM's
    presence/frequency penalties count output tokens only, and a structured output's grammar
    state lives with the request. A segment that carries the output so far as its prompt
    would lose that, so such requests are not split across nodes (repetition_penalty counts
    prompt and output alike: no matter). Nor are requests for prompt logprobs: the prompt's
    logits are computed once, on the node that computes the whole prompt."""
    return (s.presence_penalty != 0.0 or s.frequency_penalty != 0.0
            or s.HasField("structured") or s.HasField("prompt_logprobs"))


def resume_request(req: pb.GenerateRequest, produced: list[int], from_agent: str
                   ) -> pb.GenerateRequest:
    """The second segment: every token so far as the prompt, A's KV pulled by B."""
    cont = pb.GenerateRequest(request_id=f"{req.request_id}-b", priority=req.priority)
    cont.sampling.CopyFrom(req.sampling)
    cont.sampling.max_tokens = req.sampling.max_tokens - len(produced)
    cont.sampling.min_tokens = max(0, req.sampling.min_tokens - len(produced))
    cont.sampling.ClearField("prompt_logprobs")     # sent with the first segment's token
    cont.prompt_token_ids.ids.extend([*req.prompt_token_ids.ids, *produced])
    cont.continued_tokens = req.continued_tokens + len(produced)
    cont.resume.from_agent = from_agent
    cont.resume.request_id = req.request_id
    return cont


def continue_request(req: pb.GenerateRequest, produced: list[int], attempt: int
                     ) -> pb.GenerateRequest:
    """The rest of a request whose node died after it streamed `produced`: every token so far
    as the prompt, recomputed wherever it lands (no KV to pull from a dead node)."""
    cont = pb.GenerateRequest()
    cont.CopyFrom(req)
    cont.request_id = f"{req.request_id.split('~')[0]}~{attempt}"
    cont.ClearField("instance")
    cont.sampling.max_tokens = req.sampling.max_tokens - len(produced)
    cont.sampling.min_tokens = max(0, req.sampling.min_tokens - len(produced))
    if produced:
        cont.sampling.ClearField("prompt_logprobs")  # sent with the first token already
    cont.prompt_token_ids.ids.extend(produced)
    cont.continued_tokens = req.continued_tokens + len(produced)
    return cont


def merge_complete(first: pb.Complete, last: pb.Complete, n_prompt: int, produced: int
                   ) -> pb.GenerateResponse:
    out = pb.Complete()
    out.CopyFrom(last)
    out.request_id = first.request_id
    out.usage.prompt_tokens = n_prompt
    out.usage.completion_tokens = produced + last.usage.completion_tokens
    out.ttft_ms, out.queue_ms = first.ttft_ms, first.queue_ms
    return pb.GenerateResponse(complete=out)
