"""The REST gateway's HTTP behaviour, in isolation: a scripted backend (not the agents) behind the
real app, served by uvicorn on a free port, driven by the official `openai` client and httpx."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import openai
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from flying import logs
from flying.settings import RouterSettings
from flying_core.errors import ResourceExhausted, Unavailable
from router.backend import Done, GatewayRequest, TextDelta
from router.rest import create_app

PIECES = ["Hello", ",", " world", "!"]


class ScriptedBackend:
    """Answers PIECES (cut at max_tokens); keywords in the prompt pick other scripts."""

    def __init__(self):
        self.requests: list[GatewayRequest] = []
        self.ended: dict[str, str] = {}   # request id -> "done" | "cancelled" | "closed" | ...
        self.is_ready = True

    async def ready(self) -> bool:
        return self.is_ready

    def model_names(self) -> list[str]:
        return ["tiny-model"]

    async def generate(self, req: GatewayRequest):
        self.requests.append(req)
        prompt = req.prompt or ""
        try:
            if "rate-limit" in prompt:
                raise ResourceExhausted("the queue is full")
            if "unavailable" in prompt:
                raise Unavailable("no agent is serving")
            if "bug" in prompt:
                raise RuntimeError("scripted bug")
            if "stall" in prompt:
                await asyncio.sleep(60)
            while "endless" in prompt:
                yield TextDelta("x", (1,))
                await asyncio.sleep(0.001)
            pieces = PIECES[:req.sampling.max_tokens]
            for i, text in enumerate(pieces):
                yield TextDelta(text, (100 + i,))
                if "slow" in prompt:
                    await asyncio.sleep(60)
                if "mid-error" in prompt:
                    raise Unavailable("the node went away")
                if "late-fail" in prompt:
                    raise KeyError("scripted late bug")
            finish = "length" if len(pieces) < len(PIECES) else "stop"
            yield Done(finish, prompt_tokens=len(prompt.split()) or len(req.prompt_token_ids),
                       completion_tokens=len(pieces))
            self.ended[req.request_id] = "done"
        except asyncio.CancelledError:
            self.ended[req.request_id] = "cancelled"
            raise
        except GeneratorExit:
            self.ended[req.request_id] = "closed"
            raise
        except Exception as e:
            self.ended[req.request_id] = type(e).__name__
            raise

    def wait_ended(self, rid: str, timeout: float = 5.0) -> str | None:
        deadline = time.monotonic() + timeout
        while rid not in self.ended and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ended.get(rid)


@contextlib.contextmanager
def serve(app):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def gateway():
    logs.configure("router-test")   # JSON lines at FLYING_LOG_LEVEL (WARNING under pytest)
    backend = ScriptedBackend()
    app = create_app(backend, RouterSettings(model_name="flying"),
                     metrics_registry=CollectorRegistry())
    with serve(app) as url:
        yield url, backend


@pytest.fixture
def url(gateway):
    return gateway[0]


@pytest.fixture
def backend(gateway):
    return gateway[1]


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


# ---------------------------------------------------------------- the openai client


def test_completion(client, backend):
    out = client.completions.create(model="flying", prompt="say hello", max_tokens=8,
                                    temperature=0.0, stop=["\n", "END"], seed=7,
                                    extra_body={"top_k": 5, "ignore_eos": True, "priority": -1})
    assert out.id.startswith("cmpl-") and out.object == "text_completion"
    assert out.model == "flying"
    assert out.choices[0].text == "Hello, world!" and out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
        (2, 4, 6)
    req = backend.requests[-1]
    assert req.request_id == out.id and req.prompt == "say hello" and req.priority == -1
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_k, s.seed, s.stop, s.ignore_eos) == \
        (8, 0.0, 5, 7, ("\n", "END"), True)


def test_completion_token_ids_and_length(client, backend):
    out = client.completions.create(model="tiny-model", prompt=[5, 6, 7], max_tokens=2,
                                    stop="x")
    assert out.choices[0].text == "Hello," and out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == 3 and out.model == "tiny-model"
    req = backend.requests[-1]
    assert req.prompt is None and req.prompt_token_ids == [5, 6, 7]
    assert req.sampling.stop == ("x",)


def test_completion_stream(client):
    chunks = list(client.completions.create(model="flying", prompt="hi", stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Hello, world!"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_chat(client, backend):
    out = client.chat.completions.create(
        model="flying", max_completion_tokens=3,
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "hi there"}]}])
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion"
    msg = out.choices[0].message
    assert msg.role == "assistant" and msg.content == "Hello, world"
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3
    req = backend.requests[-1]
    assert req.prompt == "system: be brief\nuser: hi there\nassistant:"
    assert req.sampling.max_tokens == 3


def test_chat_stream(client):
    stream = client.chat.completions.create(
        model="flying", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello, world!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)


async def test_async_client(url):
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                timeout=10)
    out = await client.completions.create(model="flying", prompt="hi", max_tokens=16)
    assert out.choices[0].text == "Hello, world!"
    stream = await client.chat.completions.create(
        model="flying", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    texts, usage = [], None
    async for chunk in stream:
        texts += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(texts) == "Hello, world!" and usage.total_tokens == 7
    await client.close()


def test_mid_stream_error_reaches_the_client(client):
    with pytest.raises(openai.APIError, match="the node went away"):
        list(client.completions.create(model="flying", prompt="mid-error", stream=True))


def test_models_and_unknown_model(client):
    assert [m.id for m in client.models.list()] == ["flying", "tiny-model"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="hi")
