"""Helpers for tests that drive a real WorkerGroup: submit, collect events, wait."""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from flying_core.types import Finished, RequestSpec, SamplingSpec, TokenEvent

_ids = itertools.count()


@dataclass
class Stream:
    request_id: str
    prompt: tuple[int, ...] = ()
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finished: Finished | None = None
    done: threading.Event = field(default_factory=threading.Event)
    instances: set[int] = field(default_factory=set)

    def on_event(self, ev) -> None:
        if isinstance(ev, TokenEvent):
            self.tokens.extend(ev.token_ids)
            self.text += ev.text
            self.instances.add(ev.instance)
        elif isinstance(ev, Finished):
            self.finished = ev
            self.done.set()


def submit(group, prompt_ids, max_tokens=24, priority=0, temperature=0.0, seed=None,
           stop=(), ignore_eos=True, instance=None) -> Stream:
    rid = f"t{next(_ids)}"
    s = Stream(rid, tuple(prompt_ids))
    spec = RequestSpec(rid, tuple(prompt_ids), SamplingSpec(
        max_tokens=max_tokens, temperature=temperature, seed=seed, stop=tuple(stop),
        ignore_eos=ignore_eos), priority=priority, instance=instance)
    group.submit(spec, s.on_event)
    return s


def wait_all(streams, timeout=180.0) -> None:
    end = time.monotonic() + timeout
    for s in streams:
        assert s.done.wait(max(0.0, end - time.monotonic())), f"{s.request_id} never finished"


def wait_until(cond, timeout=60.0, what="the condition") -> None:
    """Poll ``cond()`` until it holds; fail after ``timeout`` seconds, naming ``what``."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= end:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.002)


def wait_tokens(streams, n, timeout=60.0) -> None:
    wait_until(lambda: all(len(s.tokens) >= n or s.done.is_set() for s in streams), timeout,
               f"streams reaching {n} tokens")
