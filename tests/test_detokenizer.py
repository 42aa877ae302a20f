"""The incremental detokenizer: same text as a full decode, same stops as the whole-sequence
version it replaced, and a bounded amount of decoding per token (pure, no workers)."""
from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from flying_core.detokenizer import Detokenizer

TEXTS = [
    "Hello world, héllo wörld! Ünïcödé façade naïve café",
    " leading spaces,   several   spaces\tand\ttabs\nnew lines\n\n",
    "Emoji: 🙂🚀👩‍👩‍👧 and CJK: 日本語のテキスト, 中文, 한국어; math: ∑∫√π ≠ ∞",
    "def f(x):\n    return x ** 2  # 平方\n",
]


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def tok(request):
    return AutoTokenizer.from_pretrained(request.getfixturevalue(f"{request.param}_model"))


class WholeSequence:
    """The detokenizer this module replaced (re-decodes everything per token): the oracle."""

    def __init__(self, tokenizer, stops):
        self.tok, self.stops, self.ids, self.sent = tokenizer, stops, [], 0
        self.hold = max((len(s) for s in stops), default=1) - 1

    def add(self, token):
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        for stop in self.stops:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                out = text[self.sent:at] if at > self.sent else ""
                self.sent = max(self.sent, at)
                return out, True
        if text.endswith("\ufffd"):
            return "", False
        upto = max(self.sent, len(text) - self.hold)
        out, self.sent = text[self.sent:upto], upto
        return out, False

    def flush(self):
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        out, self.sent = text[self.sent:], len(text)
        return out


def run(det, ids) -> tuple[list[tuple[str, bool]], str]:
    """Per-token results until a stop, and the flushed rest ("" after a stop)."""
    steps = []
    for t in ids:
        steps.append(det.add(t))
        if steps[-1][1]:
            return steps, ""
    return steps, det.flush()


def streamed(det, ids) -> str:
    steps, rest = run(det, ids)
    return "".join(text for text, _ in steps) + rest


def sequences(tok, seed: int = 0) -> list[list[int]]:
    """Real texts (with special tokens inside) and random ids over the whole vocabulary."""
    rng = random.Random(seed)
    special = sorted(tok.all_special_ids)
    out = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    out.append(special[:1] + out[0] + special + out[2] + special[-1:])
    for _ in range(40):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 80))]
        for _ in range(rng.randint(0, 3)):
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(special))
        out.append(ids)
    return out


@pytest.mark.parametrize("stops", [(), ("\x00never\x00",)], ids=["no-stop", "hold-7"])
def test_streamed_text_equals_full_decode(tok, stops):
    for ids in sequences(tok):
        assert streamed(Detokenizer(tok, stops), ids) == tok.decode(
            ids, skip_special_tokens=True), ids


def test_steps_equal_the_whole_sequence_detokenizer(tok):
    """Per token the same (text, stopped) as before, stops cut from random places of the text
    (split across tokens, inside multi-byte characters), several stops of different lengths."""
    rng = random.Random(1)
    for ids in sequences(tok, seed=2):
        full = tok.decode(ids, skip_special_tokens=True)
        for _ in range(3):
            at = rng.randrange(max(1, len(full)))
            stops = (full[at:at + rng.randint(1, 6)] or "x", "\x00absent\x00")
            stops = stops if rng.random() < 0.5 else stops[::-1]
            assert run(Detokenizer(tok, stops), ids) == run(WholeSequence(tok, stops), ids)


def test_stop_split_across_tokens_is_cut_before_the_stop(tok):
    text = "The answer is forty-two. Then nothing more is said."
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [tok.decode(ids[:i + 1]) for i in range(len(ids))]
    done = next(i for i, p in enumerate(pieces) if "forty-two" in p)
    assert "forty-two" not in tok.decode(ids[done:done + 1])  # the stop spans tokens
    det = Detokenizer(tok, ("forty-two", "never said"))
    steps, rest = run(det, ids)
    assert len(steps) == done + 1 and steps[-1][1] and not any(s for _, s in steps[:-1])
    assert "".join(t for t, _ in steps) == "The answer is "
    # held back while it could still become the stop: nothing of "forty" left early
    assert all("f" not in t for t, _ in steps)


