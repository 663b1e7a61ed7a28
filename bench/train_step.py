"""Seconds per training step of a preset: our formulation against a re-creation of the original's.

The original computed the CNF trace with one autograd call per latent dimension and integrated with the
adjoint method (dopri5, rtol = atol = 1e-5) in training. Ours uses the closed-form trace and fixed-step rk4
with plain backpropagation, and evaluates the hypernetwork once per solve at all the solver's stage times
(its parameters depend on t only). The variants in between show what each change contributes. Every
variant runs the same loss on the same batch from the same weights; steps are interleaved so that machine
noise hits all variants alike. With `--checkpoint` the step is the one that checkpoint was trained with
(its training.json's config: the rk4 step count the solver-gap guard settled on, the kinetic term if any); the
original's variants have no kinetic term, so any cost of ours counts against us.

    python bench/train_step.py --checkpoint mnist-final --data-dir ../shared/data [--discriminator] [--steps 3]
    python bench/train_step.py --preset final --data-dir ../shared/data     # freshly initialised weights
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

import latent_cnf
from latent_cnf import LatentCNF, SolverConfig, data, model_folder
from latent_cnf.cnf import FlowResult, LatentFlow
from latent_cnf.device import resolve_device
from train.discriminator import PatchDiscriminator
from train.objectives import OBJECTIVES, adversarial_losses, discriminator_loss
from train.presets import PRESETS, TrainConfig


class AutogradTraceODE(nn.Module):
    """The original's ODE function: dz from the dynamics, the trace by one autograd call per dimension."""

    def __init__(self, flow: LatentFlow, labels: torch.Tensor | None):
        super().__init__()
        self.flow, self.labels, self.nfe = flow, labels, 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe += 1
        z = state[0]
        if not torch.is_grad_enabled():  # the adjoint's forward pass runs without a graph
            z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            dz, _ = self.flow.dynamics(t, z, self.labels, with_trace=False)
            trace = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(z.shape[1]))
        return dz, -trace


class ClosedFormODE(AutogradTraceODE):
    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe += 1
        dz, trace = self.flow.dynamics(t, state[0], self.labels)
        return dz, -trace


class OriginalPrior(nn.Module):
    """The flow's log-density computed with a chosen trace and integration method."""

    def __init__(self, flow: LatentFlow, adjoint: bool, autograd_trace: bool, solver: SolverConfig):
        super().__init__()
        self.flow, self.adjoint, self.autograd_trace, self.solver = flow, adjoint, autograd_trace, solver
        self.uses_labels = flow.uses_labels

    def log_prob(self, z, labels=None, solver=None, kinetic=False) -> FlowResult:
        func = (AutogradTraceODE if self.autograd_trace else ClosedFormODE)(self.flow, labels)
        state, times = (z, z.new_zeros(len(z))), torch.tensor([self.flow.t1, self.flow.t0])
        if self.adjoint:
            params = tuple(self.flow.parameters())
            z0, delta = odeint_adjoint(func, state, times, rtol=1e-5, atol=1e-5, adjoint_params=params)
        else:
            step = (self.flow.t1 - self.flow.t0) / self.solver.steps
            z0, delta = odeint(func, state, times, method=self.solver.method, options={"step_size": step})
        return FlowResult(z0[-1], self.flow.base_log_prob(z0[-1]) - delta[-1], None, func.nfe)


@dataclass(frozen=True)
class Variant:
    name: str
    adjoint: bool = False
    autograd_trace: bool = False
    training_code: bool = False  # the trainer's own LatentFlow.log_prob, not a re-creation

    def prior(self, flow: LatentFlow, solver: SolverConfig) -> nn.Module:
        return flow if self.training_code else OriginalPrior(flow, self.adjoint, self.autograd_trace, solver)


def variants(steps: int) -> tuple[Variant, ...]:
    return (
        Variant("original: autograd trace + adjoint dopri5 1e-5", adjoint=True, autograd_trace=True),
        Variant("closed-form trace + adjoint dopri5 1e-5", adjoint=True),
        Variant(f"autograd trace + rk4 x{steps}, backprop", autograd_trace=True),
        Variant(f"closed-form trace + rk4 x{steps}, backprop"),
        Variant("ours: the above + hypernetwork once per solve", training_code=True),
    )


