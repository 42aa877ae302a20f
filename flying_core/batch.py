"""One step's batch arrays, computed with numpy into buffers allocated once per runner.

`BatchBuffers.fill(seqs)` turns the step's chunks into what vLLM's model and CPU attention
backend read: input ids, positions, slot mapping, query start locations, sequence lengths and
the padded block table, plus the rows whose logits are sampled. Everything is vectorised over
the step's tokens; the only per-chunk Python work is reading the chunk's tuples.

Hand-written (not vLLM's `InputBatch`/`BlockTable`): those keep persistent per-request state
that vLLM's scheduler updates incrementally, while our step commands carry each chunk whole;
this is the stateless half of the same idea (pre-allocated pinned-size arrays, numpy math).
The torch tensors in a `Batch` share memory with one staging buffer: they are valid until the
next `fill`, which is all one synchronous step needs; `on_device` gives the same batch on a GPU
through one host-to-device copy of that buffer (not one per array).

Two device-agnostic pieces a GPU step needs (pure too): `decode_first` orders the chunks the
way backends with a `reorder_batch_threshold` require (decodes first) and gives the inverse to
put outputs back in command order; `fill(..., pad_to=n)` pads a decode batch to a captured
CUDA-graph size the way vLLM's GPU runner does (slot -1, sequence length 0, empty queries).
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
    real_seqs: int = -1            # pad_to: the chunks before padding (-1: not padded)

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


class BatchBuffers:
    """Arrays sized for the largest step (tokens, chunks, blocks per chunk); a step that does
    not fit (a probe's long prompt, say) grows them once, never shrinks them."""

    def __init__(self, block_size: int, max_tokens: int, max_seqs: int, max_blocks: int,
                 pin: bool = False):
        self.block_size, self.pin = block_size, pin
        self._alloc(max_tokens, max_seqs, max_blocks)

    def _alloc(self, max_tokens: int, max_seqs: int, max_blocks: int) -> None:
        """One zeroed byte buffer (page-locked with `pin`, so a GPU step's host-to-device copy
        runs asynchronously) carved into typed torch views at 8-byte-aligned offsets, and the
        numpy arrays that alias them; `on_device` copies the whole buffer in one transfer."""
        self.max_tokens, self.max_seqs, self.max_blocks = max_tokens, max_seqs, max_blocks
        shapes = {"ids": (max_tokens, torch.int64), "pos": (max_tokens, torch.int64),
                  "slots": (max_tokens, torch.int64), "qsl": (max_seqs + 1, torch.int32),
                  "seq_lens": (max_seqs, torch.int32),
                  "table": ((max_seqs, max_blocks), torch.int32),
                  "rows": (max_seqs, torch.int64)}
        self._layout, end = {}, 0
        for k, (shape, dt) in shapes.items():
            shape = shape if isinstance(shape, tuple) else (shape,)
            nbytes = int(np.prod(shape)) * dt.itemsize
            self._layout[k] = (end, nbytes, shape, dt)
            end += -(-nbytes // 8) * 8
        self.host = torch.zeros(end, dtype=torch.uint8, pin_memory=self.pin)
        self._t = self._carve(self.host)
        for k, t in self._t.items():
            setattr(self, k, t.numpy())
        self._device_buf: torch.Tensor | None = None

    def _carve(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: buf[off:off + n].view(dt).view(shape)
                for k, (off, n, shape, dt) in self._layout.items()}

    def _fit(self, tokens: int, seqs: int, blocks: int) -> None:
        if tokens > self.max_tokens or seqs > self.max_seqs or blocks > self.max_blocks:
            self._alloc(max(tokens, self.max_tokens), max(seqs, self.max_seqs),
                        max(blocks, self.max_blocks))

    def fill(self, seqs: tuple[SeqChunk, ...], pad_to: int = 0) -> Batch:
        """The step's arrays; `pad_to` > len(seqs): a decode batch (one token per chunk)
        padded with empty sequences to that many tokens and sequences (CUDA-graph sizes)."""
        n = len(seqs)
        lens = np.fromiter((len(s.token_ids) for s in seqs), np.int64, n)
        starts = np.fromiter((s.start for s in seqs), np.int64, n)
        widths = np.fromiter((len(s.block_table) for s in seqs), np.int64, n)
        tokens = int(lens.sum())
        self._fit(max(tokens, pad_to), max(n, pad_to), int(widths.max()))
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
        real, max_query, max_seq = n, int(lens.max()), int(seq_lens.max())
        if pad_to > n:
            if tokens != n:
                raise ValueError("only a decode batch (one token per chunk) is padded")
            self._pad(n, pad_to)
            n = tokens = pad_to
        return self._batch(self._t, sampled, tokens, n, m, max_query, max_seq,
                           real if n != real else -1)

    def _batch(self, t: dict, sampled, tokens: int, n: int, m: int, max_query: int,
               max_seq: int, real: int) -> Batch:
        return Batch(t["ids"][:tokens], t["pos"][:tokens], t["slots"][:tokens],
                     t["qsl"][:n + 1], t["seq_lens"][:n], t["table"][:n], t["rows"][:m],
                     sampled, tokens, max_query, max_seq, real)

    def on_device(self, b: Batch, device: torch.device) -> Batch:
        """`b` (this buffer's last `fill`) on `device` through ONE host-to-device copy of the
        whole staging buffer (a few kB; asynchronous from page-locked memory), viewed with the
        same offsets. The caller synchronises before the next `fill` (a step ends by reading
        its logits back, or with a device synchronise)."""
        if device.type == "cpu":
            return b
        if self._device_buf is None or self._device_buf.shape != self.host.shape \
                or self._device_buf.device != device:
            self._device_buf = torch.empty_like(self.host, device=device)
        self._device_buf.copy_(self.host, non_blocking=True)
        n = b.seq_lens.shape[0]
        return self._batch(self._carve(self._device_buf), b.sampled, b.num_tokens, n,
                           b.logits_rows.shape[0], b.max_query_len, b.max_seq_len,
                           b.real_seqs)

    def _pad(self, n: int, size: int) -> None:
        """Sequences n..size-1 (and their tokens): no query, no context, writing nowhere."""
        self.ids[n:size] = 0
        self.pos[n:size] = 0
        self.slots[n:size] = -1
        self.qsl[n + 1:size + 1] = self.qsl[n]
        self.seq_lens[n:size] = 0
        self.table[n:size] = 0


def decode_first(seqs: tuple[SeqChunk, ...], threshold: int = 1):
    """(order, inverse): `order` lists chunk indices with decodes (at most `threshold` new
    tokens) first, prefills after, each group in command order; `inverse[i]` is where chunk i
    went, so `[out[inverse[i]] for i in range(n)]` restores command order."""
    prefill = np.fromiter((len(s.token_ids) > threshold for s in seqs), np.int8, len(seqs))
    order = np.argsort(prefill, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(seqs))
    return order, inverse


def graph_size(num_seqs: int, captured: tuple[int, ...]) -> int | None:
    """The smallest captured decode-graph batch size that holds `num_seqs`, or None (eager)."""
    fits = [c for c in captured if c >= num_seqs]
    return min(fits) if fits else None
