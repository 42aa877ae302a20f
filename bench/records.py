"""What the load generator records per request, and JSON-lines persistence.

All times are seconds on one monotonic clock, relative to the start of the run.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class Record:
    id: str
    arrival_s: float                      # scheduled arrival
    priority: int = 0
    cls: str = "normal"
    prompt_tokens: int = 0                # the workload's figure; the server's when it reports
    max_tokens: int = 0
    send_s: float | None = None           # when the request was actually sent
    first_token_s: float | None = None
    token_times: list[float] = field(default_factory=list)   # every streamed token chunk
    chunk_tokens: list[int] = field(default_factory=list)    # tokens in each chunk (empty:
    #                                                          the server did not say)
    end_s: float | None = None
    output_tokens: int = 0
    usage_reported: bool = False          # output_tokens came from the final usage
    status: int | None = None             # HTTP status (None: no response)
    error: str | None = None
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.end_s is not None

    @property
    def ttft(self) -> float | None:
        if self.send_s is None or self.first_token_s is None:
            return None
        return self.first_token_s - self.send_s

    @property
    def e2e(self) -> float | None:
        if self.send_s is None or self.end_s is None:
            return None
        return self.end_s - self.send_s

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first: (e2e - TTFT) / (tokens - 1), as
        vLLM's benchmark defines it (None below two tokens)."""
        if self.first_token_s is None or self.end_s is None or self.output_tokens < 2:
            return None
        return (self.end_s - self.first_token_s) / (self.output_tokens - 1)

    def chunk_sizes(self) -> list[int]:
        """Tokens carried by each streamed chunk: as the server reported them (logprobs or
        cumulative usage), else 1 each when the chunks add up to `output_tokens`, else the
        first chunk 1 token and the rest of `output_tokens` spread as evenly as whole tokens
        allow over the others."""
        n = len(self.token_times)
        if len(self.chunk_tokens) == n:
            return [int(k) for k in self.chunk_tokens]
        if n <= 1 or self.output_tokens <= n:
            return [1] * n
        q, r = divmod(self.output_tokens - 1, n - 1)
        return [1] + [q + (i < r) for i in range(n - 1)]

    @property
    def itls(self) -> list[float]:
        """Inter-token latencies, per TOKEN: a chunk carrying k tokens after a gap g counts
        as k gaps of g / k (its tokens spread over its interval); the first chunk's extra
        tokens came with the first token and add no gap."""
        t, k = self.token_times, self.chunk_sizes()
        out: list[float] = []
        for a, b, n in zip(t, t[1:], k[1:]):
            n = max(1, n)
            out += [(b - a) / n] * n
        return out

    @property
    def send_lag(self) -> float | None:
        """How late the request left versus its schedule (load-generator health)."""
        return None if self.send_s is None else self.send_s - self.arrival_s

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _open(path: str | Path, mode: str):
    """gzip for a ``.gz`` path (records are committed compressed), plain text otherwise."""
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def save_jsonl(records: Iterable[Record], path: str | Path) -> None:
    with _open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r.to_dict()) + "\n")


def load_jsonl(path: str | Path) -> list[Record]:
    with _open(path, "r") as f:
        return [Record.from_dict(json.loads(line)) for line in f if line.strip()]
