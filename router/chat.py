"""OpenAI bodies in and out: request schemas -> `GatewayRequest` (sampling fields, prompts, chat
`messages` -> one prompt with the model's chat template when its tokenizer has one), and the
response objects."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flying_core.errors import InvalidArgument
from flying_core.types import MAX_LOGPROBS, SamplingSpec
from router import fields
from router.backend import GatewayRequest
from router.structured import structured_spec

ROLES = ("system", "developer", "user", "assistant", "tool")


class StreamOptions(BaseModel):
    include_usage: bool = False


MAX_N = 16   # choices per request (each runs as its own request)
# vLLM's defaults for what a request omits, unless the model folder's generation_config.json
# names its own (`sampling_defaults`): vLLM's ChatCompletionRequest._DEFAULT_SAMPLING_PARAMS
NEUTRAL_DEFAULTS = {"repetition_penalty": 1.0, "presence_penalty": 0.0,
                    "frequency_penalty": 0.0, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                    "min_p": 0.0}


def sampling_defaults(model_dir: str | Path) -> dict[str, Any]:
    """The sampling defaults of a model folder's generation_config.json, as vLLM takes them
    (ModelConfig.get_diff_sampling_param with generation_config="auto"): the keys of
    NEUTRAL_DEFAULTS that the file sets; {} when it has none or there is no file."""
    path = Path(model_dir) / "generation_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: config[k] for k in NEUTRAL_DEFAULTS if config.get(k) is not None}


class _Common(BaseModel):
    """The fields Flying implements; every other field lands in `model_extra` and goes
    through `router.fields.check` (refused, ignored on purpose, or unknown)."""
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)       # vLLM: -1 or 0 = off
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int | None = Field(1, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = False
    priority: int | None = 0
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    logit_bias: dict[int, float] | None = None
    min_tokens: int | None = Field(0, ge=0)
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    prompt_logprobs: int | None = None    # vLLM's: checked in `_prompt_logprobs`


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)   # 0: only with echo (the prompt alone)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False   # the prompt before the text (and its logprobs, with logprobs)


class ChatRequest(_Common):
    messages: list[Any]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(0, ge=0, le=MAX_LOGPROBS)


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


def _prompt_logprobs(body: _Common, derived: int | None) -> int | None:
    """The request's prompt_logprobs (vLLM's checks: none > 0 when streaming, -1 is the
    whole vocabulary, which Flying does not return); `derived`: echo's (the logprobs k)."""
    k = body.prompt_logprobs
    if k is None:
        return derived
    if body.stream and (k > 0 or k == -1):
        raise InvalidArgument("`prompt_logprobs` are not available when `stream=True`.")
    if k == -1:
        raise InvalidArgument(f"'prompt_logprobs': -1 (the whole vocabulary) is not supported "
                              f"by Flying; at most {MAX_LOGPROBS}")
    if not 0 <= k <= MAX_LOGPROBS:
        raise InvalidArgument(f"'prompt_logprobs' must be in [0, {MAX_LOGPROBS}] (or -1), "
                              f"got {k}")
    return k


def _sampling(body: _Common, max_tokens: int, logprobs: int | None,
              defaults: dict[str, Any], rid: str, chat: bool,
              prompt_logprobs: int | None = None) -> SamplingSpec:
    """The request's sampling; an omitted parameter takes the model's generation_config
    default (`defaults`), else vLLM's neutral one: user -> model -> vLLM, as vLLM does."""
    structured = structured_spec(body.response_format, body.structured_outputs,
                                 body.model_extra)
    fields.check(body.model_extra, chat, rid)
    if body.stream_options is not None and not body.stream:
        raise InvalidArgument("'stream_options' is only allowed when 'stream' is true")
    if (body.min_tokens or 0) > max_tokens:
        raise InvalidArgument(f"min_tokens ({body.min_tokens}) must be <= max_tokens "
                              f"({max_tokens})")

    def pick(name: str) -> Any:
        value = getattr(body, name)
        return value if value is not None else defaults.get(name, NEUTRAL_DEFAULTS[name])

    return SamplingSpec(
        max_tokens=max_tokens, temperature=float(pick("temperature")),
        top_p=float(pick("top_p")), top_k=max(int(pick("top_k")), 0), seed=body.seed,
        stop=_stop(body.stop), ignore_eos=bool(body.ignore_eos), logprobs=logprobs,
        min_p=float(pick("min_p")), presence_penalty=float(pick("presence_penalty")),
        frequency_penalty=float(pick("frequency_penalty")),
        repetition_penalty=float(pick("repetition_penalty")),
        logit_bias=tuple(sorted((int(t), float(b)) for t, b in (body.logit_bias or {}).items())),
        min_tokens=body.min_tokens or 0, stop_token_ids=tuple(body.stop_token_ids or ()),
        include_stop_str_in_output=bool(body.include_stop_str_in_output),
        skip_special_tokens=body.skip_special_tokens is not False, structured=structured,
        prompt_logprobs=_prompt_logprobs(body, prompt_logprobs))


def choices(req: GatewayRequest, n: int) -> list[GatewayRequest]:
    """`n` independent requests for a request's n choices. With a seed, choice i samples
    with seed + i (as vLLM's parallel sampling): the same request gives the same n texts."""
    if n == 1:
        return [req]
    s = req.sampling
    return [replace(req, request_id=f"{req.request_id}-{i}", sampling=replace(
        s, seed=None if s.seed is None else s.seed + i)) for i in range(n)]


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


def completion_request(body: CompletionRequest, rid: str,
                       defaults: dict[str, Any]) -> list[GatewayRequest]:
    """One GatewayRequest per choice."""
    prompt, ids = _prompt(body.prompt)
    if body.max_tokens == 0 and not body.echo:
        raise InvalidArgument("max_tokens: must be >= 1 (0 only with echo: the prompt alone)")
    # vLLM: echo asks for the prompt's logprobs with the output's k; echo with max_tokens 0
    # generates one token that the response leaves out
    sampling = _sampling(body, 1 if body.max_tokens == 0 else body.max_tokens or 16, body.logprobs, defaults, rid, False,
                         body.logprobs if body.echo else None)
    return choices(GatewayRequest(rid, prompt, ids, sampling, body.priority or 0), body.n or 1)


def chat_request(body: ChatRequest, rid: str, tokenizer: Any, default_max_tokens: int,
                 defaults: dict[str, Any]) -> list[GatewayRequest]:
    """One GatewayRequest per choice."""
    text, ids = build_prompt(body.messages, tokenizer)
    max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    sampling = _sampling(body, max_tokens, body.top_logprobs or 0 if body.logprobs else None,
                         defaults, rid, True)
    return choices(GatewayRequest(rid, None if ids else text, ids, sampling,
                                  body.priority or 0), body.n or 1)
