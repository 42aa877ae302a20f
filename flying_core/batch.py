"""One step's batch arrays, computed with numpy into buffers allocated once per runner.

`BatchBuffers.fill(seqs)` turns the step's chunks into what vLLM's model and CPU attention
backend read: input ids, positions, slot mapping, query start locations, sequence lengths and
the padded block table, plus the rows whose logits are sampled. Everything is vectorised over
the step's tokens; the only per-chunk Python work is reading the chunk's tuples.

Hand-written (not vLLM's `InputBatch`/`BlockTable`): those keep persistent per-request state
that vLLM's scheduler updates incrementally, while our step commands carry each chunk whole;
this is the stateless half of the same idea (pre-allocated pinned-size arrays, numpy math).
The torch tensors in a `Batch` share memory with the buffers: they are valid until the next
`fill`, which is all one synchronous step needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from flying_core.commands import SeqChunk


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor        # [T] int64
    positions: torch.Tensor        # [T] int64
    slot_mapping: torch.Tensor     # [T] int64
    query_start_loc: torch.Tensor  # [n + 1] int32
    seq_lens: torch.Tensor         # [n] int32
    block_table: torch.Tensor      # [n, max_blocks] int32, zero past each chunk's table
    logits_rows: torch.Tensor      # [m] int64: last token of each chunk that samples
    sampled: tuple[int, ...]       # indices of those chunks in seqs
    num_tokens: int
    max_query_len: int
    max_seq_len: int

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


class BatchBuffers:
    """Arrays sized for the largest step (tokens, chunks, blocks per chunk); a step that does
    not fit (a probe's long prompt, say) grows them once, never shrinks them."""

    def __init__(self, block_size: int, max_tokens: int, max_seqs: int, max_blocks: int):
        self.block_size = block_size
        self._alloc(max_tokens, max_seqs, max_blocks)

    def _alloc(self, max_tokens: int, max_seqs: int, max_blocks: int) -> None:
        self.max_tokens, self.max_seqs, self.max_blocks = max_tokens, max_seqs, max_blocks
        self.ids = np.zeros(max_tokens, np.int64)
        self.pos = np.zeros(max_tokens, np.int64)
        self.slots = np.zeros(max_tokens, np.int64)
        self.qsl = np.zeros(max_seqs + 1, np.int32)
        self.seq_lens = np.zeros(max_seqs, np.int32)
        self.table = np.zeros((max_seqs, max_blocks), np.int32)
        self.rows = np.zeros(max_seqs, np.int64)
        self._t = {k: torch.from_numpy(getattr(self, k))
                   for k in ("ids", "pos", "slots", "qsl", "seq_lens", "table", "rows")}

    def _fit(self, tokens: int, seqs: int, blocks: int) -> None:
        if tokens > self.max_tokens or seqs > self.max_seqs or blocks > self.max_blocks:
            self._alloc(max(tokens, self.max_tokens), max(seqs, self.max_seqs),
                        max(blocks, self.max_blocks))

    def fill(self, seqs: tuple[SeqChunk, ...]) -> Batch:
        n = len(seqs)
        lens = np.fromiter((len(s.token_ids) for s in seqs), np.int64, n)
        starts = np.fromiter((s.start for s in seqs), np.int64, n)
        widths = np.fromiter((len(s.block_table) for s in seqs), np.int64, n)
        tokens = int(lens.sum())
        self._fit(tokens, n, int(widths.max()))
        bs = self.block_size

        qsl = self.qsl[:n + 1]
        qsl[0] = 0
        np.cumsum(lens, out=qsl[1:])
        seq_lens = self.seq_lens[:n]
        np.add(starts, lens, out=seq_lens, casting="unsafe")

        table = self.table[:n]
        table.fill(0)
        flat = np.fromiter(chain.from_iterable(s.block_table for s in seqs), np.int32,
                           int(widths.sum()))
        table[np.arange(self.max_blocks) < widths[:, None]] = flat

        ids, pos, slots = self.ids[:tokens], self.pos[:tokens], self.slots[:tokens]
        ids[:] = np.fromiter(chain.from_iterable(s.token_ids for s in seqs), np.int64, tokens)
        row = np.repeat(np.arange(n), lens)
        np.add(np.arange(tokens) - qsl[:-1][row], starts[row], out=pos)
        np.add(table[row, pos // bs].astype(np.int64) * bs, pos % bs, out=slots)

        sampled = tuple(i for i, s in enumerate(seqs) if s.sample is not None)
        m = len(sampled)
        self.rows[:m] = qsl[1:][list(sampled)] - 1
        t = self._t
        return Batch(t["ids"][:tokens], t["pos"][:tokens], t["slots"][:tokens],
                     t["qsl"][:n + 1], t["seq_lens"][:n], t["table"][:n], t["rows"][:m],
                     sampled, tokens, int(lens.max()), int(seq_lens.max()))
