"""Model runner for one TP size on one worker: vLLM's model and attention backend, our batch.

Every rank of an instance runs the same `step` (SPMD); vLLM's layers reach the instance's
communicator through the TP globals that `tp_mode` sets. The leader (rank 0 of the instance)
samples; the others return nothing.
"""
from __future__ import annotations

import torch
from vllm.config import set_current_vllm_config
from vllm.forward_context import set_forward_context
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadataBuilder
from vllm.v1.kv_cache_interface import FullAttentionSpec

from flying_core.comm_pool import tp_mode
from flying_core.commands import SeqChunk
from flying_core.sampling import sample


class ModelRunner:
    def __init__(self, model, cfg, group, kv_views: list[torch.Tensor], block_size: int,
                 vocab_size: int, device: str = "cpu"):
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

    @property
    def is_leader(self) -> bool:
        return self.group.rank_in_group == 0

    def _metadata(self, seqs: tuple[SeqChunk, ...]):
        bs = self.block_size
        ids, pos, slots, qsl, seq_lens = [], [], [], [0], []
        for s in seqs:
            p = range(s.start, s.start + len(s.token_ids))
            ids += s.token_ids
            pos += p
            slots += [s.block_table[x // bs] * bs + x % bs for x in p]
            qsl.append(qsl[-1] + len(s.token_ids))
            seq_lens.append(s.start + len(s.token_ids))
        width = max(len(s.block_table) for s in seqs)
        table = torch.zeros(len(seqs), width, dtype=torch.int32)
        for i, s in enumerate(seqs):
            table[i, :len(s.block_table)] = torch.tensor(s.block_table, dtype=torch.int32)
        qsl_t = torch.tensor(qsl, dtype=torch.int32)
        slot_t = torch.tensor(slots, dtype=torch.int64)
        pos_t = torch.tensor(pos, dtype=torch.int64)
        common = CommonAttentionMetadata(
            query_start_loc=qsl_t, query_start_loc_cpu=qsl_t,
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32), num_reqs=len(seqs),
            num_actual_tokens=len(ids), max_query_len=max(len(s.token_ids) for s in seqs),
            max_seq_len=max(seq_lens), block_table_tensor=table, slot_mapping=slot_t,
            causal=True, positions=pos_t)
        return torch.tensor(ids, dtype=torch.long), pos_t, slot_t, common, qsl

    @torch.inference_mode()
    def step(self, seqs: tuple[SeqChunk, ...]) -> list[tuple[str, int]]:
        """Compute every chunk's KV; return (request_id, token) for chunks that sample."""
        ids, pos, slots, common, qsl = self._metadata(seqs)
        want = [i for i, s in enumerate(seqs) if s.sample is not None]
        with set_current_vllm_config(self.cfg), tp_mode(self.group):
            md = self.builder.build(0, common)
            attn = {n: md for n in self.layer_names}
            slot_md = {n: slots for n in self.layer_names}
            with set_forward_context(attn, self.cfg, num_tokens=len(ids), slot_mapping=slot_md):
                hidden = self.model(input_ids=ids.to(self.device),
                                    positions=pos.to(self.device))
                if not want:
                    return []
                last = torch.tensor([qsl[i + 1] - 1 for i in want], dtype=torch.long)
                logits = self.model.compute_logits(hidden[last.to(self.device)])
        if logits is None or not self.is_leader:
            return []
        logits = logits[:, :self.vocab_size].float().cpu()
        params = [seqs[i].sample for i in want]
        positions = [seqs[i].start + len(seqs[i].token_ids) for i in want]
        tokens = sample(logits, params, positions)
        return [(seqs[i].request_id, t) for i, t in zip(want, tokens)]
