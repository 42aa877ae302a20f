"""Typed settings for the agent and the router, from one TOML file, FLYING_* variables and flags.

Precedence, lowest first: built-in defaults < TOML file (`[agent]` / `[router]` tables) <
environment (`FLYING_AGENT_<KEY>`, `FLYING_ROUTER_<KEY>`) < command-line flags. The two
pydantic-settings models below are the one list of keys: their fields give each key's type,
default and help; `flying/cli.py` builds its flags from them and the tests check
deploy/flying.example.toml against them.

Each source is validated on its own, TOML values and flags strictly (`port = 1.5`,
`host = 127` are typos), environment strings leniently ("8", "on", "2.5"), so a wrong key or a
value of the wrong type is a `SettingsError` naming the key and where it came from.
pydantic-settings' own chain (`settings_customise_sources`) merges every source before
validating and so cannot name the source at fault; `load` runs the sources one by one instead:
its `EnvSettingsSource` reads the environment, and the TOML table is read with `tomllib` (its
`TomlConfigSettingsSource` skips a missing file silently and cannot reject unknown tables).
"""
from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from flying_core import layout as lay
from flying_core.errors import FailedPrecondition


class SettingsError(ValueError):
    pass


def _str_list(value: Any) -> Any:
    """A list (TOML, repeated flag) or one comma-separated string (environment, TOML)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value) if isinstance(value, list) else value


StrList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_str_list)]


class _Section(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=False)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **sources):
        """Constructing a section takes only its arguments; `load` adds file, environment and
        flags, one source at a time."""
        return (init_settings,)


class AgentSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="FLYING_AGENT_")

    model: str = Field("", description="HF model folder (see `flying model`); '' with "
                       "`flying up`: the default model, built on first use")
    workers: int = Field(2, description="worker processes (devices) on this node")
    host: str = Field("127.0.0.1", description="bind address (gRPC and the metrics port)")
    port: int = Field(50061, description="gRPC port")
    metrics_port: int = Field(0, description="Prometheus /metrics port (0: off)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device kind")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and KV dtype")
    layout: str = Field("", description="start-up layout, e.g. 1,1 or 2 or 2,1,1 "
                        "('': all workers as replicas)")
    kv_bytes: int = Field(256 << 20, description="KV pool bytes per worker")
    block_size: int = Field(32, description="KV block size in tokens")
    max_model_len: int = Field(2048, description="longest prompt + completion, tokens")
    max_queue: int = Field(256, description="waiting requests per node before "
                           "RESOURCE_EXHAUSTED")
    max_batch_tokens: int = Field(2048, ge=1, description="tokens one instance step computes "
                                  "at most, prompt chunks and decodes (vLLM's "
                                  "--max-num-batched-tokens; 2048 is `vllm serve`'s CPU default)")
    max_running: int = Field(32, ge=1, description="requests one instance runs at once (vLLM's "
                             "--max-num-seqs, 128 by default on CPU: Flying keeps the excess "
                             "waiting, where the layout policy sees the backlog)")
    tbt_slo_ms: float = Field(0.0, description="keep time between tokens under this "
                              "(sizes prefill chunks; 0: off)")
    node_name: str = Field("", description="name in status, metrics and Reconfigure "
                           "('': host:port)")
    grace_s: float = Field(10.0, description="on SIGTERM, streams get this long to finish")
    seed: int = Field(0, description="sampling seed")
    enforce_eager: bool = Field(False, description="run the model eagerly: no compilation "
                                "at start-up (starts minutes faster, steps slower)")
    tls_cert: str = Field("", description="PEM certificate: serve gRPC over TLS (and present "
                          "it when pulling KV from another agent)")
    tls_key: str = Field("", description="PEM private key of tls_cert")
    tls_ca: str = Field("", description="PEM CA: clients (router, agents) must present a "
                        "certificate it signed (mutual TLS); verifies agents this one dials")
    max_request_bytes: int = Field(4 << 20, description="largest gRPC request message "
                                   "accepted (RESOURCE_EXHAUSTED above)")
    prefix_caching: bool = Field(True, description="share the KV of prompts' equal prefixes "
                                 "between requests (automatic prefix caching)")


class RouterSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="FLYING_ROUTER_")

    agents: StrList = Field(("127.0.0.1:50061",), description="agent HOST:PORT (repeat)")
    host: str = Field("127.0.0.1", description="bind address (gRPC and HTTP)")
    grpc_port: int = Field(50051, description="gRPC port")
    http_port: int = Field(8000, description="OpenAI REST port")
    http_keep_alive_s: float = Field(75.0, gt=0, description="idle HTTP keep-alive before the "
                                     "REST server closes a connection; longer than clients' "
                                     "pool expiry (httpx, the OpenAI SDK: 5 s), so a client "
                                     "never sends on a connection the server is closing")
    api_keys: StrList = Field((), description="accept this bearer key (repeat); none: no key "
                              "needed")
    policy: bool = Field(True, description="let the router reconfigure nodes on its own")
    policy_interval_s: float = Field(0.25, description="how often the policy looks at the nodes")
    grace_s: float = Field(10.0, description="on SIGTERM, streams get this long to finish")
    agent_poll_s: float = Field(0.25, gt=0, description="how often the router asks each agent its "
                                "status")
    agent_down_s: float = Field(1.0, gt=0, description="an agent that answered no status for this "
                                "long is down: new requests go around it until it answers")
    model_name: str = Field("flying", description="the model id the OpenAI API shows")
    tls_cert: str = Field("", description="PEM certificate: serve gRPC and REST over TLS "
                          "(and present it to agents)")
    tls_key: str = Field("", description="PEM private key of tls_cert")
    tls_ca: str = Field("", description="PEM CA of the agents' certificates: dial agents "
                        "over (mutual) TLS")
    max_request_bytes: int = Field(4 << 20, description="largest request accepted: gRPC "
                                   "message (RESOURCE_EXHAUSTED) or HTTP body (413)")
    leader_lock: str = Field("", description="routers sharing agents: the one holding an "
                             "exclusive lock on this file runs the layout policy")
    leader_lease: str = Field("", description="in Kubernetes: NAMESPACE/NAME of the Lease "
                              "whose holder runs the layout policy")
    micro_requests: Literal["off", "adaptive", "disagg"] = Field(
        "off", description="split requests into two segments (DynaServe): adaptive split "
        "points, or disagg (prefill on instance 0, decode on instance 1)")
    prefix_routing: bool = Field(True, description="place a request where its prompt prefix "
                                 "is likely cached (else: by load only)")


SECTIONS: dict[str, type[_Section]] = {"agent": AgentSettings, "router": RouterSettings}


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (os.environ by default)."""

    def __init__(self, cls: type[_Section], env: Mapping[str, str]):
        self._given = env
        super().__init__(cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._given.items()}


