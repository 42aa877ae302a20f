"""flying/settings.py: precedence, errors that name the key, list parsing, layouts."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from flying import cli
from flying import settings as st
from flying.settings import AgentSettings, RouterSettings, SettingsError, load, parse_layout

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "flying.example.toml"


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flying.toml"
    path.write_text(text)
    return path


def test_defaults_without_sources():
    assert load("agent", env={}) == AgentSettings()
    assert load("router", env={}) == RouterSettings()


def test_precedence_defaults_toml_env_flags(tmp_path):
    path = toml(tmp_path, "[agent]\nport = 1\nworkers = 4\ngrace_s = 3.5\n")
    env = {"FLYING_AGENT_PORT": "2", "FLYING_AGENT_WORKERS": "8"}
    s = load("agent", path, flags={"port": 3}, env=env)
    assert s.port == 3                   # flag beats env beats TOML
    assert s.workers == 8                # env beats TOML
    assert s.grace_s == 3.5              # TOML beats default
    assert s.max_queue == AgentSettings().max_queue   # default
    assert load("agent", path, env=env).port == 2
    assert load("agent", path, env={}).port == 1


def test_none_flags_do_not_override(tmp_path):
    path = toml(tmp_path, "[router]\npolicy = false\n")
    assert load("router", path, flags={"policy": None, "grpc_port": None}, env={}).policy is False


def test_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("FLYING_ROUTER_HTTP_PORT", "8123")
    assert load("router").http_port == 8123


def test_other_section_variables_are_ignored():
    assert load("agent", env={"FLYING_ROUTER_HTTP_PORT": "1", "FLYING_LOG_LEVEL": "x"}) == \
        AgentSettings()


def test_settings_are_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        load("agent", env={}).port = 1  # type: ignore[misc]


@pytest.mark.parametrize("text", [
    "[agent]\nbogus_key = 1\n",
    "[agent]\nport = 50061\n\n[agent.bogus_key]\nx = 1\n",
])
def test_unknown_toml_key_names_it(tmp_path, text):
    with pytest.raises(SettingsError, match="bogus_key"):
        load("agent", toml(tmp_path, text), env={})


def test_unknown_toml_table_names_it(tmp_path):
    with pytest.raises(SettingsError, match="agnet"):
        load("agent", toml(tmp_path, "[agnet]\nport = 1\n"), env={})


def test_section_must_be_a_table(tmp_path):
    with pytest.raises(SettingsError, match="'agent' must be a table"):
        load("agent", toml(tmp_path, "agent = 5\n"), env={})


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(SettingsError, match="flying.toml"):
        load("agent", toml(tmp_path, "[agent\nport = 1\n"), env={})
    with pytest.raises(SettingsError, match="nothere.toml"):
        load("agent", tmp_path / "nothere.toml", env={})


def test_unknown_env_variable_names_it():
    with pytest.raises(SettingsError, match="FLYING_AGENT_PROT"):
        load("agent", env={"FLYING_AGENT_PROT": "1"})


def test_unknown_flag_names_it():
    with pytest.raises(SettingsError, match="--no-such"):
        load("router", flags={"no_such": 1}, env={})


@pytest.mark.parametrize("section,line,key", [
    ("agent", 'port = "fifty"', "port"),
    ("agent", "port = 1.5", "port"),
    ("agent", "workers = true", "workers"),
    ("agent", "grace_s = false", "grace_s"),
    ("agent", "grace_s = [1]", "grace_s"),
    ("agent", "host = 127", "host"),
    ("agent", "model = true", "model"),
    ("router", "policy = \"maybe\"", "policy"),
    ("router", "policy = 1.0", "policy"),
    ("router", "agents = 5", "agents"),
    ("router", "agents = [1, 2]", "agents"),
])
def test_wrong_toml_type_names_the_key(tmp_path, section, line, key):
    path = toml(tmp_path, f"[{section}]\n{line}\n")
    with pytest.raises(SettingsError, match=f"'{key}' must be") as e:
        load(section, path, env={})
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name,value", [
    ("FLYING_AGENT_PORT", "x"), ("FLYING_AGENT_GRACE_S", "soon"), ("FLYING_ROUTER_POLICY", "2"),
])
def test_wrong_env_type_names_the_variable(name, value):
    section = name.split("_")[1].lower()
    with pytest.raises(SettingsError, match=name):
        load(section, env={name: value})


def test_env_strings_are_converted():
    s = load("router", env={"FLYING_ROUTER_POLICY": "off", "FLYING_ROUTER_GRACE_S": "2.5",
                            "FLYING_ROUTER_GRPC_PORT": " 7 "})
    assert (s.policy, s.grace_s, s.grpc_port) == (False, 2.5, 7)
    assert load("router", env={"FLYING_ROUTER_POLICY": "Yes"}).policy is True


def test_env_integer_string_for_a_float():
    s = load("agent", env={"FLYING_AGENT_GRACE_S": "3"})
    assert s.grace_s == 3.0 and isinstance(s.grace_s, float)


@pytest.mark.parametrize("source", ["toml", "env", "flag"])
def test_tuple_parsing(tmp_path, source):
    want = ("a:1", "b:2")
    if source == "toml":
        s = load("router", toml(tmp_path, '[router]\nagents = ["a:1", "b:2"]\n'), env={})
    elif source == "env":
        s = load("router", env={"FLYING_ROUTER_AGENTS": " a:1, b:2 ,"})
    else:
        s = load("router", flags={"agents": ["a:1", "b:2"]}, env={})
    assert s.agents == want and isinstance(s.agents, tuple)


def test_tuple_from_comma_string_in_toml_and_empty_env(tmp_path):
    assert load("router", toml(tmp_path, '[router]\napi_keys = "k1,k2"\n'),
                env={}).api_keys == ("k1", "k2")
    assert load("router", env={"FLYING_ROUTER_API_KEYS": ""}).api_keys == ()


@pytest.mark.parametrize("text,workers,want", [
    ("", 3, (1, 1, 1)),
    ("  ", 2, (1, 1)),
    ("2", 2, (2,)),
    ("1,1", 2, (1, 1)),
    ("2,1,1", 4, (2, 1, 1)),
    (" 4 , 4 ", 8, (4, 4)),
])
def test_parse_layout(text, workers, want):
    assert parse_layout(text, workers) == want


@pytest.mark.parametrize("text,workers", [
    ("two", 2), ("2,", 2), ("2,1", 2), ("1", 2), ("0,2", 2), ("-1,3", 2), ("", 0),
])
def test_parse_layout_rejects(text, workers):
    with pytest.raises(SettingsError):
        parse_layout(text, workers)


def test_cli_flags_reach_the_settings(tmp_path):
    path = toml(tmp_path, "[router]\ngrpc_port = 1\n")
    ns = cli.build_parser().parse_args(["router", "--config", str(path), "--agent", "h1:1",
                                        "--agent", "h2:2", "--no-policy", "--http-port", "9"])
    s = load("router", ns.config, cli._flags(ns, "router"), env={})
    assert (s.agents, s.policy, s.http_port, s.grpc_port) == (("h1:1", "h2:2"), False, 9, 1)
    ns = cli.build_parser().parse_args(["agent", "--grace-s", "2.5", "--layout", "2"])
    s = load("agent", None, cli._flags(ns, "agent"), env={})
    assert (s.grace_s, s.layout) == (2.5, "2")


def test_path_flag_for_a_str_key(tmp_path):
    assert load("agent", flags={"model": tmp_path}, env={}).model == str(tmp_path)


def test_cli_reports_configuration_errors(tmp_path, capsys):
    path = toml(tmp_path, "[agent]\nportt = 1\n")
    assert cli.main(["agent", "--config", str(path)]) == 2
    assert "portt" in capsys.readouterr().err


def test_example_config_documents_every_key():
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data) == set(st.SECTIONS)
    for section, cls in st.SECTIONS.items():
        assert set(data[section]) == set(cls.model_fields), section
        load(section, EXAMPLE, env={})      # every value has the right type


def test_example_config_values_are_the_defaults_except_model():
    for section, cls in st.SECTIONS.items():
        loaded = load(section, EXAMPLE, env={}).model_dump()
        defaults = cls().model_dump()
        changed = {k for k in loaded if loaded[k] != defaults[k]}
        assert changed <= {"model"}, (section, changed)


def test_step_budget_settings_reach_the_worker_group(tmp_path):
    """--max-batch-tokens / --max-running (vLLM's --max-num-batched-tokens / --max-num-seqs)
    become the group's scheduler budget; a test's group override still wins."""
    from agent.metrics import AgentMetrics
    from agent.node import Node
    path = toml(tmp_path, "[agent]\nworkers = 1\nmax_batch_tokens = 2048\n")
    s = load("agent", path, flags={"max_running": 64}, env={})
    cfg = Node(s, "m", AgentMetrics()).group_config()
    assert (cfg.max_batch_tokens, cfg.max_running) == (2048, 64)
    cfg = Node(s, "m", AgentMetrics(), group_overrides={"max_running": 1}).group_config()
    assert (cfg.max_batch_tokens, cfg.max_running) == (2048, 1)
    with pytest.raises(SettingsError):
        load("agent", flags={"max_batch_tokens": 0}, env={})
