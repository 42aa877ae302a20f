"""Chat messages -> prompt (router/chat.py): validation, the plain fallback, and a real HF chat
template (a tiny tokenizer built in memory, no model hub)."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from flying.settings import RouterSettings
from flying_core.errors import InvalidArgument
from router import chat
from router.backend import Done, GatewayRequest, TextDelta
from router.rest import create_app

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["[UNK]", "<s>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant",
             "hi", "be", "brief"]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="[UNK]",
                                 additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = CHATML
    return hf


def test_normalize_content_forms():
    msgs = chat.normalize([
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "q", "name": "ignored"},
    ])
    assert msgs == [{"role": "system", "content": "s"}, {"role": "user", "content": "a\nb"},
                    {"role": "assistant", "content": ""}, {"role": "user", "content": "q"}]


@pytest.mark.parametrize("bad", [
    None, [], "hi", [{"content": "x"}], [{"role": "robot", "content": "x"}],
    [{"role": "user", "content": None}], [{"role": "user", "content": 3}],
    [{"role": "user", "content": [{"type": "image_url"}]}],
    [{"role": "user", "content": [{"type": "text", "text": 1}]}], ["not a dict"],
])
def test_normalize_rejects(bad):
    with pytest.raises(InvalidArgument):
        chat.normalize(bad)


def test_fallback_without_template():
    text, ids = chat.build_prompt([{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "hi"}], tokenizer=None)
    assert text == "system: be brief\nuser: hi\nassistant:" and ids is None


def test_chat_template(tokenizer):
    text, ids = chat.build_prompt([{"role": "developer", "content": "be brief"},
                                   {"role": "user", "content": "hi"}], tokenizer)
    assert text == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert ids == [2, 4, 8, 9, 3, 2, 5, 7, 3, 2, 6]   # no BOS added on top of the template


def test_template_errors_are_invalid_argument(tokenizer):
    class Raising:
        chat_template = "x"

        def apply_chat_template(self, *a, **kw):
            raise ValueError("Conversation roles must alternate")

    with pytest.raises(InvalidArgument, match="alternate"):
        chat.build_prompt([{"role": "user", "content": "hi"}], Raising())


class EchoBackend:
    def __init__(self):
        self.requests: list[GatewayRequest] = []

    async def ready(self) -> bool:
        return True

    def model_names(self) -> list[str]:
        return []

    async def generate(self, req: GatewayRequest):
        self.requests.append(req)
        yield TextDelta("ok", (1,))
        yield Done("stop", len(req.prompt_token_ids or ()), 1)


async def test_gateway_sends_template_token_ids(tokenizer):
    backend = EchoBackend()
    app = create_app(backend, RouterSettings(), tokenizer=tokenizer,
                     metrics_registry=CollectorRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as client:
        r = await client.post("/v1/chat/completions", json={
            "model": "flying", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5, "stop": "END"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "ok"
    assert r.json()["usage"] == {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}
    req = backend.requests[0]
    assert req.prompt is None and req.prompt_token_ids == [2, 5, 7, 3, 2, 6]
    assert req.sampling.max_tokens == 5 and req.sampling.stop == ("END",)
