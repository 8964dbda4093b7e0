# torchgrpc: every command a user or CI runs. `make serve` and `make test` set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= efficientnet_lite0
BACKEND ?= auto
WEIGHTS ?=
PORT ?= 50052
SERVER ?= localhost:$(PORT)
IMAGES ?= export/sample_images/cat.jpg export/sample_images/coffee.jpg

.PHONY: help venv export serve client compare bench benchmark ab test lint protos clean

help:
	@echo "make serve [MODEL=efficientnet_lite0|resnet34] [BACKEND=auto|onnxruntime|torchscript|eager] [PORT=50052]"
	@echo "make export [MODEL=...] [WEIGHTS=|random|path/to/state_dict.pth]"
	@echo "make client [IMAGES='a.jpg b.png'] [SERVER=host:port]"
	@echo "make compare [MODEL=...]    backend latency and throughput, table + JSON + chart"
	@echo "make bench [ARGS=...]       load generator against a server it starts (benchmarks.bench --help)"
	@echo "make benchmark               every performance target side by side: benchmarks/RESULTS.md"
	@echo "make ab BASE=rev [ARGS=...]  this checkout's server against revision rev's, in alternating rounds"
	@echo "make test                    lint, type-check and the whole test suite"
	@echo "make protos                  regenerate serve/pb/ from protos/"
	@echo "make docs                    regenerate docs/configuration.md from serve/config.py"

# The virtual environment, rebuilt when the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

export: venv
	$(PY) -m export --model $(MODEL) --weights '$(WEIGHTS)'

# `make serve` exports first only when the model has never been exported: a folder exported with
# other WEIGHTS is served as it is.
artifacts/%/config.pbtxt: | venv
	$(PY) -m export --model $* --weights '$(WEIGHTS)'

serve: venv artifacts/$(MODEL)/config.pbtxt
	$(PY) -m serve --model $(MODEL) --backend $(BACKEND) --port $(PORT)

client: venv
	$(PY) -m serve.client $(IMAGES) --server $(SERVER)

compare: venv artifacts/$(MODEL)/config.pbtxt
	$(PY) -m benchmarks.compare --model $(MODEL)

protos: venv
	$(PY) protos/generate.py

# docs/configuration.md, from the settings' definition (tests/test_configuration.py fails when it
# is stale). Phony: the docs/ folder exists.
.PHONY: docs
docs: venv
	$(PY) -m serve.config_docs

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory tritonclient-test

# NVIDIA's tritonclient needs protobuf<7 and registers the same inference.* protobuf symbols as
# serve/pb, so its compatibility suite has a virtualenv of its own, rebuilt when its list changes.
TRITON_VENV ?= .venv-tritonclient
TRITON_REQUIREMENTS := tests/tritonclient/requirements.txt

$(TRITON_VENV)/.installed: $(TRITON_REQUIREMENTS)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet -r $(TRITON_REQUIREMENTS)
	touch $@

# tritonclient against a server it starts from $(VENV). --confcutdir keeps tests/conftest.py
# (torch, serve/pb) out; pyproject's pytest settings (warnings are errors, asyncio) still apply.
.PHONY: tritonclient-test
tritonclient-test: venv $(TRITON_VENV)/.installed
	TORCHGRPC_SERVER_PYTHON=$(abspath $(PY)) $(TRITON_VENV)/bin/python -m pytest tests/tritonclient \
		-p no:cacheprovider --confcutdir=tests/tritonclient

clean:
	rm -rf $(VENV) $(TRITON_VENV) artifacts/*/ .mypy_cache .ruff_cache .pytest_cache

bench: venv artifacts/$(MODEL)/config.pbtxt
	$(PY) -m benchmarks.bench --start --model $(MODEL) --backend $(BACKEND) $(ARGS)

# Every performance target, measured side by side in one run: writes benchmarks/RESULTS.md.
benchmark: venv
	$(PY) -m benchmarks.run

# An optimisation's effect, against the drift of a noisy machine: both servers, alternating rounds.
ab: venv artifacts/$(MODEL)/config.pbtxt
	$(PY) -m benchmarks.ab --base $(BASE) --model $(MODEL) $(ARGS)
