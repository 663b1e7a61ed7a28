"""torch.distributed for runs started by torchrun: process group, sharding and the few collectives we need.

Started without torchrun (no RANK/WORLD_SIZE in the environment) every helper is the single-process identity,
so a one-process run computes exactly what it computed before distributed training existed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from latent_cnf.device import resolve_device


def setup(device_name: str) -> torch.device:
    """Join the process group torchrun describes in the environment: NCCL for CUDA, gloo for the CPU. Each
    process of a node takes the GPU of its LOCAL_RANK. Returns the device this process computes on."""
    device = resolve_device(device_name)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    """Leave the group together: a rank that destroys it while another still talks to it, or exits with the
    group's threads alive, is aborted by the C++ runtime ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 alone writes logs, pictures, metrics and checkpoints."""
    return rank() == 0


def backend() -> str | None:
    return str(dist.get_backend()) if dist.is_initialized() else None


def rank_seed(*key: int) -> int:
    """A seed of this rank's own random stream, from `key` (the run's seed, ...): ranks draw independent noise
    for their rows, where one seed on every rank would repeat the same noise in every shard."""
    return int(np.random.SeedSequence([*key, rank()]).generate_state(1)[0])


def shard(n: int) -> slice:
    """This rank's contiguous block of range(n): blocks differ in size by at most one, in rank order, so
    concatenating the blocks of all ranks gives range(n) back."""
    size, extra = divmod(n, world_size())
    r = rank()
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


def gather(items: list[Any]) -> list[Any]:
    """Every rank's `items` concatenated in rank order, on every rank (tensors travel through the CPU)."""
    if not dist.is_initialized():
        return items
    parts: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(parts, [x.cpu() if torch.is_tensor(x) else x for x in items])
    return [x for part in parts for x in part]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (each rank's block of a `shard`), on the CPU."""
    if not dist.is_initialized():
        return tensor
    return torch.cat(gather([tensor]))


def weighted_mean(values: dict[str, float], weight: float) -> dict[str, float]:
    """The mean of per-rank numbers weighted by `weight` (a rank's share of the batch): per-shard means of a
    loss become the mean over the global batch."""
    if not dist.is_initialized():
        return values
    keys = sorted(values)
    sums = torch.tensor([weight * values[k] for k in keys] + [weight], dtype=torch.float64)
    reduced = _all_reduce(sums)
    return {k: (reduced[i] / reduced[-1]).item() for i, k in enumerate(keys)}


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank: decisions taken on rank 0 (the solver-gap guard) apply everywhere."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def local_leader_first() -> Iterator[None]:
    """Local rank 0 of each node runs the block (a download into a shared folder) before the others do."""
    leader = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if not leader:
        barrier()
    yield
    if leader:
        barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    on_device = tensor.to(_collective_device())
    dist.all_reduce(on_device)
    return on_device.cpu()


class InForward(nn.Module):
    """Runs `function(model, *args)` inside forward(): DistributedDataParallel hooks its gradient all-reduce
    into forward(), and the objectives call the model's methods (encode, decode, prior) rather than forward."""

    def __init__(self, model: nn.Module, function: Callable[..., Any]):
        super().__init__()
        self.model = model
        self.function = function

    def forward(self, *args: Any) -> Any:
        return self.function(self.model, *args)


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` wrapped for gradient averaging when distributed, else itself. Every trainable parameter takes
    part in every step (no unused-parameter search); the model has no running statistics (no BatchNorm), so
    buffers need no broadcast."""
    if not dist.is_initialized():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
