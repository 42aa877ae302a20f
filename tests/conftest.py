"""Shared fixtures: test checkpoints are built once into .models/ (never committed)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLYING_LOG_LEVEL", "WARNING")
# agents started by tests run eagerly (compiling costs minutes per start on 2 cores);
# tests/test_compiled.py covers the compiled path
os.environ.setdefault("FLYING_AGENT_ENFORCE_EAGER", "1")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the slow tests (4 workers, SmolLM2)")


def pytest_collection_modifyitems(config, items):
    """Slow tests run by default (CI included); FLYING_SKIP_SLOW=1 skips them for quick loops."""
    if config.getoption("--run-slow") or os.environ.get("FLYING_SKIP_SLOW") != "1":
        return
    skip = pytest.mark.skip(reason="slow: FLYING_SKIP_SLOW=1 is set")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The random tiny Llama (8 heads / 4 KV heads: TP 1, 2, 4), built once into .models/."""
    from flying_dev import checkpoints
    return str(checkpoints.ensure("tiny"))


@pytest.fixture(scope="session")
def smollm2_model() -> str:
    """SmolLM2-135M-Instruct as an fp32 HF folder (9 heads / 3 KV heads: TP 1, 3)."""
    from flying_dev import checkpoints
    return str(checkpoints.ensure("smollm2"))
