"""Content hashes of full KV blocks, chained from the start of a sequence. Pure.

A full block's hash covers its parent block's hash and its own token ids, so equal hashes mean
equal whole prefixes; the chain starts from a salt naming what else changes the KV (the model
and its dtype), so two models never share a block. vLLM does the same (`hash_block_tokens`).
blake2b rather than Python's `hash`: the value is the same in every process (the router hashes
prompts the same way to route a conversation to the instance that holds its prefix).
"""
from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def model_salt(*identity: str) -> int:
    """The chain's root for a model: e.g. model_salt(model_path, dtype)."""
    return _digest("\x00".join(identity).encode())


def block_hash(parent: int, tokens: Sequence[int]) -> int:
    return _digest(parent.to_bytes(8, "little") + array("q", tokens).tobytes())


def extend_hashes(hashes: list[int], tokens: Sequence[int], n_blocks: int, block_size: int,
                  salt: int) -> list[int]:
    """Grow `hashes` (the chain of `tokens`' first full blocks) to `n_blocks` entries (at most
    the number of full blocks in `tokens`); returns it. Already-hashed blocks are kept: the
    tokens of a full block never change."""
    n_blocks = min(n_blocks, len(tokens) // block_size)
    while len(hashes) < n_blocks:
        i = len(hashes)
        parent = hashes[-1] if hashes else salt
        hashes.append(block_hash(parent, tokens[i * block_size:(i + 1) * block_size]))
    return hashes


def prefix_hashes(tokens: Sequence[int], block_size: int, salt: int = 0,
                  max_blocks: int | None = None) -> list[int]:
    """The chained hashes of `tokens`' full blocks (the first `max_blocks` of them)."""
    n = len(tokens) // block_size if max_blocks is None else max_blocks
    return extend_hashes([], tokens, n, block_size, salt)
