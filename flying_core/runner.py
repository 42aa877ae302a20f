"""Model runner for one TP size on one worker: vLLM's model and attention backend, our batch.

Every rank of an instance runs the same `step` (SPMD); vLLM's layers reach the instance's
communicator through the TP globals that `tp_mode` sets. The leader (rank 0 of the instance)
samples; the others return nothing.

Device-agnostic: the attention metadata builder is the one of the backend the model's own
`Attention` layers were built with (attn_backend.py: CPU_ATTN on CPU, FLASH_ATTN / TRITON_ATTN
on CUDA, pinned per worker). On a GPU the batch arrays are filled in one page-locked staging
buffer and reach the device in one asynchronous copy; `query_start_loc_cpu` stays on the host.
"""
from __future__ import annotations

import time

import torch
from vllm.config import set_current_vllm_config
from vllm.forward_context import set_forward_context
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.kv_cache_interface import FullAttentionSpec

from flying_core.attn_backend import layer_backend
from flying_core.batch import BatchBuffers, decode_first
from flying_core.comm_pool import tp_mode
from flying_core.commands import SeqChunk
from flying_core.sampling import prompt_logprobs, sample, token_logprobs
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
        backend = layer_backend(sfc[n] for n in self.layer_names)
        self.backend_name = backend.get_name()
        with set_current_vllm_config(cfg):
            self.builder = backend.get_builder_cls()(spec, self.layer_names, cfg, self.device)
        # backends that need decodes first say so (vLLM's gpu_model_runner reorders likewise)
        self.reorder = getattr(self.builder, "reorder_batch_threshold", None)
        for name, view in zip(self.layer_names, kv_views):
            sfc[name].bind_kv_cache(view)
        self.kv_views = kv_views
        self.on_gpu = self.device.type == "cuda"
        self.buffers = BatchBuffers(block_size, max_tokens, max_seqs, max_blocks,
                                    pin=self.on_gpu)
        self.spans: dict[str, float] = {}   # last step's time by component (s), for profiles

    @property
    def is_leader(self) -> bool:
        return self.group.rank_in_group == 0

    @torch.inference_mode()
    def step(self, seqs: tuple[SeqChunk, ...]) -> list[tuple[str, int, TokenLogprob | None]]:
        """Compute every chunk's KV; return (request_id, token, its logprobs or None) for the
        chunks that sample. The prompt logprobs of chunks with targets are left in
        `self.prompt_out` [(request_id, one TokenLogprob per target)] (leader only)."""
        self.prompt_out: list[tuple[str, tuple[TokenLogprob, ...]]] = []
        t0 = time.perf_counter()
        order = None
        if self.reorder is not None and len(seqs) > 1:
            order, _ = decode_first(seqs, self.reorder)
            seqs = tuple(seqs[i] for i in order)
        b = self.buffers.fill(seqs)
        d = self.buffers.on_device(b, self.device)     # one host-to-device copy on a GPU
        common = CommonAttentionMetadata(
            query_start_loc=d.query_start_loc, query_start_loc_cpu=b.query_start_loc,
            seq_lens=d.seq_lens, num_reqs=b.num_seqs, num_actual_tokens=b.num_tokens,
            max_query_len=b.max_query_len, max_seq_len=b.max_seq_len,
            block_table_tensor=d.block_table, slot_mapping=d.slot_mapping,
            causal=True, positions=d.positions)
        with set_current_vllm_config(self.cfg), tp_mode(self.group):
            t1 = time.perf_counter()
            md = self.builder.build(0, common)
            attn = dict.fromkeys(self.layer_names, md)
            slot_md = dict.fromkeys(self.layer_names, common.slot_mapping)
            t2 = time.perf_counter()
            with set_forward_context(attn, self.cfg, num_tokens=b.num_tokens,
                                     slot_mapping=slot_md):
                hidden = self.model(input_ids=d.input_ids, positions=common.positions)
                t3 = time.perf_counter()
                self._prompt_logprobs(seqs, b, hidden)
                if not b.sampled:
                    return self._done([])
                logits = self.model.compute_logits(hidden[d.logits_rows])
        t4 = time.perf_counter()
        if logits is None or not self.is_leader:
            return self._done([])
        logits = logits[:, :self.vocab_size].float().cpu()
        chosen = [seqs[i] for i in b.sampled]
        params = [s.sample for s in chosen]
        tokens = sample(logits, params, [s.start + len(s.token_ids) for s in chosen])
        lps = token_logprobs(logits, params, tokens)
        t5 = time.perf_counter()
        self.spans = {"batch": t1 - t0, "metadata": t2 - t1, "forward": t3 - t2,
                      "logits": t4 - t3, "sample": t5 - t4}
        out = [(s.request_id, t, lp) for s, t, lp in zip(chosen, tokens, lps)]
        if order is not None:      # back to command order (sampling is per row, stateless)
            out = [o for _, o in sorted(zip((order[i] for i in b.sampled), out))]
        return out

    def _prompt_logprobs(self, seqs: tuple[SeqChunk, ...], b, hidden: torch.Tensor) -> None:
        """Logits of the positions whose next prompt token a chunk asks the logprob of (only
        those chunks': the others cost nothing); every rank joins the TP gather."""
        asking = [(i, s) for i, s in enumerate(seqs) if s.targets]
        if not asking:
            return
        starts = b.query_start_loc.tolist()
        rows = torch.cat([torch.arange(starts[i], starts[i] + len(s.targets))
                          for i, s in asking])
        logits = self.model.compute_logits(hidden[self._on_device(rows)])
        if logits is None or not self.is_leader:
            return
        logits = logits[:, :self.vocab_size].float().cpu()
        got = prompt_logprobs(logits, [s.targets for _, s in asking],
                              [s.prompt_k for _, s in asking])
        self.prompt_out = [(s.request_id, lps) for (_, s), lps in zip(asking, got)]

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        """A batch array where the model reads it: the host buffer itself on CPU, an
        asynchronous copy from the page-locked buffer on a GPU."""
        return t.to(self.device, non_blocking=True) if self.on_gpu else t

    def _done(self, out: list) -> list:
        """Non-leader ranks on a GPU wait for their kernels: peers read the pool next, and
        the step time must be the real one."""
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
        return out