def one_step(model, disc, prior, x, labels, cfg) -> tuple[float, int]:
    model.prior = prior
    started = time.perf_counter()
    out = OBJECTIVES[cfg.objective](model, x, labels, cfg, cfg.train_solver, step=0)
    loss = out.loss
    if disc is not None:
        fake = torch.sigmoid(out.logits)
        discriminator_loss(disc, x, fake).backward()
        adversarial, matching = adversarial_losses(disc, x, fake)
        loss = loss + adversarial + matching
    loss.backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started, out.nfe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="final", choices=sorted(PRESETS), help="without --checkpoint")
    parser.add_argument(
        "--checkpoint",
        help="start from these trained weights, with the training config in their training.json (the solver steps the "
        "guard settled on, the --set overrides of the run)",
    )
    parser.add_argument("--batch-size", type=int, help="default: the training config's")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument(
        "--discriminator",
        action=argparse.BooleanOptionalAction,
        help="include the patch discriminator's updates (default: as the training config says)",
    )
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--train-steps",
        type=int,
        help="rk4 steps of the fixed-step solves (default: the preset's, or where the checkpoint's run ended)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.checkpoint:
        training = model_folder.read_training(args.checkpoint)
        name, cfg = training["preset"], TrainConfig.from_dict(training["train_config"])
        # train_config is the run's configuration; its training solver adapted to this many steps by the end
        cfg = replace(cfg, train_solver=replace(cfg.train_solver, steps=training["validation"]["train_solver_steps"]))
    else:
        name, cfg = args.preset, PRESETS[args.preset].train
    cfg = replace(cfg, batch_size=args.batch_size or cfg.batch_size)
    if args.train_steps:
        cfg = replace(cfg, train_solver=replace(cfg.train_solver, steps=args.train_steps))
    use_disc = cfg.adversarial if args.discriminator is None else args.discriminator
    all_variants = variants(cfg.train_solver.steps)
    split = data.load_split("mnist", "fit", args.data_dir)
    x = data.to_float(split.images[: cfg.batch_size]).to(device)
    labels = split.labels[: cfg.batch_size].to(device)
    torch.manual_seed(cfg.seed)
    base = latent_cnf.load(args.checkpoint, device) if args.checkpoint else LatentCNF(PRESETS[name].model).to(device)
    base.train()
    base_disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_leaky).to(device)
    times: dict[str, list[float]] = {v.name: [] for v in all_variants}
    nfes: dict[str, int] = {}
    for repeat in range(args.steps + 1):
        for variant in all_variants:
            model = copy.deepcopy(base)
            disc = copy.deepcopy(base_disc) if use_disc else None
            prior = variant.prior(model.prior, cfg.train_solver)
            torch.manual_seed(repeat)
            seconds, nfe = one_step(model, disc, prior, x, labels, cfg)
            if repeat:  # the first round warms up
                times[variant.name].append(seconds)
            nfes[variant.name] = nfe
    ours = statistics.median(times[all_variants[-1].name])
    rows = [
        {
            "variant": v.name,
            "seconds_per_step": statistics.median(times[v.name]),
            "forward_nfe": nfes[v.name],
            "speedup_of_ours": statistics.median(times[v.name]) / ours,
        }
        for v in all_variants
    ]
    disc_note = "with discriminator" if use_disc else "without discriminator"
    print(f"preset {name}, batch {cfg.batch_size}, {disc_note}, device {device}, median of {args.steps} steps")
    print(f"{'variant':52s} {'s/step':>8s} {'NFE':>6s} {'ours is x faster':>17s}")
    for row in rows:
        seconds, nfe, speedup = row["seconds_per_step"], row["forward_nfe"], row["speedup_of_ours"]
        print(f"{row['variant']:52s} {seconds:8.3f} {nfe:6d} {speedup:17.1f}")
    if args.json:
        args.json.write_text(json.dumps({"preset": name, "batch_size": cfg.batch_size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
