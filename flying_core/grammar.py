"""Structured outputs (vLLM's `structured_outputs` and OpenAI's `response_format`) with
xgrammar, the library vLLM uses: a request's grammar state lives with the request on the
driver, so it survives layout switches and same-node hand-offs untouched; each step sends the
leader the bitmask of the tokens the grammar allows next (SampleParams.allowed), and each
sampled token advances the state."""
from __future__ import annotations

import json
from typing import Any

from flying_core.errors import InvalidArgument
from flying_core.types import StructuredSpec


class Grammars:
    """Compiles a node's grammars against its tokenizer (one xgrammar compiler, which caches)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: frozenset[int]):
        import xgrammar as xgr
        self.xgr, self.vocab = xgr, vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=sorted(stop_ids) or None)
        self.compiler = xgr.GrammarCompiler(info)

    def compile(self, spec: StructuredSpec):
        c = self.compiler
        try:
            match spec.kind:
                case "json_object":   # as vLLM's xgrammar backend: any JSON object
                    return c.compile_json_schema('{"type": "object"}')
                case "json_schema":
                    return c.compile_json_schema(spec.spec)
                case "regex":
                    return c.compile_regex(spec.spec)
                case "choice":
                    options = json.loads(spec.spec)
                    return c.compile_grammar(
                        "root ::= " + " | ".join(json.dumps(str(o)) for o in options))
                case "grammar":
                    return c.compile_grammar(spec.spec)
        except Exception as e:  # xgrammar raises RuntimeError / ValueError / its own
            raise InvalidArgument(f"structured output ({spec.kind}): {e}") from None
        raise InvalidArgument(f"unknown structured output kind {spec.kind!r}")

    def state(self, spec: StructuredSpec) -> GrammarState:
        return GrammarState(self, self.xgr.GrammarMatcher(self.compile(spec)))


class GrammarState:
    """One request's place in its grammar."""

    def __init__(self, grammars: Grammars, matcher: Any):
        self.g, self.matcher = grammars, matcher

    def allowed(self) -> bytes:
        """The bitmask (int32 words, bit t = token t allowed) for the next token."""
        mask = self.g.xgr.allocate_token_bitmask(1, self.g.vocab)
        self.matcher.fill_next_token_bitmask(mask)
        return mask.numpy().tobytes()

    def accept(self, token: int) -> None:
        if not self.matcher.is_terminated():
            self.matcher.accept_token(token)

    @property
    def done(self) -> bool:
        return self.matcher.is_terminated()
