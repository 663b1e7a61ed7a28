"""The peer the service benchmark compares against: what a user would pick instead of writing a server.

LitServe's dynamic batching (`max_batch_size`, `batch_timeout`, its documented settings) around the same
checkpoint and the same calibrated sampler as the service: each request's base noise is drawn from its own
seed (`model.draw_base`), the batch goes through the flow in one call (`model.generate`, the model's
`sample_solver`, as `model.sample` does), and each request gets the same JSON shape as the service's
`POST /generate` (base64 PNGs and latents). Same device and torch threads, read from the service's own
LATENT_CNF_* variables.

    python bench/litserve_peer.py --port 8002 [--max-batch-size 64] [--batch-timeout 0.002]
    curl -X POST localhost:8002/predict -d '{"n": 1, "seed": 0}'
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets

import litserve as ls
import torch

import latent_cnf
from latent_cnf.device import resolve_device
from latent_cnf.images import image_pngs

MODEL = os.environ.get("LATENT_CNF_DEFAULT_MODEL", "mnist-final-cond")


class GenerateAPI(ls.LitAPI):
    """`{"n", "label", "seed"}` in, the service's /generate response out; requests merged per model call."""

    def setup(self, device: str) -> None:
        if os.environ.get("LATENT_CNF_THREADS"):
            torch.set_num_threads(int(os.environ["LATENT_CNF_THREADS"]))
        self.model = latent_cnf.load(MODEL, resolve_device(os.environ.get("LATENT_CNF_DEVICE", "auto")))

    def decode_request(self, request: dict) -> dict:
        seed = request.get("seed")
        seed = int(seed) if seed is not None else secrets.randbelow(2**31)
        return {"n": int(request.get("n", 16)), "label": request.get("label"), "seed": seed}

    def batch(self, inputs: list[dict]) -> list[dict]:
        return inputs  # requests of different n cannot be stacked; predict concatenates their noise

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def predict(self, requests: list[dict]) -> list[dict]:
        """One flow solve for the whole batch; its rows split back per request."""
        drawn = [self.model.draw_base(r["n"], r["label"], r["seed"]) for r in requests]
        z0 = torch.cat([z for z, _ in drawn])
        labels = torch.cat([lab for _, lab in drawn]) if drawn[0][1] is not None else None
        with torch.inference_mode():
            path = self.model.sample_from(z0, labels)
        latents, images = path.latents[-1], path.images[-1]
        out, start = [], 0
        for request in requests:
            rows = slice(start, start + request["n"])
            start += request["n"]
            out.append(
                request
                | {
                    "labels": labels[rows].tolist() if labels is not None else None,
                    "nfe": path.nfe,
                    "images": images[rows],
                    "latents": latents[rows].tolist(),
                }
            )
        return out

    def encode_response(self, output: dict) -> dict:
        images = [base64.b64encode(png).decode() for png in image_pngs(output["images"])]
        return {"model": MODEL, "temperature": 1.0, **output, "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, default=64, help="requests merged per model call at most")
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds a batch waits to fill")
    args = parser.parse_args()
    api = GenerateAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
