"""bench/prefix.py's workloads (no servers): a shared 1,000-token system prompt, and
multi-turn conversations that resend their history."""
from __future__ import annotations

from bench import prefix


def test_workloads_share_prefixes_as_described(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    shared = prefix.shared_workload(tok, 4, rate=2.0)
    system = shared[0].prompt.split("\n")[0]
    assert 990 <= len(tok.encode(system)) <= 1000
    assert all(r.prompt.startswith(system + "\n") for r in shared)
    assert [r.arrival_s for r in shared] == [0.0, 0.5, 1.0, 1.5]
    multi = prefix.multiturn_workload(tok, convs=3, turns=3, rate=1.0)
    assert len(multi) == 9
    by_conv: dict[int, list[str]] = {}
    for r in sorted(multi, key=lambda r: r.meta["turn"]):
        by_conv.setdefault(r.meta["conv"], []).append(r.prompt)
    assert sorted(len(v) for v in by_conv.values()) == [3, 3, 3]
    for prompts in by_conv.values():
        for a, b in zip(prompts, prompts[1:]):
            assert b.startswith(a.removesuffix("Assistant:"))   # the history is resent
    md = prefix.markdown({"runs": [{"system": "flying", "workload": "shared", "hit_rate": 0.9,
                                    "summary": {"n": 4, "ttft_p50": 0.1, "ttft_p90": None,
                                                "failed": 0}}]})
    assert "| flying | shared | 0 | 4 | 100 | - | 0.90 | 0 |" in md
    gapped = prefix.multiturn_workload(tok, convs=1, turns=3, rate=1.0, turn_gap_s=6.0)
    assert [r.arrival_s for r in gapped] == [0.0, 6.0, 12.0]


def test_loads_per_model():
    """SmolLM2 runs the routing pair only, interleaved over rounds; tiny runs every system."""
    assert prefix.LOADS["tiny"].rounds == 1 and "vllm" in prefix.LOADS["tiny"].systems
    big = prefix.LOADS["smollm2"]
    assert big.rounds >= 2 and set(big.systems) == set(prefix.ROUTING)
    assert big.conv_rate * big.turns < 1.0 < big.turn_gap_s     # a load 2 replicas can serve
