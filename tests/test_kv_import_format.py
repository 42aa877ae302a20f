"""A node adopting transferred KV by its format: same format imported as is, the other
kernels' row format converted (exact), another dtype recomputed. Real BlockPool, Instances
and Transfers; the worker pipes are a list that records what would be sent."""
from __future__ import annotations

import numpy as np

from flying_core.block_pool import BlockPool
from flying_core.commands import ImportCmd
from flying_core.handoff import HandoffStats
from flying_core.instances import Instances
from flying_core.kv_format import ROW_K_THEN_V, ROW_KV_TOKEN, KVFormat, convert_block
from flying_core.request import Request
from flying_core.scheduler import Budget
from flying_core.transfer import Transfers
from flying_core.types import KVExport, RequestSpec, SamplingSpec, WorkerInfo

L, H, D, BS = 2, 4, 8, 32


class Pipes:
    """Records the commands the Sequencer would write to each worker's pipe."""

    def __init__(self):
        self.sent: list[tuple[list[int], object]] = []
        self.ticket = 0

    def next_ticket(self) -> int:
        self.ticket += 1
        return self.ticket

    def send(self, workers, cmd) -> None:
        self.sent.append((list(workers), cmd))


def node(row: str):
    info = WorkerInfo(rank=0, num_blocks=16, num_layers=L, num_heads=8, num_kv_heads=H,
                      head_size=D, vocab_size=100, sizes=(1, 2), dtype="float32",
                      max_model_len=512, kv_pool_bytes=0, kv_ptr=0, kv_view_ptrs={},
                      view_report={}, packed_gemm_bytes=0, groups_created=2, load_s=0,
                      warm_s=0, pid=0, rss_bytes=0, kv_row=row)
    pool = BlockPool(1, 16)
    instances = Instances(pool, BS, Budget(64, 8), (1,))
    pipes = Pipes()
    return Transfers(pipes, pool, instances, info, BS, HandoffStats()), pipes


def request():
    spec = RequestSpec("r", tuple(range(3, 44)), SamplingSpec(max_tokens=4))   # 41 tokens
    return Request(spec, lambda ev: None, 0, None)


def export(row: str, dtype=np.float32, dtype_name="float32"):
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((L, H, BS * 2 * D)).astype(dtype) for _ in range(2)]
    kv = KVExport(dtype_name, (L, H, BS * 2 * D), 40, tuple(b.tobytes() for b in blocks),
                  KVFormat(dtype_name, (L, H, BS * 2 * D), row=row).layout)
    return kv, blocks


def imported_rows(pipes) -> np.ndarray:
    (workers, cmd), = pipes.sent
    assert workers == [0] and isinstance(cmd, ImportCmd)
    return np.frombuffer(cmd.data, np.float32).reshape(L, -1, BS * 2 * D)


def test_same_format_is_imported_as_is():
    transfers, pipes = node(ROW_K_THEN_V)
    kv, blocks = export(ROW_K_THEN_V)
    assert transfers.adopt(request(), kv, switching=False)
    rows = imported_rows(pipes)                       # one worker: block i head k -> row i*H+k
    assert np.array_equal(rows.reshape(L, 2, H, -1).transpose(1, 0, 2, 3), np.stack(blocks))


def test_cuda_rows_are_converted_for_cpu_kernels():
    transfers, pipes = node(ROW_K_THEN_V)
    kv, blocks = export(ROW_KV_TOKEN)
    assert transfers.adopt(request(), kv, switching=False)
    got = imported_rows(pipes).reshape(L, 2, H, -1).transpose(1, 0, 2, 3)
    want = np.stack([convert_block(b, ROW_KV_TOKEN, ROW_K_THEN_V, D) for b in blocks])
    assert np.array_equal(got, want) and not np.array_equal(got, np.stack(blocks))
    assert transfers.stats.imported == 1 and transfers.stats.recomputed == 0


def test_another_dtype_is_recomputed():
    transfers, pipes = node(ROW_KV_TOKEN)
    kv, _ = export(ROW_KV_TOKEN, np.float16, "float16")
    assert not transfers.adopt(request(), kv, switching=False)
    assert pipes.sent == [] and transfers.stats.recomputed == 1
