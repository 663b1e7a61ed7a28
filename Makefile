# Two commands set everything up on a fresh machine: `make serve` and `make test`.
# TORCH pins the CPU wheel used on the project's machines; elsewhere run e.g. `make serve TORCH=torch` for CUDA.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The IDX files of the tests and bench/gpu.sh: $LATENT_CNF_DATA, else the shared folder beside the clone.
DATA ?= $(or $(LATENT_CNF_DATA),../shared/data)

.PHONY: serve test test-all lint typecheck bench install gpu-bundle evaluate-gpus

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: $(BIN)/.installed
	LATENT_CNF_DATA=$(abspath $(DATA)) $(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	LATENT_CNF_DATA=$(abspath $(DATA)) $(BIN)/python -m pytest -q -m ''

# The full likelihood protocol (train/evaluate.py at its defaults) on the NPROC GPUs of this machine: the IWAE
# scores and the samples are shared out over the processes, the JSON is that of one process
# (docs/operations.md, "Training on several GPUs or nodes"). Writes runs/eval/<checkpoint>-<config hash>.json.
CHECKPOINT ?= mnist-final-cond
NPROC ?= $(shell nvidia-smi -L 2>/dev/null | wc -l)

evaluate-gpus: $(BIN)/.installed
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m train.evaluate --checkpoint $(CHECKPOINT) --device cuda

lint: $(BIN)/.installed
	$(BIN)/ruff format --check . && $(BIN)/ruff check . && $(BIN)/mypy

# mypy, strict, on latent_cnf/ and service/ (its settings: [tool.mypy] in pyproject.toml).
typecheck: $(BIN)/.installed
	$(BIN)/mypy

# For bench/gpu.sh on the lent GPU machine (Python 3.12, torch and torchdiffeq, no network): the wheels it
# lacks and the MNIST files, in .device/ (gitignored), to carry along. About 15 MiB.
GPU_WHEELS := fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv uvicorn h11 python-multipart \
	fastapi-offline torchode torchtyping 'typeguard<3' annotated-types typing-inspection safetensors PyYAML \
	python-json-logger opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions \
	opentelemetry-instrumentation opentelemetry-instrumentation-asgi opentelemetry-instrumentation-fastapi \
	psutil opentelemetry-util-http opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common \
	opentelemetry-exporter-otlp-common opentelemetry-exporter-http-transport opentelemetry-proto protobuf \
	googleapis-common-protos wrapt asgiref packaging requests urllib3 idna certifi charset-normalizer
GPU_PLATFORMS := $(foreach p,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(p)_x86_64)

gpu-bundle:
	rm -rf .device && mkdir -p .device/wheels .device/data
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .device/wheels $(GPU_WHEELS)
	cp -r $(DATA)/mnist .device/data/
	du -sh .device
