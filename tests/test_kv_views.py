"""The pool's K/V views as each attention backend reads them, checked on CPU tensors.

The CUDA kernels' split (`transpose(1, 2).split(D, -1)` of a tp=s layer view) is checked for
aliasing, strides and the byte map; a paged attention in plain torch over those views equals
SDPA, and stays exact per head group after a tp1 -> tp2 move done by the pool's own pack and
unpack. The reference attention and the independent view code come from bench/gpu_check.py
(the script the GPU runs), so these tests also check that script's own checks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import gpu_check as ref
from flying_core.kv_format import ROW_K_THEN_V, ROW_KV_TOKEN, convert_block, split_kv
from flying_core.kv_plan import moves_for, plan_moves, tp_block_id
from flying_core.kv_pool import KVPool

L, NB, H, BS, D, HQ = 2, 16, 4, 16, 32, 8


def pool(dtype=torch.float32, fill=True) -> KVPool:
    p = KVPool(L, NB, H, BS, D, dtype)
    if fill:
        p.buf.copy_((torch.arange(p.buf.numel()) % 251).to(dtype).view(p.shape))
    return p


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_cuda_split_views_alias_the_pool_with_the_kernels_strides(dtype, tp):
    p = pool(dtype)
    hs, item = H // tp, p.buf.element_size()
    for layer, (view, (k, v)) in enumerate(zip(p.layer_views(tp),
                                               [split_kv(x, ROW_KV_TOKEN)
                                                for x in p.layer_views(tp)])):
        assert k.untyped_storage().data_ptr() == p.buf.untyped_storage().data_ptr()
        assert v.data_ptr() == k.data_ptr() + D * item
        assert k.shape == v.shape == (NB * tp, BS, hs, D)
        assert k.stride() == v.stride() == (hs * BS * 2 * D, 2 * D, BS * 2 * D, 1)
        assert all(s * item % 16 == 0 for s in k.stride()[:-1])
        # byte map: K[t, n, j] == pool[l, t // tp, (t % tp) * hs + j, n*2D : n*2D + D]
        for t in (0, 1, NB * tp - 1):
            for n in (0, BS - 1):
                for j in range(hs):
                    row = p.buf[layer, t // tp, (t % tp) * hs + j]
                    assert torch.equal(k[t, n, j], row[n * 2 * D:n * 2 * D + D])
                    assert torch.equal(v[t, n, j], row[n * 2 * D + D:(n + 1) * 2 * D])
        # the same split as the GPU script's, and no copy anywhere
        rk, rv = ref.split_cuda(ref.views(p.buf, tp, D)[layer])
        assert torch.equal(k, rk) and k.data_ptr() == rk.data_ptr()
        assert view.data_ptr() == p.buf[layer].data_ptr()


def test_cpu_split_is_k_block_then_v_block():
    p = pool()
    k, v = split_kv(p.layer_views(2)[1], ROW_K_THEN_V)
    assert k.shape == (NB * 2, H // 2, BS, D)
    row = p.buf[1, 3, 1 * (H // 2) + 1]                    # TP block 7 = DP block 3, slot 1
    assert torch.equal(k[7, 1].reshape(-1), row[:BS * D])
    assert torch.equal(v[7, 1].reshape(-1), row[BS * D:])
    assert p.row == ROW_K_THEN_V and torch.equal(p.kv_split(2)[1][0], k)


def test_a_write_through_the_split_view_lands_in_the_pool():
    p = pool(fill=False)
    k, v = split_kv(p.layer_views(2)[0], ROW_KV_TOKEN)
    slots = torch.tensor([5 * BS + 3, 0])
    ref.write_kv(k, v, slots, torch.ones(2, H // 2, D), torch.full((2, H // 2, D), 2.0))
    # TP block 5 = DP block 2, head slot 1 -> heads 2, 3 of DP block 2; token 3
    row = p.buf[0, 2, 2].view(BS, 2 * D)
    assert row[3, :D].eq(1).all() and row[3, D:].eq(2).all() and row[2].eq(0).all()
    assert p.buf.sum().item() == 2 * (H // 2) * D * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_over_the_views_equals_sdpa(dtype):
    p = pool(dtype, fill=False)
    k_cache, v_cache = split_kv(p.layer_views(1)[0], ROW_KV_TOKEN)
    rng = torch.Generator().manual_seed(1)
    seqs = ref._fill_sequences(k_cache, v_cache, rng, [1, 15, 33, 70], HQ, dtype, "cpu")
    for table, k, v, q, start in seqs:
        got = ref.paged_attention(q, k_cache, v_cache, table, start, D ** -0.5)
        want = ref.sdpa(q, k, v, start, D ** -0.5)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # a wrong table reads other tokens: the check can fail
        if len(table) > 1:
            bad = ref.paged_attention(q, k_cache, v_cache, table[::-1], start, D ** -0.5)
            assert not torch.allclose(bad, want, atol=1e-3)


def test_per_head_group_attention_equal_after_a_tp1_to_tp2_move():
    """Two workers' pools; a request at home (0, b) on tp=1 moves to the tp=2 instance (0, 2)
    by kv_plan's plan, carried out with the pool's own pack/unpack; each rank's attention over
    its tp=2 views, concatenated over heads, equals tp=1 attention bit for bit."""
    pools = [pool(fill=False), pool(fill=False)]
    for w in (0, 1):   # other data in worker 1's pool must not leak in
        pools[w].buf.normal_(generator=torch.Generator().manual_seed(9 + w))
    k1, v1 = split_kv(pools[0].layer_views(1)[0], ROW_KV_TOKEN)
    rng = torch.Generator().manual_seed(2)
    seqs = ref._fill_sequences(k1, v1, rng, [20, 47], HQ, torch.float32, "cpu")
    before = [ref.paged_attention(q, k1, v1, table, start, D ** -0.5)
              for table, _, _, q, start in seqs]
    pairs = [((0, b), (0, 1), (0, b), (0, 2)) for table, *_ in seqs for b in table]
    moves = plan_moves(pairs, H)
    packed = {w: {dst: pools[w]._pack(ms) for dst, ms in moves_for(w, moves)[0].items()}
              for w in (0, 1)}
    for w in (0, 1):
        for src, ms in moves_for(w, moves)[1].items():
            pools[w]._unpack(packed[src][w], ms)
    for (table, _, _, q, start), want in zip(seqs, before):
        parts = []
        for rank in (0, 1):
            kc, vc = split_kv(pools[rank].layer_views(2)[0], ROW_KV_TOKEN)
            tp_table = [tp_block_id((0, b), 0, 2) for b in table]
            heads = slice(rank * HQ // 2, (rank + 1) * HQ // 2)
            parts.append(ref.paged_attention(q[:, heads], kc, vc, tp_table, start, D ** -0.5))
        assert torch.equal(torch.cat(parts, dim=1), want)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_kv_row_conversion_round_trip_and_meaning(dtype):
    rng = np.random.default_rng(0)
    block = rng.integers(0, 60000, size=(L, H, BS * 2 * D)).astype(dtype)
    cuda = convert_block(block, ROW_K_THEN_V, ROW_KV_TOKEN, D)
    assert cuda.shape == block.shape and cuda.flags.c_contiguous
    assert not np.array_equal(cuda, block)
    assert np.array_equal(convert_block(cuda, ROW_KV_TOKEN, ROW_K_THEN_V, D), block)
    assert convert_block(block, ROW_K_THEN_V, ROW_K_THEN_V, D) is block
    # the converted bytes read through the CUDA split give the K/V the CPU split gave
    t_cpu = torch.from_numpy(block.astype(np.float32)).view(L, H, BS, 2 * D)
    t_cuda = torch.from_numpy(cuda.astype(np.float32)).view(L, H, BS, 2 * D)
    kc, vc = split_kv(t_cpu, ROW_K_THEN_V)           # [L, H, Bs, D]
    kg, vg = split_kv(t_cuda, ROW_KV_TOKEN)          # [L, Bs, H, D]
    assert torch.equal(kg.transpose(1, 2), kc) and torch.equal(vg.transpose(1, 2), vc)
    with pytest.raises(ValueError):
        convert_block(block, ROW_K_THEN_V, "nhd", D)


def test_a_receiver_uses_converts_or_recomputes():
    from flying_core.kv_format import (
        CONVERT,
        RECOMPUTE,
        USE,
        KVFormat,
        format_of,
        import_action,
    )
    from flying_core.types import KVExport
    cpu = KVFormat("float32", (L, H, BS * 2 * D))
    cuda = KVFormat("float32", (L, H, BS * 2 * D), row=ROW_KV_TOKEN)
    assert import_action(cpu, cpu) == USE
    assert import_action(cuda, cpu) == import_action(cpu, cuda) == CONVERT
    assert import_action(KVFormat("bfloat16", cpu.block_shape), cpu) == RECOMPUTE
    assert import_action(KVFormat("float32", (L, H, 32 * 2 * D)), cpu) == RECOMPUTE
    assert import_action(KVFormat("float32", cpu.block_shape, order="LBNHC"), cpu) == RECOMPUTE
    assert import_action(KVFormat("float32", cpu.block_shape, row="nhd"), cpu) == RECOMPUTE
    kv = KVExport("float32", cpu.block_shape, 3, (b"",), cuda.layout)
    assert format_of(kv) == cuda and format_of(KVExport("float32", (1, 1, 1), 1, ())) == \
        KVFormat("float32", (1, 1, 1))
