"""The numpy batch arrays equal the per-token Python construction the runner used before (pure)."""
from __future__ import annotations

import random

import pytest
import torch

from flying_core.batch import BatchBuffers
from flying_core.commands import SampleParams, SeqChunk

BS = 32


def reference(seqs):
    """The runner's former `_metadata`, as plain lists."""
    ids, pos, slots, qsl, seq_lens = [], [], [], [0], []
    for s in seqs:
        p = range(s.start, s.start + len(s.token_ids))
        ids += s.token_ids
        pos += p
        slots += [s.block_table[x // BS] * BS + x % BS for x in p]
        qsl.append(qsl[-1] + len(s.token_ids))
        seq_lens.append(s.start + len(s.token_ids))
    width = max(len(s.block_table) for s in seqs)
    table = [list(s.block_table) + [0] * (width - len(s.block_table)) for s in seqs]
    rows = [qsl[i + 1] - 1 for i, s in enumerate(seqs) if s.sample is not None]
    return ids, pos, slots, qsl, seq_lens, table, rows


def random_chunk(rng: random.Random, i: int) -> SeqChunk:
    start = rng.choice([0, rng.randrange(0, 900)])
    n = rng.choice([1, 1, 1, rng.randrange(1, 200)])
    blocks = -(-(start + n) // BS) + rng.randrange(0, 3)     # a table may run ahead
    table = tuple(rng.sample(range(4096), blocks))
    sample = rng.choice([None, SampleParams()])
    return SeqChunk(f"r{i}", tuple(rng.randrange(50000) for _ in range(n)), start, table,
                    sample)


def check(buf: BatchBuffers, seqs) -> None:
    b = buf.fill(seqs)
    ids, pos, slots, qsl, seq_lens, table, rows = reference(seqs)
    assert b.input_ids.tolist() == ids
    assert b.positions.tolist() == pos
    assert b.slot_mapping.tolist() == slots
    assert b.query_start_loc.tolist() == qsl
    assert b.seq_lens.tolist() == seq_lens
    width = len(table[0])
    assert b.block_table[:, :width].tolist() == table
    assert not b.block_table[:, width:].any()
    assert b.logits_rows.tolist() == rows
    assert b.sampled == tuple(i for i, s in enumerate(seqs) if s.sample is not None)
    assert (b.num_tokens, b.num_seqs) == (len(ids), len(seqs))
    assert b.max_query_len == max(len(s.token_ids) for s in seqs)
    assert b.max_seq_len == max(seq_lens)
    assert b.input_ids.dtype == b.positions.dtype == b.slot_mapping.dtype
    assert str(b.query_start_loc.dtype) == str(b.block_table.dtype) == "torch.int32"


@pytest.mark.parametrize("seed", range(20))
def test_random_batches_match_the_reference(seed):
    rng = random.Random(seed)
    buf = BatchBuffers(BS, max_tokens=256, max_seqs=8, max_blocks=16)
    for _ in range(15):      # reused buffers: stale values from a bigger step must not leak
        check(buf, tuple(random_chunk(rng, i) for i in range(rng.randrange(1, 40))))


def test_decode_batch_needs_no_growth():
    buf = BatchBuffers(BS, max_tokens=512, max_seqs=32, max_blocks=65)
    ids_before = buf.ids
    seqs = tuple(SeqChunk(f"r{i}", (7,), 256 + i, tuple(range(i * 10, i * 10 + 10)),
                          SampleParams()) for i in range(32))
    check(buf, seqs)
    assert buf.ids is ids_before


def test_growth_keeps_results_exact():
    buf = BatchBuffers(BS, max_tokens=4, max_seqs=1, max_blocks=1)
    seqs = (SeqChunk("a", tuple(range(100)), 0, (5, 9, 2, 7), None),
            SeqChunk("b", (3,), 40, (1, 8), SampleParams()))
    check(buf, seqs)
    assert buf.max_tokens >= 101 and buf.max_seqs >= 2 and buf.max_blocks >= 4


# ------------------------------------------------ decode-first order, CUDA-graph padding

from flying_core.batch import decode_first, graph_size  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_decode_first_order_and_its_inverse(seed):
    rng = random.Random(seed)
    seqs = tuple(random_chunk(rng, i) for i in range(rng.randrange(1, 30)))
    order, inverse = decode_first(seqs)
    reordered = [seqs[i] for i in order]
    kinds = [len(s.token_ids) > 1 for s in reordered]
    assert kinds == sorted(kinds)                       # every decode before every prefill
    decodes = [i for i, s in enumerate(seqs) if len(s.token_ids) == 1]
    assert list(order[:len(decodes)]) == decodes        # stable: command order kept
    assert sorted(order.tolist()) == list(range(len(seqs)))
    assert [reordered[inverse[i]] for i in range(len(seqs))] == list(seqs)
    # a step's outputs computed in the reordered batch go back to command order
    buf = BatchBuffers(BS, 64, 8, 8)
    b = buf.fill(tuple(reordered))
    last = b.query_start_loc[1:].tolist()
    ends = [last[inverse[i]] - 1 for i in range(len(seqs))]
    assert [b.input_ids[e].item() for e in ends] == [s.token_ids[-1] for s in seqs]


def test_decode_first_threshold():
    seqs = (SeqChunk("a", (1, 2, 3), 0, (0,), None), SeqChunk("b", (1, 2), 0, (1,), None),
            SeqChunk("c", (4,), 5, (2,), None))
    assert decode_first(seqs)[0].tolist() == [2, 0, 1]
    assert decode_first(seqs, threshold=2)[0].tolist() == [1, 2, 0]


def test_graph_size_is_smallest_captured_that_fits():
    captured = (1, 2, 4, 8, 16, 32)
    assert [graph_size(n, captured) for n in (1, 3, 4, 5, 32)] == [1, 4, 4, 8, 32]
    assert graph_size(33, captured) is None and graph_size(3, ()) is None


def test_decode_batch_padded_to_a_graph_size():
    seqs = tuple(SeqChunk(f"r{i}", (100 + i,), 40 + i, (7 + i, 20 + i), SampleParams())
                 for i in range(5))
    buf = BatchBuffers(BS, max_tokens=4, max_seqs=4, max_blocks=2)   # padding grows it
    ref = reference(seqs)
    buf.fill(tuple(SeqChunk("x", tuple(range(30)), 0, (3, 3, 3, 3), None) for _ in range(2)))
    b = buf.fill(seqs, pad_to=8)                         # stale values must be overwritten
    ids, pos, slots, qsl, seq_lens, table, rows = ref
    assert (b.num_tokens, b.num_seqs, b.real_seqs) == (8, 8, 5)
    assert b.input_ids.tolist() == ids + [0] * 3
    assert b.positions.tolist() == pos + [0] * 3
    assert b.slot_mapping.tolist() == slots + [-1] * 3
    assert b.query_start_loc.tolist() == qsl + [5] * 3
    assert b.seq_lens.tolist() == seq_lens + [0] * 3
    assert b.block_table[:5, :2].tolist() == table and not b.block_table[5:].any()
    assert not b.block_table[:, 2:].any()
    assert b.logits_rows.tolist() == rows and b.sampled == tuple(range(5))
    assert (b.max_query_len, b.max_seq_len) == (1, max(seq_lens))
    for t in (b.input_ids, b.slot_mapping, b.query_start_loc, b.seq_lens, b.block_table):
        assert t.is_contiguous()
    assert buf.fill(seqs).real_seqs == -1                # unpadded: no marker
    with pytest.raises(ValueError, match="decode batch"):
        buf.fill((SeqChunk("p", (1, 2), 0, (0,), None),), pad_to=4)


def test_every_array_is_a_view_of_one_staging_buffer():
    """One host-to-device copy per step on a GPU: the arrays live in one buffer, at the same
    offsets in its device twin (checked here on the meta device; values on CUDA by
    bench/gpu_flying.py's staging check)."""
    rng = random.Random(3)
    buf = BatchBuffers(BS, max_tokens=64, max_seqs=8, max_blocks=8)
    seqs = tuple(random_chunk(rng, i) for i in range(5))
    b = buf.fill(seqs)
    lo = buf.host.data_ptr()
    hi = lo + buf.host.numel()
    fields = ("input_ids", "positions", "slot_mapping", "query_start_loc", "seq_lens",
              "block_table", "logits_rows")
    spans = []
    for f in fields:
        t = getattr(b, f)
        assert lo <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= hi, f
        spans.append((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()))
    spans.sort()
    assert all(a[1] <= b_[0] for a, b_ in zip(spans, spans[1:]))   # no two arrays overlap
    assert buf.on_device(b, torch.device("cpu")) is b                # the CPU reads the host
    d = buf.on_device(b, torch.device("meta"))
    for f in fields:
        h, m = getattr(b, f), getattr(d, f)
        assert (m.device.type, m.shape, m.dtype) == ("meta", h.shape, h.dtype), f
        assert m.storage_offset() * m.element_size() == \
            h.data_ptr() - lo, f            # same byte offset in the device buffer
    assert (d.num_tokens, d.sampled, d.max_seq_len) == (b.num_tokens, b.sampled, b.max_seq_len)
