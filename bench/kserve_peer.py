"""The second framework peer of the service benchmark: KServe's Python model server, as its docs write one.

A custom `kserve.Model` (load, then predict) behind `kserve.ModelServer`, one worker, the v1 protocol
(`POST /v1/models/<name>:predict`). KServe's Python server has no batching of its own (batching is a sidecar
agent in a Kubernetes deployment), so each request is one `model.sample` with the checkpoint's calibrated
sampler. Same checkpoint, device and torch threads as the service (read from its LATENT_CNF_* variables),
same answer as the service's `POST /generate` (base64 PNGs and latents). Access log and latency logging off,
as for every server of the benchmark.

    python bench/kserve_peer.py --port 8003
    curl -X POST localhost:8003/v1/models/mnist-final-cond:predict -d '{"n": 1, "seed": 0}'
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import secrets

import kserve
import torch

import latent_cnf
from latent_cnf.device import resolve_device
from latent_cnf.images import image_pngs

MODEL = os.environ.get("LATENT_CNF_DEFAULT_MODEL", "mnist-final-cond")


class Generator(kserve.Model):
    """`{"n", "label", "seed"}` in, the service's /generate response out."""

    def load(self) -> bool:
        if os.environ.get("LATENT_CNF_THREADS"):
            torch.set_num_threads(int(os.environ["LATENT_CNF_THREADS"]))
        self.model = latent_cnf.load(MODEL, resolve_device(os.environ.get("LATENT_CNF_DEVICE", "auto")))
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None, response_headers: dict | None = None) -> dict:
        n, label = int(payload.get("n", 16)), payload.get("label")
        seed = payload.get("seed")
        seed = int(seed) if seed is not None else secrets.randbelow(2**31)
        with torch.inference_mode():
            samples = self.model.sample(n, label=label, seed=seed)
        return {
            "model": MODEL,
            "n": n,
            "label": label,
            "labels": samples.labels.tolist() if samples.labels is not None else None,
            "seed": seed,
            "nfe": samples.nfe,
            "images": [base64.b64encode(png).decode() for png in image_pngs(samples.images)],
            "latents": samples.latents.tolist(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    model = Generator(MODEL)
    model.load()
    server = kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False)
    for name in ("uvicorn.access", "kserve.trace"):  # a line per request: KServe's switches leave them on
        logging.getLogger(name).addFilter(lambda record: False)
    server.start([model])


if __name__ == "__main__":
    main()
