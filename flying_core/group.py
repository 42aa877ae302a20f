"""WorkerGroup: the Python API the agent drives (no gRPC, no proto).

    group = WorkerGroup(GroupConfig(model=..., num_workers=2))
    group.start()                        # spawns workers, waits until every layout is warm
    group.submit(RequestSpec(...), on_event)   # on_event(TokenEvent | Finished), group thread
    group.abort(request_id) -> bool
    group.reconfigure((2,), PreemptMode.HARD, timeout_s=5.0) -> SwitchReport   (blocking)
    group.status() -> GroupStatus
    group.shutdown()
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from flying_core.config import GroupConfig
from flying_core.messages import Event, GroupStatus, PreemptMode, RequestSpec, SwitchReport


class WorkerGroup:  # interface; implementation lands in this module
    def __init__(self, cfg: GroupConfig):
        self.cfg = cfg

    def start(self, timeout_s: float = 900.0) -> None:
        raise NotImplementedError

    def submit(self, spec: RequestSpec, on_event: Callable[[Event], None]) -> None:
        """Validate and queue. Raises InvalidArgument, ResourceExhausted, Unavailable."""
        raise NotImplementedError

    def abort(self, request_id: str) -> bool:
        raise NotImplementedError

    def reconfigure(self, layout: Sequence[int], mode: PreemptMode = PreemptMode.SOFT,
                    timeout_s: float | None = None) -> SwitchReport:
        """Raises FailedPrecondition (impossible layout), Aborted (another switch running),
        DeadlineExceeded."""
        raise NotImplementedError

    def status(self) -> GroupStatus:
        raise NotImplementedError

    def kv_blocks_used(self) -> int:
        raise NotImplementedError

    @property
    def tokenizer(self):
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def shutdown(self, timeout_s: float = 10.0) -> None:
        raise NotImplementedError
