# syntax=docker/dockerfile:1
# The latent-cnf service image.
#   docker build -t latent-cnf:cuda .                         # default: CUDA
#   docker build --build-arg VARIANT=cpu -t latent-cnf:cpu .  # CPU only, GBs smaller (no CUDA libraries)
#   docker build --build-arg EXTRAS=serve,train -t latent-cnf:cuda-train .  # also trains (deploy/k8s/train-job.yaml)
# The CUDA variant needs no CUDA base image: PyTorch's Linux x86-64 wheels on PyPI bundle the CUDA runtime
# and cuDNN as pip packages, so the host needs only the NVIDIA driver and the NVIDIA container toolkit.

# The interpreter the project is tested with.
ARG PYTHON_VERSION=3.11

# Builder: turn the source into one wheel (package code + the shipped model folders as package data).
# .dockerignore is an allowlist, so only pyproject.toml, README.md and the packages reach this stage.
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Runtime: torch for the chosen variant, then the wheel with its EXTRAS (by default serve, the web stack).
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG VARIANT=cuda
# The package's extras to install: serve (the web stack) for the service; serve,train for an image that also
# runs `torchrun -m train` (tqdm, scipy, flow_matching).
ARG EXTRAS=serve
# Pinned so both variants get the same torch; torch>=2.1 in pyproject.toml is the floor, this is the build.
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# torch first and on its own layer: it is by far the largest and changes least often. The CPU wheel comes
# from PyTorch's CPU index (no CUDA libraries); the CUDA wheel is the default one on PyPI.
RUN case "${VARIANT}" in \
        cuda) pip install "torch==${TORCH_VERSION}" ;; \
        cpu) pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu ;; \
        *) echo "VARIANT must be cuda or cpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac

# EXTRAS alone: by default the train/bench/dev extras (tqdm, scipy, psutil, pytest, ...) stay out of the image.
# torch is already satisfied above, so pip keeps the variant's build instead of pulling another one.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install "$(echo /wheels/*.whl)[${EXTRAS}]"

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without resolving names.
RUN useradd --system --uid 10001 --create-home --home-dir /home/app app
USER 10001
# Nothing of the source tree is here: `service` and the model folders are imported from site-packages.
WORKDIR /home/app

EXPOSE 8000
# Liveness only (/healthz answers while models load); compose and Kubernetes gate traffic on /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# One worker: the process owns the device and batches requests itself; scale with replicas, not workers.
# On SIGTERM uvicorn stops accepting, gives in-flight requests 30 s, then the batcher drains its queue.
# `python -m service`, not plain uvicorn: it adds the connection cap and the header and body timeouts
# (LATENT_CNF_MAX_CONNECTIONS, _HEADER_TIMEOUT_S, _BODY_TIMEOUT_S, _KEEP_ALIVE_S; see the README).
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "30"]
