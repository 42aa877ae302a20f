"""The node's step sequencer: tickets, one FIFO pipe per worker, and the replies coming back.

Every command the driver sends carries the next ticket, and each worker executes its pipe in
order. Instances of a layout are disjoint and every collective is issued in ticket order on all
of its workers, so the earliest pending collective can always complete: workers skewed in time
never deadlock. Other threads wake the driver through a socket pair (`wake`), which `replies`
waits on together with the pipes and the workers' process sentinels.
"""
from __future__ import annotations

import socket
from collections.abc import Iterable
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler

from flying_core.commands import Reply
from flying_core.errors import Unavailable


class Sequencer:
    def __init__(self, conns: list, sentinels: list):
        self.conns, self.sentinels = conns, sentinels
        self.ticket = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    def next_ticket(self) -> int:
        self.ticket += 1
        return self.ticket

    def send(self, workers: Iterable[int], cmd) -> None:
        """One command to each of `workers`, in ticket order on every pipe (pickled once)."""
        data = ForkingPickler.dumps(cmd)
        for w in workers:
            self.conns[w].send_bytes(data)

    def wake(self) -> None:
        """Called from other threads: make a waiting `replies` return."""
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _recv(self, worker: int) -> Reply:
        try:
            return self.conns[worker].recv()
        except (EOFError, OSError):
            raise Unavailable(f"worker {worker} died (its pipe closed)") from None

    def replies(self, timeout: float) -> list[Reply]:
        """Every reply that arrives within `timeout` (or none, if woken); Unavailable if a
        worker died."""
        ready = wait([*self.conns, self._wake_r, *self.sentinels], timeout=timeout)
        out = []
        for obj in ready:
            if obj is self._wake_r:
                self._drain_wake()
            elif obj in self.sentinels:
                raise Unavailable(f"worker {self.sentinels.index(obj)} died")
            else:
                out.append(self._recv(self.conns.index(obj)))
        return out

    def reply_from(self, worker: int, timeout: float = 60.0) -> Reply:
        """The next reply of one worker (blocking)."""
        conn, sentinel = self.conns[worker], self.sentinels[worker]
        while True:
            ready = wait([conn, sentinel], timeout=timeout)
            if conn in ready:
                return self._recv(worker)
            if sentinel in ready:
                raise Unavailable(f"worker {worker} died")
            if not ready:
                raise Unavailable(f"worker {worker} did not answer in {timeout:.0f}s")
