"""Incremental text of a request's output tokens, with stop strings.

Text comes from ``tokenizers``' ``DecodeStream`` (what vLLM's fast detokenizer uses): a token
costs a decode of the few tokens since the last text, not of the whole sequence. vLLM's own
``IncrementalDetokenizer`` was considered: it is bound to its ``EngineCoreRequest`` and
``SamplingParams`` and checks stops over its own output buffer, so only the stream is taken.

Hand-written on top, as no library offers it apart from an engine: stop strings (the text is
cut before a stop and nothing past it is emitted), hold-back of the last ``hold`` characters
(they could still become a stop) and of an incomplete UTF-8 character (``\\ufffd`` at the end),
and ``flush()`` of what was held back when the request ends. The emitted pieces concatenate to
``tokenizer.decode(ids, skip_special_tokens=True)`` (cut at a stop). The stream does not show
text it holds back, so where that text matters (a stop complete before an incomplete character,
``flush``, or a stream that gave up on a decoder whose output is not monotonic) the few tokens
since the last text are decoded here (``_tail``), in the context of the token before them.
"""
from __future__ import annotations

from collections.abc import Sequence

from tokenizers.decoders import DecodeStream


class Detokenizer:
    """Feed output tokens one by one; ``add`` returns (text to emit, hit a stop string).

    ``tokenizer`` is a ``transformers`` fast tokenizer (its ``backend_tokenizer`` is used), or
    None: then no text is made and no stop is ever hit. ``include_stop``: a stop string hit
    is emitted too (vLLM's include_stop_str_in_output); ``skip_special``: special tokens make
    no text (vLLM's skip_special_tokens).
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt: Sequence[int] = (),
                 continued: int = 0, *, include_stop: bool = False, skip_special: bool = True):
        self.tok, self.stops = tokenizer, stops
        self.include_stop, self.skip_special = include_stop, skip_special
        self.ids: list[int] = []
        self.hold = max((len(s) for s in stops), default=1) - 1
        self._look = self.hold + 1          # sent characters a stop may still start in
        self._backend = None if tokenizer is None else _backend_of(tokenizer)
        self._stream: DecodeStream | None = DecodeStream(skip_special_tokens=skip_special)
        self._text = ""       # decoded text from absolute offset self._base on
        self._base = 0        # absolute offset of self._text[0]
        self.sent = 0         # absolute number of characters emitted
        self._last = -1       # index in ids of the token that last produced text
        self._check = True    # match stops in the current token's text
        if self._backend is not None:
            own = len(prompt) - continued
            self._prime(prompt[:own])
            for token in prompt[own:]:   # output of an earlier segment: its text went out
                self.add(token)

    def _prime(self, prompt: Sequence[int]) -> None:
        """Start the stream in the prompt's context, as vLLM does: the first output token's
        text then keeps what it has only after other text (SentencePiece's leading space).
        The suffix used is the shortest of 4..23 tokens that decodes to whole characters."""
        prime = list(prompt)
        if len(prime) > 4:
            for i in range(4, min(len(prime) + 1, 24)):
                text = self._backend.decode(prime[-i:], skip_special_tokens=self.skip_special)
                if "\ufffd" not in text:
                    prime = prime[-i:]
                    break
        for token in prime:
            self.ids.append(token)
            self._step(token)
        self._last = len(self.ids) - 1

    def add(self, token: int, check_stops: bool = True) -> tuple[str, bool]:
        """(new text to emit, hit a stop string). ``check_stops`` False: no stop is matched
        in this token's text (vLLM's min_tokens)."""
        self._check = check_stops
        self.ids.append(token)
        if self._backend is None:
            return "", False
        piece = self._step(token)
        if piece is not None:
            self._text += piece
            self._last = len(self.ids) - 1
            return self._emit(self._text)
        if not self.stops:
            return "", False  # text unchanged or an incomplete character: nothing to emit
        # no text from the stream: a stop may still be complete before an incomplete character
        return self._emit(self._text + self._tail())

    def flush(self) -> str:
        """All text not emitted yet (the request ended), incomplete characters included."""
        if self._backend is None:
            return ""
        text = self._text + self._tail()
        out = text[self.sent - self._base:]
        self.sent = self._base + len(text)
        return out

    # ------------------------------------------------------------------------------ helpers

    def _emit(self, text: str) -> tuple[str, bool]:
        """Emit from ``text`` (decoded from ``self._base``) what can no longer become a stop."""
        sent = self.sent - self._base
        for stop in self.stops if self._check else ():
            at = text.find(stop, max(0, sent - len(stop)))
            if at >= 0:
                end = at + len(stop) if self.include_stop else at
                out = text[sent:end] if end > sent else ""
                self.sent = self._base + max(sent, end)
                return out, True
        if text.endswith("\ufffd"):
            return "", False
        upto = max(sent, len(text) - self.hold)
        out = text[sent:upto]
        self.sent = self._base + upto
        self._trim()
        return out, False

    def _trim(self) -> None:
        """Keep only the characters a stop can still start in: per-token work stays bounded."""
        drop = self.sent - self._base - self._look
        if drop > 0:
            self._text, self._base = self._text[drop:], self._base + drop

    def _step(self, token: int) -> str | None:
        """New text from the stream; None while there is none or a character is incomplete."""
        if self._stream is not None:
            try:
                return self._stream.step(self._backend, token)
            except Exception as e:  # tokenizers raises a bare Exception
                if "Invalid prefix" not in str(e):
                    raise
                # the decoder's output was not monotonic (vLLM issue 17448): the stream cannot
                # go on, so decode the tokens since the last text here, for the rest of the text
                self._stream = None
        tail = self._tail()
        return None if not tail or tail.endswith("\ufffd") else tail

    def _tail(self) -> str:
        """Text of the tokens after the last one that produced text, decoded in its context."""
        ctx = self.ids[self._last:self._last + 1] if self._last >= 0 else []
        rest = self.ids[self._last + 1:]
        if not rest:
            return ""
        skip = self.skip_special
        full = self._backend.decode(ctx + rest, skip_special_tokens=skip)
        return full[len(self._backend.decode(ctx, skip_special_tokens=skip)):] if ctx else full


def _backend_of(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: incremental "
                        "detokenization needs its tokenizers backend (backend_tokenizer)")
    return backend
