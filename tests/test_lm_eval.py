"""A real client: lm-evaluation-harness (`lm-eval`, its `local-completions` model, the
OpenAI `/v1/completions` client) against Flying's gateway (a real router + a 1-worker agent,
SmolLM2-135M-Instruct in fp32) and against stock `vllm serve` on the same model folder, on two
tasks over data committed in tests/data/lmeval/ (read offline): `flying_mc`, log-likelihood
multiple choice (echo + logprobs, max_tokens 1), and `flying_gen`, greedy generation with
stop strings scored by exact match. Every item's results are vLLM's: log-likelihoods to 1e-3,
the same is-greedy flags and choices, the same generated strings, the same scores."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from bench.vllm_serve import ServeConfig, VllmServer
from flying.settings import AgentSettings, RouterSettings
from tests.agentkit import InProcessAgent, free_port
from tests.test_router import InProcessRouter

pytestmark = pytest.mark.slow

# datasets reads these when it is imported: the tasks' data are local files, nothing is
# fetched from a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TASK_DIR = Path(__file__).parent / "data" / "lmeval"
TASKS = ("flying_mc", "flying_gen")
MAX_MODEL_LEN = 2048
MODEL_NAME = "flying"        # both servers answer to it


def task_configs(cache_dir: Path) -> list[dict]:
    """The tasks' YAML with their data files made absolute (the YAML names them relative to
    the repository root, for the `lm_eval` command line) and datasets' cache under the test's
    temporary folder."""
    out = []
    for name in TASKS:
        cfg = yaml.safe_load((TASK_DIR / f"{name}.yaml").read_text())
        files = cfg["dataset_kwargs"]["data_files"]
        root = TASK_DIR.parent.parent.parent
        cfg["dataset_kwargs"] = {"data_files": {k: str(root / v) for k, v in files.items()},
                                 "cache_dir": str(cache_dir)}
        out.append(cfg)
    return out


def evaluate(base_url: str, tokenizer: str, cache_dir: Path) -> dict:
    """lm-eval's `local-completions` against `base_url`: its results and per-item samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    out = simple_evaluate(
        model="local-completions",
        model_args={"model": MODEL_NAME, "base_url": f"{base_url}/v1/completions",
                    "tokenizer": tokenizer, "tokenizer_backend": "huggingface",
                    "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1,
                    "max_length": MAX_MODEL_LEN, "timeout": 120},
        tasks=copy.deepcopy(task_configs(cache_dir)),
        task_manager=TaskManager(include_defaults=False),
        bootstrap_iters=0, log_samples=True)
    return {"results": out["results"],
            "samples": {t: sorted(out["samples"][t], key=lambda s: s["doc_id"])
                        for t in TASKS}}


@pytest.fixture(scope="module")
def vllm_run(smollm2_model, tmp_path_factory):
    """lm-eval against stock `vllm serve` (fp32, one API server, eager as the agent)."""
    tmp = tmp_path_factory.mktemp("vllm")
    cfg = ServeConfig(model=smollm2_model, port=free_port(), max_model_len=MAX_MODEL_LEN,
                      served_model_name=MODEL_NAME, api_server_count=1)
    with VllmServer(cfg, log_path=tmp / "vllm.log") as srv:
        srv.wait_ready(timeout_s=600)
        return evaluate(srv.base_url, smollm2_model, tmp / "datasets")


@pytest.fixture(scope="module")
def flying_run(smollm2_model, tmp_path_factory):
    """lm-eval against Flying's gateway: a router over one agent with one worker."""
    tmp = tmp_path_factory.mktemp("flying")
    agent = InProcessAgent(AgentSettings(model=smollm2_model, workers=1, port=free_port(),
                                         dtype="float32", max_model_len=MAX_MODEL_LEN,
                                         node_name="A"))
    agent.start()
    try:
        router = InProcessRouter(RouterSettings(
            agents=(f"127.0.0.1:{agent.settings.port}",), grpc_port=free_port(),
            http_port=free_port(), policy=False, model_name=MODEL_NAME)).start()
        try:
            return evaluate(f"http://127.0.0.1:{router.settings.http_port}", smollm2_model,
                            tmp / "datasets")
        finally:
            router.stop()
    finally:
        agent.stop()


def test_loglikelihood_task_equals_vllm_serve(vllm_run, flying_run):
    want, got = vllm_run["samples"]["flying_mc"], flying_run["samples"]["flying_mc"]
    assert len(want) == len(got) == 30
    for w, g in zip(want, got):
        assert g["doc_id"] == w["doc_id"]
        # per choice: (log-likelihood of the continuation, whether it is the greedy one)
        wl = [r[0] for r in w["resps"]]
        gl = [r[0] for r in g["resps"]]
        assert len(gl) == len(wl) == 4
        assert [x[1] for x in gl] == [x[1] for x in wl], (w["doc_id"], gl, wl)
        assert [x[0] for x in gl] == pytest.approx([x[0] for x in wl], abs=1e-3), w["doc_id"]
        assert (g["acc"], g["acc_norm"]) == (w["acc"], w["acc_norm"]), w["doc_id"]
    for metric in ("acc,none", "acc_norm,none"):
        assert flying_run["results"]["flying_mc"][metric] == \
            vllm_run["results"]["flying_mc"][metric]
    # the model is not guessing (chance is 0.25), and some continuations are greedy ones
    assert vllm_run["results"]["flying_mc"]["acc,none"] > 0.4
    assert any(r[0][1] for s in want for r in s["resps"])


def test_generation_task_equals_vllm_serve(vllm_run, flying_run):
    want, got = vllm_run["samples"]["flying_gen"], flying_run["samples"]["flying_gen"]
    assert len(want) == len(got) == 30
    for w, g in zip(want, got):
        assert g["doc_id"] == w["doc_id"]
        assert g["resps"] == w["resps"], w["doc_id"]          # the generated strings
        assert g["filtered_resps"] == w["filtered_resps"]
        assert g["exact_match"] == w["exact_match"]
    assert flying_run["results"]["flying_gen"]["exact_match,strip"] == \
        vllm_run["results"]["flying_gen"]["exact_match,strip"]
    assert any(s["exact_match"] for s in want)                 # some answers are right
    assert not all(s["resps"] == want[0]["resps"] for s in want)