def kind(cls: type[_Section], key: str) -> str:
    """The type of `cls.key` in words, for error messages."""
    hint = cls.model_fields[key].annotation
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(get_args(hint))
    return "list of str" if get_origin(hint) is tuple else hint.__name__


@functools.cache
def _adapter(cls: type[_Section], key: str) -> TypeAdapter:
    """One key's validator. Per key, not `cls.model_validate`: a settings model validates
    through its `__init__`, which would drop the `strict` flag."""
    field = cls.model_fields[key]
    hint = field.annotation
    return TypeAdapter(Annotated[hint, *field.metadata] if field.metadata else hint)


def _checked(cls: type[_Section], raw: Mapping[str, Any], strict: bool,
             where: Callable[[str], str]) -> dict[str, Any]:
    """The keys of one source, each validated as its field's type."""
    out = {}
    for key, value in raw.items():
        try:
            out[key] = _adapter(cls, key).validate_python(value, strict=strict)
        except ValidationError:
            raise SettingsError(f"{where(key)}: '{key}' must be {kind(cls, key)}, "
                                f"got {value!r}") from None
    return out


def _toml_table(path: Path, section: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{path}: {e}") from None
    unknown_tables = set(data) - set(SECTIONS)
    if unknown_tables:
        raise SettingsError(f"{path}: unknown table(s) {sorted(unknown_tables)}; "
                            f"expected {sorted(SECTIONS)}")
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: '{section}' must be a table ([{section}])")
    return table


def load(section: str, config_file: str | Path | None = None,
         flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Any:
    """Build the frozen settings of `section` ("agent" or "router") from every source."""
    cls = SECTIONS[section]
    known, values = cls.model_fields, {}
    if config_file:
        path = Path(config_file)
        table = _toml_table(path, section)
        for key in table:
            if key not in known:
                raise SettingsError(f"{path}: unknown key '{section}.{key}'")
        values |= _checked(cls, table, True, lambda _: str(path))
    env = os.environ if env is None else env
    prefix = cls.model_config["env_prefix"]
    for name in env:
        key = name[len(prefix):].lower()
        if name.startswith(prefix) and key not in known:
            raise SettingsError(f"environment: unknown variable {name} (no key '{key}' "
                                f"in [{section}])")
    values |= _checked(cls, _Environment(cls, env)(), False,
                       lambda key: f"environment {prefix}{key.upper()}")
    given = {k: os.fspath(v) if isinstance(v, os.PathLike) else v
             for k, v in (flags or {}).items() if v is not None}
    for key in given:
        if key not in known:
            raise SettingsError(f"flag: unknown option --{key.replace('_', '-')}")
    values |= _checked(cls, given, True, lambda key: f"--{key.replace('_', '-')}")
    return cls(**values)


def parse_layout(text: str, workers: int) -> tuple[int, ...]:
    """'2,1,1' -> (2, 1, 1); '' -> all replicas. Checked by the worker group's own rule,
    `flying_core.layout.validate`, against every size that divides the worker count: the model's
    head counts, which may rule out more sizes, are known once it is loaded."""
    if workers < 1:
        raise SettingsError(f"workers: must be at least 1, got {workers}")
    if not text.strip():
        return (1,) * workers
    try:
        sizes = tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise SettingsError(f"layout: expected sizes like '2,1,1', got {text!r}") from None
    divisors = lay.pool_sizes(workers, num_heads=workers, num_kv_heads=workers)
    try:
        return lay.validate(sizes, workers, divisors)
    except FailedPrecondition as e:
        raise SettingsError(f"layout: {e.message}") from None
