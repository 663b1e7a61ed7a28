# Two commands set everything up on a fresh machine: `make serve` and `make test`.
# TORCH is what pip installs for PyTorch. The pin below is the CPU build on the project's machines, where that
# wheel is already on disk. On another Linux machine the same pin downloads PyTorch's default build, with CUDA and
# its NVIDIA libraries (several GB): right with a GPU. Without one, take the CPU build (about 200 MB) from
# PyTorch's own index: `make serve TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The IDX files of the tests and bench/gpu.sh: $LATENT_CNF_DATA, else the shared folder beside the clone.
DATA ?= $(or $(LATENT_CNF_DATA),../shared/data)
PIP := $(BIN)/pip install --disable-pip-version-check --progress-bar on

.PHONY: serve test test-all lint typecheck bench install gpu-bundle evaluate-gpus image-check

# Stamps: .torch (the venv and PyTorch), .serve (what `make serve` needs), .installed (everything: tests, bench).
$(VENV)/.torch:
	@echo "== Creating $(VENV) and installing PyTorch ($(TORCH)$(if $(TORCH_INDEX), from $(TORCH_INDEX)))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	touch $@

$(BIN)/.serve: pyproject.toml $(VENV)/.torch
	@echo "== Installing the service's dependencies into $(VENV)"
	$(PIP) -e '.[serve]'
	touch $@

$(BIN)/.installed: pyproject.toml $(VENV)/.torch
	@echo "== Installing the service, training, benchmark and test dependencies into $(VENV)"
	$(PIP) -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.serve
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

# The Docker image, built from the Dockerfile unchanged without Docker or a registry, served as uid 10001 and
# checked (root, Debian; docs/operations.md, "Checking the image without Docker"). ~4 min from nothing, ~3 after.
image-check:
	bash deploy/image-check.sh

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
