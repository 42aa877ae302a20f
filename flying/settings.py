"""Typed settings for the agent and the router, from one TOML file, FLYING_* variables and flags.

Precedence, lowest first: built-in defaults < TOML file (`[agent]` / `[router]` tables) <
environment (`FLYING_AGENT_<KEY>`, `FLYING_ROUTER_<KEY>`) < command-line flags. A wrong key or a
value of the wrong type is a `SettingsError` naming the key and where it came from.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class AgentSettings:
    model: str = ""                 # HF folder; "" with `flying up`: the default model, built on first use
    workers: int = 2
    host: str = "127.0.0.1"
    port: int = 50061
    metrics_port: int = 0           # 0: no /metrics side port
    device: str = "auto"            # auto | cpu | cuda
    dtype: str = "auto"             # auto | float32 | bfloat16 | float16
    layout: str = ""                # "1,1", "2", "2,1,1"; "": all workers as replicas
    kv_bytes: int = 256 << 20       # KV pool per worker
    block_size: int = 32
    max_model_len: int = 2048
    max_queue: int = 256            # waiting requests per node before RESOURCE_EXHAUSTED
    tbt_slo_ms: float = 0.0         # > 0: SLO-aware batching (time between tokens, ms)
    node_name: str = ""
    grace_s: float = 10.0           # SIGTERM: streams get this long to finish
    seed: int = 0


@dataclass(frozen=True)
class RouterSettings:
    agents: tuple[str, ...] = ("127.0.0.1:50061",)
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8000
    api_keys: tuple[str, ...] = ()  # empty: no key needed
    policy: bool = True             # let the router reconfigure nodes
    policy_interval_s: float = 0.5
    grace_s: float = 10.0
    model_name: str = "flying"
    micro_requests: str = "off"     # off | adaptive (DynaServe split policy) | disagg (d = 0)


SECTIONS: dict[str, type] = {"agent": AgentSettings, "router": RouterSettings}


def _coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """`value` (TOML value, environment string or flag) as the type of `cls.key`."""
    hint = typing.get_type_hints(cls)[key]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower() if isinstance(value, (str, int)) else None
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)  # int(1.5) would silently drop the fraction
            if not isinstance(value, (str, int, float)):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(value)
            return float(value)
        if hint is str:
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str):
                raise ValueError(value)  # `host = 127` or `model = true` in TOML: a typo
            return value
        if typing.get_origin(hint) is tuple:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError(value)
    except (TypeError, ValueError):
        name = "list of str" if typing.get_origin(hint) is tuple else hint.__name__
        raise SettingsError(f"{source}: '{key}' must be {name}, got {value!r}") from None
    return value


def load(section: str, config_file: str | Path | None = None,
         flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Any:
    """Build the frozen settings of `section` ("agent" or "router") from every source."""
    cls = SECTIONS[section]
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
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
        for key, value in table.items():
            if key not in known:
                raise SettingsError(f"{path}: unknown key '{section}.{key}'")
            values[key] = _coerce(cls, key, value, str(path))
    env = os.environ if env is None else env
    prefix = f"FLYING_{section.upper()}_"
    for name, value in env.items():
        if name.startswith(prefix):
            key = name[len(prefix):].lower()
            if key not in known:
                raise SettingsError(f"environment: unknown variable {name} (no key '{key}' "
                                    f"in [{section}])")
            values[key] = _coerce(cls, key, value, f"environment {name}")
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in known:
            raise SettingsError(f"flag: unknown option --{key.replace('_', '-')}")
        values[key] = _coerce(cls, key, value, f"--{key.replace('_', '-')}")
    return cls(**values)


def parse_layout(text: str, workers: int) -> tuple[int, ...]:
    """'2,1,1' -> (2, 1, 1); '' -> all replicas. The sizes must partition the node's workers."""
    if workers < 1:
        raise SettingsError(f"workers: must be at least 1, got {workers}")
    if not text.strip():
        return (1,) * workers
    try:
        sizes = tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise SettingsError(f"layout: expected sizes like '2,1,1', got {text!r}") from None
    if any(s < 1 for s in sizes) or sum(sizes) != workers:
        raise SettingsError(f"layout: {text!r} must be positive sizes adding up to the "
                            f"{workers} workers")
    return sizes
