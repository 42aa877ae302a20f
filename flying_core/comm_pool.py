"""Communicator pool: every process group a layout can use, created once at start-up.

Group creation is collective over the whole world, so every rank builds every block in the
same order (layout.pool_blocks). A switch never creates a group: it only picks one and swaps
vLLM's TP globals around a step (`tp_mode`), which every collective inside vLLM's layers reads
through get_tp_group().
"""
from __future__ import annotations

import contextlib

import vllm.distributed.parallel_state as ps

from flying_core.device import tp_group_name
from flying_core.layout import pool_blocks


class CommunicatorPool:
    def __init__(self, num_workers: int, rank: int, sizes: tuple[int, ...], backend: str,
                 device: str = "cpu"):
        self.rank = rank
        self.groups: dict[int, ps.GroupCoordinator] = {}
        for size in sizes:
            ranks = [list(block) for block in pool_blocks(num_workers, (size,))]
            # the name turns on the fast all-reduce: CPU shared memory for "tp*", CUDA custom
            # all-reduce only for exactly "tp" (device.tp_group_name)
            self.groups[size] = ps.init_model_parallel_group(
                ranks, rank, backend, use_message_queue_broadcaster=False,
                group_name=tp_group_name(device, size))
        self.created = len(self.groups)

    def group(self, size: int) -> ps.GroupCoordinator:
        return self.groups[size]


@contextlib.contextmanager
def tp_mode(group: ps.GroupCoordinator):
    """Route vLLM's tensor-parallel collectives to `group` for the duration of the block."""
    old_tp, old_etp = ps._TP, getattr(ps, "_ETP", None)
    ps._TP = group
    if hasattr(ps, "_ETP"):
        ps._ETP = group
    try:
        yield
    finally:
        ps._TP = old_tp
        if hasattr(ps, "_ETP"):
            ps._ETP = old_etp