def test_incomplete_character_is_held_and_flushed(tok):
    ids = tok.encode("ok 🚀", add_special_tokens=False)
    cut = next(i for i in range(1, len(ids))
               if tok.decode(ids[:i]).endswith("\ufffd"))  # a prefix ending inside the emoji
    det = Detokenizer(tok, ())
    emitted = "".join(det.add(t)[0] for t in ids[:cut])
    assert emitted and "\ufffd" not in emitted
    # the request ended there: what is left goes out as is
    assert emitted + det.flush() == tok.decode(ids[:cut])


def test_hold_back_is_flushed_at_the_end(tok):
    ids = tok.encode("abcdefgh", add_special_tokens=False)
    det = Detokenizer(tok, ("zzzz",))
    assert det.hold == 3
    assert "".join(det.add(t)[0] for t in ids) == "abcde"
    assert det.flush() == "fgh"


def test_without_tokenizer_no_text_and_no_stop():
    det = Detokenizer(None, ("a",))
    assert [det.add(t) for t in (1, 2, 3)] == [("", False)] * 3
    assert det.flush() == "" and det.ids == [1, 2, 3]


def test_slow_tokenizer_is_refused():
    with pytest.raises(TypeError, match="not a fast tokenizer"):
        Detokenizer(object(), ())


def test_recovers_from_an_invalid_prefix_in_the_stream(tok):
    """tokenizers raises when a decoder's output is not monotonic (vLLM issue 17448): the
    detokenizer decodes the rest itself, and the steps stay those of the whole-sequence one."""

    class Broken:
        def step(self, backend, token):
            raise Exception("Invalid prefix encountered while decoding stream")

    rng = random.Random(3)
    for ids in sequences(tok, seed=4)[:20]:
        stops = ((), ("\x00never\x00",))[rng.randrange(2)]
        cut = rng.randrange(len(ids))
        det, old = Detokenizer(tok, stops), WholeSequence(tok, stops)
        before = [det.add(t) for t in ids[:cut]]
        assert before == [old.add(t) for t in ids[:cut]]
        det._stream = Broken()
        assert run(det, ids[cut:]) == run(old, ids[cut:])


def counting(tok) -> tuple[PreTrainedTokenizerFast, list[int]]:
    """The same tokenizer with a decoder that records how many tokens each decode gets."""
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(
        tok.backend_tokenizer.to_str()))
    inner, calls = decoders.ByteLevel(), []

    class Counting:
        def decode_chain(self, tokens):
            calls.append(len(tokens))
            return [inner.decode(tokens)]

    assert isinstance(fast.backend_tokenizer.decoder, decoders.ByteLevel)
    fast.backend_tokenizer.decoder = decoders.Decoder.custom(Counting())
    return fast, calls


