"""KV cache adaptor: one physical KV buffer per worker, re-viewed for every TP size.

The buffer is layer-outer and head-major: [L, NB, H, Bs * 2D] (the CPU attention kernel's
per-layer cache is [num_blocks, num_kv_heads, block_size, 2 * head_size]). The tp=s view of a
layer is the same bytes as [NB * s, H / s, Bs, 2D]: TP block t = DP block t // s, head slot
t % s. Nothing is copied to change layout; only heads of in-flight requests move
(kv_plan.plan_moves), packed before any write so a plan may permute blocks freely.

On a CPU node the pools live in shared memory (`share_with_peers`): a worker then pulls the
heads it receives straight out of its peers' pools (a memcpy, no socket) once each source said
it reached the move (so every command queued before it there has written), tells each source
it is done reading, and writes only after every reader of its own pool said so. On a GPU
node the same pull reads the peers' pools through CUDA IPC handles exchanged once at start (over
NVLink), with a device synchronisation before each "done" and before each write (not yet run
on a GPU). Elsewhere the heads travel point-to-point over the world group.

`kv_split(tp)` gives each layer's K and V as the pool's attention backend reads them
(kv_format.split_kv): views of the same bytes, never copies.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from flying_core.kv_format import row_format, split_kv
from flying_core.kv_plan import Move

READY = 1   # tag of the "my earlier commands are done" message that opens a pull


class KVPool:
    def __init__(self, num_layers: int, num_blocks: int, num_kv_heads: int, block_size: int,
                 head_size: int, dtype: torch.dtype, device: str = "cpu"):
        self.L, self.NB, self.H, self.Bs, self.D = (num_layers, num_blocks, num_kv_heads,
                                                    block_size, head_size)
        self.shape = (num_layers, num_blocks, num_kv_heads, block_size * 2 * head_size)
        self.buf = torch.zeros(self.shape, dtype=dtype, device=device)
        self.peers: dict[int, torch.Tensor] = {}   # worker -> its pool, flat rows (shm/IPC)
        self.row = row_format(str(self.buf.device))

    # ------------------------------------------------------------------ shared memory

    @staticmethod
    def _shm_path(tag: str, rank: int) -> str:
        return f"/dev/shm/flying-{tag}-kv{rank}"

    def share_with_peers(self, tag: str, rank: int, world: int, barrier, group=None) -> bool:
        """Move this pool into /dev/shm and map every peer's (collective over the world).
        The files are unlinked once all are mapped, so nothing is left behind on a crash.
        On a GPU: CUDA IPC handles instead, gathered over `group` (the world's gloo group)."""
        if self.buf.device.type == "cuda":
            return self._share_cuda(rank, world, group)
        if self.buf.device.type != "cpu" or not os.path.isdir("/dev/shm"):
            return False
        numel = self.buf.numel()
        path = self._shm_path(tag, rank)
        with open(path, "wb") as f:
            f.truncate(self.nbytes)
        shared = torch.from_file(path, shared=True, size=numel, dtype=self.buf.dtype)
        shared.copy_(self.buf.view(-1))
        self.buf = shared.view(self.shape)
        barrier()
        for peer in range(world):
            if peer != rank:
                t = torch.from_file(self._shm_path(tag, peer), shared=True, size=numel,
                                    dtype=self.buf.dtype)
                self.peers[peer] = t.view(self.L, self.NB * self.H, -1)
        barrier()
        os.unlink(path)
        return True

    def _share_cuda(self, rank: int, world: int, group) -> bool:
        """Publish a CUDA IPC handle of this pool and open every peer's (collective). torch's
        own reducer (what torch.multiprocessing sends between processes) rather than raw
        cudaIpc* calls: it keeps the producer's allocation alive and the handle picklable."""
        from torch.multiprocessing.reductions import reduce_tensor
        handles: list = [None] * world
        dist.all_gather_object(handles, reduce_tensor(self.buf), group=group)
        for peer, (rebuild, args) in enumerate(handles):
            if peer != rank:
                self.peers[peer] = rebuild(*args).view(self.L, self.NB * self.H, -1)
        return True

    def _sync(self) -> None:
        if self.buf.device.type == "cuda":
            torch.cuda.synchronize(self.buf.device)

    @staticmethod
    def blocks_for(kv_bytes: int, num_layers: int, num_kv_heads: int, block_size: int,
                   head_size: int, dtype: torch.dtype) -> int:
        per_block = num_layers * num_kv_heads * block_size * 2 * head_size * dtype.itemsize
        return max(1, kv_bytes // per_block)

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def layer_views(self, tp_size: int) -> list[torch.Tensor]:
        """Per-layer KV caches for a tp_size instance: views, never copies."""
        shape = (self.NB * tp_size, self.H // tp_size, self.Bs, 2 * self.D)
        return [self.buf[i].view(shape) for i in range(self.L)]

    def kv_split(self, tp_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (K, V) of the tp_size views as this pool's backend reads them."""
        return [split_kv(v, self.row) for v in self.layer_views(tp_size)]

    # ------------------------------------------------------------------ moving heads

    def _rows(self, moves: list[Move], src: bool) -> torch.Tensor:
        """Flat (block * H + head) row ids of every head a plan touches, in plan order."""
        ids = []
        for m in moves:
            start = (m.src_block * self.H + m.src_pos) if src else (m.dst_block * self.H
                                                                    + m.dst_pos)
            ids.extend(range(start, start + m.n))
        return torch.tensor(ids, dtype=torch.long, device=self.buf.device)

    def _flat(self) -> torch.Tensor:
        return self.buf.view(self.L, self.NB * self.H, -1)

    def _pack(self, moves: list[Move]) -> torch.Tensor:
        return self._flat().index_select(1, self._rows(moves, src=True))

    def _unpack(self, packed: torch.Tensor, moves: list[Move]) -> None:
        self._flat().index_copy_(1, self._rows(moves, src=False), packed)

    def read_rows(self, rows) -> bytes:
        idx = torch.tensor(rows, dtype=torch.long, device=self.buf.device)
        out = self._flat().index_select(1, idx).cpu().contiguous()
        if out.dtype == torch.bfloat16:
            out = out.view(torch.int16)   # numpy has no bfloat16: ship the raw bits
        return out.numpy().tobytes()

    def write_rows(self, rows, data: bytes) -> None:
        idx = torch.tensor(rows, dtype=torch.long, device=self.buf.device)
        src = torch.frombuffer(bytearray(data), dtype=self.buf.dtype).view(
            self.L, len(rows), -1)
        self._flat().index_copy_(1, idx, src.to(self.buf.device))

    def _write_inbox(self, me: int, inbox: dict[int, torch.Tensor], recvs) -> int:
        """Write every received run into this pool; bytes that came from other workers."""
        received = 0
        for src, ms in recvs.items():
            self._unpack(inbox[src], ms)
            if src != me:
                received += inbox[src].numel() * inbox[src].element_size()
        self._sync()   # written before the driver hears "moved" and a peer reads this pool
        return received

    def _pull(self, me: int, sends, recvs, group) -> int:
        """Shared-memory exchange: wait until every source reached this move, read peers'
        pools, handshake, then write.

        A source may still be carrying out commands queued before the move whose writes the
        driver does not wait for (a KV import has no reply): reading its pool before it says
        "ready" would take the bytes from before them."""
        self._sync()   # my earlier writes are complete before I say "ready"
        ready = torch.zeros(1)
        reqs = [dist.isend(ready, dst, group=group, tag=READY) for dst in sends if dst != me]
        reqs += [dist.irecv(torch.zeros(1), src, group=group, tag=READY)
                 for src in recvs if src != me]
        for r in reqs:
            r.wait()
        inbox = {src: self._read_peer(me, src, ms) for src, ms in recvs.items()}
        self._sync()   # my reads of peers' pools are complete before I say so
        done = torch.zeros(1)
        reqs = [dist.isend(done, src, group=group) for src in recvs if src != me]
        acks = {dst: torch.zeros(1) for dst in sends if dst != me}
        reqs += [dist.irecv(t, dst, group=group) for dst, t in acks.items()]
        for r in reqs:
            r.wait()   # every reader of my pool has its copy: now I may overwrite
        return self._write_inbox(me, inbox, recvs)

    def _read_peer(self, me: int, src: int, ms: list[Move]) -> torch.Tensor:
        pool = self._flat() if src == me else self.peers[src]
        rows = self._rows(ms, src=True).to(pool.device)
        return pool.index_select(1, rows).to(self.buf.device)

    def exchange(self, me: int, sends: dict[int, list[Move]], recvs: dict[int, list[Move]],
                 group) -> int:
        """Carry out this worker's part of a move plan; returns bytes received.

        Every outgoing (and local) run is packed first, then point-to-point sends and
        receives over `group` (the world's gloo group on CPU), then every write."""
        if self.peers:
            return self._pull(me, sends, recvs, group)
        packed = {dst: self._pack(ms) for dst, ms in sends.items()}
        inbox: dict[int, torch.Tensor] = {}
        reqs = []
        for dst, t in packed.items():
            if dst != me:
                reqs.append(dist.isend(t, dst, group=group))
        for src, ms in recvs.items():
            if src == me:
                inbox[src] = packed[me]
                continue
            n = sum(m.n for m in ms)
            inbox[src] = torch.empty((self.L, n, self.buf.shape[-1]), dtype=self.buf.dtype,
                                     device=self.buf.device)
            reqs.append(dist.irecv(inbox[src], src, group=group))
        for r in reqs:
            r.wait()
        return self._write_inbox(me, inbox, recvs)
