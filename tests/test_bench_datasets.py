"""bench.datasets: ShareGPT (truncated JSON), HumanEval, random and skewed prompts."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from bench import datasets as ds


def test_iter_json_array_stops_at_truncation():
    full = [{"id": i, "s": "x]}" * i} for i in range(5)]
    text = json.dumps(full, indent=2)
    assert list(ds.iter_json_array(text)) == full
    cut = text[: text.index('"id": 4') + 3]                      # inside the 5th record
    assert list(ds.iter_json_array(cut)) == full[:4]
    assert list(ds.iter_json_array("[]")) == []
    assert list(ds.iter_json_array("")) == []


def test_sharegpt_pairs_from_small_file(tmp_path):
    recs = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi there"},
                                      {"from": "gpt", "value": "hello!"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "unprompted"},
                                      {"from": "human", "value": "q"},
                                      {"from": "gpt", "value": "answer"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "no reply"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "cut off"},
                                      {"from": "gpt", "value": "never complete"}]},
    ]
    text = json.dumps(recs)
    p = tmp_path / "sg.json"
    p.write_text(text[: text.index("never") + 3])
    assert ds.sharegpt_pairs(str(p)) == (("hi there", "hello!"), ("q", "answer"))


@pytest.fixture(scope="module")
def sharegpt():
    return ds.sharegpt_pairs()


def test_sharegpt_real_file_parses_thousands(sharegpt):
    assert len(sharegpt) > 15_000
    assert all(p and a for p, a in sharegpt[:1000])


def test_load_sharegpt_caps_and_determinism(sharegpt):
    s1 = ds.load_sharegpt(200, seed=3, max_prompt_tokens=256, max_output_tokens=64)
    s2 = ds.load_sharegpt(200, seed=3, max_prompt_tokens=256, max_output_tokens=64)
    assert len(s1) == 200 and [x.prompt for x in s1] == [x.prompt for x in s2]
    assert s1[0].prompt != ds.load_sharegpt(1, seed=4)[0].prompt
    assert all(4 <= x.prompt_tokens <= 256 and 4 <= x.output_tokens <= 64 for x in s1)
    assert max(x.output_tokens for x in s1) == 64                  # long answers are capped
    cut = ds.load_sharegpt(50, seed=3, max_prompt_tokens=32, truncate_prompts=True)
    assert len(cut) == 50 and all(x.prompt_tokens <= 32 for x in cut)
    assert any(x.prompt_tokens == 32 for x in cut)


def test_humaneval_164_prompts_read_only():
    samples = ds.load_humaneval(output_tokens=100)
    assert len(samples) == 164
    assert samples[0].label == "HumanEval/0" and "def " in samples[0].prompt
    assert all(s.output_tokens == 100 and s.prompt_tokens > 10 for s in samples)


def test_humaneval_from_given_file(tmp_path):
    p = tmp_path / "he.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps({"task_id": "T/0", "prompt": "def f():\n", "test": "boom()"}) + "\n")
    assert [r["task_id"] for r in ds.load_humaneval_records(str(p))] == ["T/0"]


def test_token_counter_estimate():
    tc = ds.TokenCounter()
    assert not tc.exact
    assert tc.count("") == 0 and tc.count("abc") == 1 and tc.count("a" * 9) == 3
    assert tc.truncate("a" * 100, 5) == "a" * 20


def test_random_and_skewed_estimate():
    rng = np.random.default_rng(0)
    p = ds.random_prompt(100, rng)
    assert set(p.split()) <= set(ds.VOCAB)
    n = ds.TokenCounter().count(p)
    assert 100 <= n <= 104
    a = ds.random_samples(5, 64, 32, seed=1)
    assert [x.prompt for x in a] == [x.prompt for x in ds.random_samples(5, 64, 32, seed=1)]
    assert all(64 <= x.prompt_tokens <= 68 and x.output_tokens == 32 for x in a)
    mix = ds.skewed_mix(40, seed=2, prefill_heavy=(256, 8), decode_heavy=(8, 128),
                        prefill_share=0.25)
    heavy = [x for x in mix if x.label == "prefill-heavy"]
    light = [x for x in mix if x.label == "decode-heavy"]
    assert len(heavy) == 10 and len(light) == 30
    assert all(x.prompt_tokens >= 256 and x.output_tokens == 8 for x in heavy)
    assert all(x.prompt_tokens >= 8 and x.output_tokens == 128 for x in light)
    assert [x.label for x in mix] != sorted(x.label for x in mix)   # interleaved
    assert ds.length_stats(mix)["n"] == 40


def test_lengths_with_a_real_tokenizer(tiny_model):
    tc = ds.TokenCounter(tiny_model)
    assert tc.exact
    for n in (16, 100):
        p = ds.random_prompt(n, np.random.default_rng(n), tc)
        got = tc.count(p)
        assert n <= got <= n + 8                                    # at most one word over
        shorter = " ".join(p.split()[:-1])
        assert tc.count(shorter) < n
    s = ds.load_sharegpt(20, seed=0, tokenizer=tc, max_prompt_tokens=128)
    assert all(x.prompt_tokens == tc.count(x.prompt) <= 128 for x in s)