@pytest.mark.parametrize("stops", [(), ("\x00never\x00",)], ids=["no-stop", "stop"])
def test_decoding_work_per_token_does_not_grow(tok, stops):
    """Every decode, the stream's and the detokenizer's own, sees a few tokens, however long
    the sequence (the whole-sequence version passed all of them, every token)."""
    ids = tok.encode(" ".join(TEXTS) * 12, add_special_tokens=False)
    assert len(ids) > 1000
    fast, calls = counting(tok)
    det = Detokenizer(fast, stops)
    text = "".join(det.add(t)[0] for t in ids) + det.flush()
    assert text == tok.decode(ids)
    assert len(calls) >= len(ids) and max(calls) <= 8
    head, tail = calls[:len(calls) // 10], calls[-len(calls) // 10:]
    assert sum(tail) <= 2 * sum(head)  # no growth from the first tenth to the last
    calls.clear()
    old = WholeSequence(fast, stops)
    for t in ids[:50]:
        old.add(t)
    assert calls[-1] == 50  # what the old one did: the measure sees the difference


@pytest.fixture(scope="module")
def metaspace():
    """A SentencePiece-style tokenizer (Metaspace: '▁' marks a space, the first one of a
    sequence is dropped when decoding), trained here on TEXTS: Llama's and Mistral's kind."""
    from tokenizers import models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    t.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=[
        "<unk>", "<s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>")


def test_output_text_keeps_its_context_as_vllm_does(metaspace):
    """Primed with the prompt, the first output token keeps its leading space (alone it
    would decode without it), and the text is the prompt+output decode after the prompt's."""
    tok = metaspace
    prompt = tok.encode("Hello world, héllo", add_special_tokens=False)
    out = tok.encode("Hello world, héllo wörld! Ünïcödé", add_special_tokens=False)[len(prompt):]
    assert tok.decode(out[:1]).startswith("w")               # alone: the space is lost
    want = tok.decode(prompt + out)[len(tok.decode(prompt)):]
    assert want.startswith(" w")
    assert streamed(Detokenizer(tok, (), prompt), out) == want


@pytest.mark.parametrize("which", ["tiny", "smollm2", "metaspace"])
@pytest.mark.parametrize("stops", [(), ("ll",), ("é f", "zz"), ("wörld! Ü",)])
def test_text_carries_across_a_continuation(request, which, stops):
    """A request continued elsewhere after k output tokens (a cross-node second segment, a
    failover): the first part's text (held-back text not flushed: the request goes on) and the
    continuation's, whose prompt ends with those k tokens, make exactly the uninterrupted
    text, stops spanning the boundary included."""
    tok = request.getfixturevalue("metaspace") if which == "metaspace" else \
        AutoTokenizer.from_pretrained(request.getfixturevalue(f"{which}_model"))
    prompt = tok.encode("Hello", add_special_tokens=False)
    for text in TEXTS[:3]:
        out = tok.encode("Hello " + text, add_special_tokens=False)[len(prompt):]
        whole_steps, whole_rest = run(Detokenizer(tok, stops, prompt), out)
        whole = "".join(t for t, _ in whole_steps) + whole_rest
        stopped = whole_steps[-1][1]
        for k in range(1, len(whole_steps)):
            first = Detokenizer(tok, stops, prompt)
            head = "".join(first.add(t)[0] for t in out[:k])
            second = Detokenizer(tok, stops, tuple(prompt) + tuple(out[:k]), continued=k)
            steps, rest = run(second, out[k:])
            assert head + "".join(t for t, _ in steps) + rest == whole, (k, text)
            assert bool(steps) and steps[-1][1] == stopped


def _run(d: Detokenizer, ids, check_from: int = 0) -> tuple[str, bool]:
    out = ""
    for i, t in enumerate(ids):
        piece, stopped = d.add(t, check_stops=i >= check_from)
        out += piece
        if stopped:
            return out, True
    return out + d.flush(), False


def test_include_stop_skip_special_and_stops_held_off(tok):
    """vLLM's include_stop_str_in_output, skip_special_tokens and min_tokens (no stop matched
    in the text of the first tokens)."""
    text = "one two stop three stop four"
    ids = tok.encode(text, add_special_tokens=False)
    assert _run(Detokenizer(tok, ("stop",)), ids) == ("one two ", True)
    assert _run(Detokenizer(tok, ("stop",), include_stop=True), ids) == ("one two stop", True)
    first = len(tok.encode("one two stop three", add_special_tokens=False))
    assert _run(Detokenizer(tok, ("stop",)), ids, first) == ("one two stop three ", True)
    special = [tok.eos_token_id, *ids[:2]]
    assert _run(Detokenizer(tok, ()), special)[0] == tok.decode(ids[:2])
    assert _run(Detokenizer(tok, (), skip_special=False), special)[0] == \
        tok.decode(special, skip_special_tokens=False)
