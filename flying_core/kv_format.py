"""The byte format of a KV row, how each attention backend reads it, and conversion. Pure.

The pool is `[L, NB, H, Bs * 2D]`, vLLM's `LBHNC` ("HND") order; its tp=s layer view is
`[NB * s, H / s, Bs, 2D]` (kv_pool.KVPool.layer_views). Inside one (block, head) row of
`Bs * 2D` values the backends disagree:
  ROW_K_THEN_V   CPU_ATTN: K[Bs, D] then V[Bs, D]
                 (cpu_attn.py: `view(N, H, 2 * Bs, D).chunk(2, dim=2)`)
  ROW_KV_TOKEN   FLASH_ATTN / TRITON_ATTN: per token [K_D | V_D]
                 (flash_attn.py, triton_attn.py: `transpose(1, 2).split(D, dim=-1)`)
Moves inside a node copy whole rows and never care. A cross-node transfer carries the format
(`KVFormat`) so the receiver converts the rows (`convert_block`) or recomputes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # no torch or numpy import: the router (flying.wire) reads KVFormat too
    import numpy as np
    import torch

LAYOUT_ORDER = "LBHNC"          # vLLM KVCacheLayout name of the pool's order
ROW_K_THEN_V = "k_then_v"       # CPU kernels
ROW_KV_TOKEN = "kv_per_token"   # CUDA kernels
ROWS = (ROW_K_THEN_V, ROW_KV_TOKEN)


def row_format(device: str) -> str:
    return ROW_K_THEN_V if device.split(":")[0] == "cpu" else ROW_KV_TOKEN


@dataclass(frozen=True)
class KVFormat:
    """What a transferred KV block's bytes mean: element type, block shape, memory order."""
    dtype: str                         # float32 | float16 | bfloat16
    block_shape: tuple[int, int, int]  # (L, H, Bs * 2D)
    order: str = LAYOUT_ORDER
    row: str = ROW_K_THEN_V

    @property
    def layout(self) -> str:
        """The order and row format as one token, e.g. "LBHNC/k_then_v" (the wire field)."""
        return f"{self.order}/{self.row}"

    @staticmethod
    def parse_layout(layout: str) -> tuple[str, str]:
        """(order, row) of a layout token; "" (a sender that predates the field) is the
        CPU format, the only one such a sender could produce."""
        if not layout:
            return LAYOUT_ORDER, ROW_K_THEN_V
        order, _, row = layout.partition("/")
        return order, row

    def convertible_to(self, other: KVFormat) -> bool:
        """Same values, only the row order differs (a transpose turns one into the other)."""
        return (self.dtype, tuple(self.block_shape), self.order) == (
            other.dtype, tuple(other.block_shape), other.order) and {self.row, other.row} <= set(
            ROWS)


def convert_block(block: np.ndarray, src_row: str, dst_row: str, head_size: int) -> np.ndarray:
    """A block `[L, H, Bs * 2D]` with rows in `src_row` format, rewritten in `dst_row`
    (the transpose `(2, Bs, D) <-> (Bs, 2, D)` of every row; exact, any dtype)."""
    if src_row == dst_row:
        return block
    L, H, X = block.shape
    bs = X // (2 * head_size)
    if src_row == ROW_K_THEN_V and dst_row == ROW_KV_TOKEN:
        rows = block.reshape(L, H, 2, bs, head_size).transpose(0, 1, 3, 2, 4)
    elif src_row == ROW_KV_TOKEN and dst_row == ROW_K_THEN_V:
        rows = block.reshape(L, H, bs, 2, head_size).transpose(0, 1, 3, 2, 4)
    else:
        raise ValueError(f"unknown KV row formats {src_row!r} -> {dst_row!r}")
    return rows.copy(order="C").reshape(L, H, X)


def split_kv(layer_view: torch.Tensor, row: str) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one layer view `[N, h, Bs, 2D]` as the backend of `row` sees them, views of
    the same storage: CUDA `[N, Bs, h, D]` each (FlashAttention's logical shape, strided),
    CPU `[N, h, Bs, D]` each."""
    n, h, bs, two_d = layer_view.shape
    d = two_d // 2
    if row == ROW_KV_TOKEN:
        k, v = layer_view.transpose(1, 2).split(d, dim=-1)
        return k, v
    if row == ROW_K_THEN_V:
        k, v = layer_view.view(n, h, 2 * bs, d).chunk(2, dim=2)
        return k, v
    raise ValueError(f"unknown KV row format {row!r}")


def format_of(kv) -> KVFormat:
    """The format a received `types.KVExport` declares."""
    order, row = KVFormat.parse_layout(kv.layout)
    return KVFormat(kv.dtype, tuple(kv.block_shape), order, row)


USE, CONVERT, RECOMPUTE = "use", "convert", "recompute"


def import_action(sent: KVFormat, own: KVFormat) -> str:
    """What a receiver does with transferred KV: use the bytes as they are, convert the rows
    (CPU <-> CUDA kernels: same values, rows transposed), or recompute the request from its
    tokens (another dtype, block shape or memory order)."""
    if sent == own:
        return USE
    if sent.convertible_to(own):
        return CONVERT
    return RECOMPUTE
