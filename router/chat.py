"""OpenAI bodies in and out: request schemas -> `GatewayRequest` (sampling fields, prompts, chat
`messages` -> one prompt with the model's chat template when its tokenizer has one), and the
response objects."""
from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flying_core.errors import InvalidArgument
from flying_core.types import SamplingSpec
from router.backend import Done, GatewayRequest

ROLES = ("system", "developer", "user", "assistant", "tool")


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)       # vLLM: -1 or 0 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    priority: int = 0
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None


class ChatRequest(_Common):
    messages: list[Any]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    tools: list[Any] | None = None

def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


def _sampling(body: _Common, max_tokens: int) -> SamplingSpec:
    if body.n != 1:
        raise InvalidArgument(f"n={body.n} is not supported; only n=1")
    if body.stream_options is not None and not body.stream:
        raise InvalidArgument("'stream_options' is only allowed when 'stream' is true")
    if body.presence_penalty or body.frequency_penalty:
        raise InvalidArgument("presence_penalty and frequency_penalty are not supported")
    return SamplingSpec(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(body.top_k or 0, 0), seed=body.seed, stop=_stop(body.stop),
        ignore_eos=body.ignore_eos)


def _prompt(prompt: str | list) -> tuple[str | None, list[int] | None]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise InvalidArgument("batched prompts are not supported; send one per request")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidArgument("the prompt is empty")
        return prompt, None
    if not prompt:
        raise InvalidArgument("the prompt is empty")
    if any(t < 0 for t in prompt):
        raise InvalidArgument("prompt token ids must be >= 0")
    return None, list(prompt)



def normalize(messages: Any) -> list[dict[str, str]]:
    """Check OpenAI chat messages; return them as [{"role", "content": str}].

    Content is a string or a list of text parts ({"type": "text", "text": ...}), joined with
    newlines; an assistant message may have null content. Anything else is InvalidArgument.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("'messages' must be a non-empty list")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidArgument(f"{where} must be an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in ROLES:
            raise InvalidArgument(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}")
        out.append({"role": role, "content": _content(msg.get("content"), role, where)})
    return out


def _content(content: Any, role: str, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidArgument(f"{where}.content[{j}]: only text parts are supported, "
                                      f"got {kind!r}")
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"{where}.content[{j}].text must be a string")
            texts.append(text)
        return "\n".join(texts)
    raise InvalidArgument(f"{where}.content must be a string or a list of text parts")


def has_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render(messages: list[dict[str, str]], tokenizer: Any = None) -> str:
    """The prompt text: the tokenizer's chat template, or a plain "role: content" transcript."""
    if has_template(tokenizer):
        # templates rarely know OpenAI's newer "developer" role; it means "system"
        templ = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
        try:
            text = tokenizer.apply_chat_template(templ, add_generation_prompt=True,
                                                 tokenize=False)
        except Exception as e:  # a jinja TemplateError: roles not alternating, ...
            raise InvalidArgument(f"chat template: {e}") from None
        if not isinstance(text, str):
            raise InvalidArgument("chat template did not render to text")
        return text
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    lines.append("assistant:")
    return "\n".join(lines)


def build_prompt(messages: Any, tokenizer: Any = None) -> tuple[str, list[int] | None]:
    """(prompt text, prompt token ids or None).

    With a chat-templated tokenizer the text is also tokenized here, without adding special
    tokens: the template already wrote them (BOS included), and a backend that tokenizes text
    itself would add a second BOS. Without a template only the text is returned.
    """
    text = render(normalize(messages), tokenizer)
    if not text.strip():
        raise InvalidArgument("the chat renders to an empty prompt")
    if has_template(tokenizer):
        ids = tokenizer.encode(text, add_special_tokens=False)
        return text, [int(t) for t in ids]
    return text, None


def completion_request(body: CompletionRequest, rid: str) -> GatewayRequest:
    if body.echo or body.logprobs is not None or (body.best_of or 1) != 1:
        raise InvalidArgument("echo, logprobs and best_of are not supported")
    prompt, ids = _prompt(body.prompt)
    return GatewayRequest(rid, prompt, ids, _sampling(body, body.max_tokens or 16),
                          body.priority)


def chat_request(body: ChatRequest, rid: str, tokenizer: Any,
                 default_max_tokens: int) -> GatewayRequest:
    if body.logprobs or body.tools:
        raise InvalidArgument("logprobs and tools are not supported")
    text, ids = build_prompt(body.messages, tokenizer)
    max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    return GatewayRequest(rid, None if ids else text, ids, _sampling(body, max_tokens),
                          body.priority)


class Shape:
    """The OpenAI JSON objects of one completion or chat completion."""

    def __init__(self, chat_: bool, rid: str, model: str):
        self.chat, self.rid, self.model, self.created = chat_, rid, model, int(time.time())

    def _obj(self, choices: list, stream: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if stream and self.chat else "")
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}

    def choice(self, text: str | None, finish: str | None, stream: bool) -> dict:
        out: dict[str, Any] = {"index": 0}
        if not self.chat:
            out["text"] = text or ""
        elif stream:
            out["delta"] = {} if text is None else {"content": text}
        else:
            out["message"] = {"role": "assistant", "content": text}
        return {**out, "logprobs": None, "finish_reason": finish}

    def role_choice(self) -> dict:
        return {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    def full(self, text: str, done: Done) -> dict:
        return {**self._obj([self.choice(text, done.finish_reason, False)], False),
                "usage": usage(done)}

    def chunk(self, choices: list, usage_: Any = ...) -> dict:
        obj = self._obj(choices, True)
        return obj if usage_ is ... else {**obj, "usage": usage_}


def usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}
