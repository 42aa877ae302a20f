"""Model runner for one TP size on one worker: vLLM's model and attention backend, our batch.

Every rank of an instance runs the same `step` (SPMD); vLLM's layers reach the instance's
communicator through the TP globals that `tp_mode` sets. The leader (rank 0 of the instance)
samples; the others return nothing.
"""
from __future__ import annotations

import time

import torch
from vllm.config import set_current_vllm_config
from vllm.forward_context import set_forward_context
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadataBuilder
from vllm.v1.kv_cache_interface import FullAttentionSpec

from flying_core.batch import BatchBuffers
from flying_core.comm_pool import tp_mode
from flying_core.commands import SeqChunk
from flying_core.sampling import sample, token_logprobs
from flying_core.types import TokenLogprob


class ModelRunner:
    def __init__(self, model, cfg, group, kv_views: list[torch.Tensor], block_size: int,
                 vocab_size: int, device: str = "cpu", max_tokens: int = 512,
                 max_seqs: int = 32, max_blocks: int = 64):
        self.model, self.cfg, self.group = model, cfg, group
        self.block_size, self.vocab_size = block_size, vocab_size
        self.device = torch.device(device)
        sfc = cfg.compilation_config.static_forward_context
        self.layer_names = [k for k, v in sfc.items() if isinstance(v, Attention)]
        if len(self.layer_names) != len(kv_views):
            raise RuntimeError(f"{len(self.layer_names)} attention layers, "
                               f"{len(kv_views)} KV views")
        per_rank_heads = kv_views[0].shape[1]
        spec = FullAttentionSpec(block_size=block_size, num_kv_heads=per_rank_heads,
                                 head_size=kv_views[0].shape[-1] // 2,
                                 dtype=cfg.model_config.dtype)
        with set_current_vllm_config(cfg):
            self.builder = CPUAttentionMetadataBuilder(spec, self.layer_names, cfg, self.device)
        for name, view in zip(self.layer_names, kv_views):
            sfc[name].bind_kv_cache(view)
        self.kv_views = kv_views
        self.buffers = BatchBuffers(block_size, max_tokens, max_seqs, max_blocks)
        self.spans: dict[str, float] = {}   # last step's time by component (s), for profiles

    @property
    def is_leader(self) -> bool:
        return self.group.rank_in_group == 0

    @torch.inference_mode()
    def step(self, seqs: tuple[SeqChunk, ...]) -> list[tuple[str, int, TokenLogprob | None]]:
        """Compute every chunk's KV; return (request_id, token, its logprobs or None) for the
        chunks that sample."""
        t0 = time.perf_counter()
        b = self.buffers.fill(seqs)
        common = CommonAttentionMetadata(
            query_start_loc=b.query_start_loc, query_start_loc_cpu=b.query_start_loc,
            seq_lens=b.seq_lens, num_reqs=b.num_seqs, num_actual_tokens=b.num_tokens,
            max_query_len=b.max_query_len, max_seq_len=b.max_seq_len,
            block_table_tensor=b.block_table, slot_mapping=b.slot_mapping, causal=True,
            positions=b.positions)
        with set_current_vllm_config(self.cfg), tp_mode(self.group):
            t1 = time.perf_counter()
            md = self.builder.build(0, common)
            attn = dict.fromkeys(self.layer_names, md)
            slot_md = dict.fromkeys(self.layer_names, b.slot_mapping)
            t2 = time.perf_counter()
            with set_forward_context(attn, self.cfg, num_tokens=b.num_tokens,
                                     slot_mapping=slot_md):
                hidden = self.model(input_ids=b.input_ids.to(self.device),
                                    positions=b.positions.to(self.device))
                t3 = time.perf_counter()
                if not b.sampled:
                    return []
                logits = self.model.compute_logits(hidden[b.logits_rows.to(self.device)])
        t4 = time.perf_counter()
        if logits is None or not self.is_leader:
            return []
        logits = logits[:, :self.vocab_size].float().cpu()
        chosen = [seqs[i] for i in b.sampled]
        params = [s.sample for s in chosen]
        tokens = sample(logits, params, [s.start + len(s.token_ids) for s in chosen])
        lps = token_logprobs(logits, params, tokens)
        t5 = time.perf_counter()
        self.spans = {"batch": t1 - t0, "metadata": t2 - t1, "forward": t3 - t2,
                      "logits": t4 - t3, "sample": t5 - t4}
        return [(s.request_id, t, lp) for s, t, lp in zip(chosen, tokens, lps)]
