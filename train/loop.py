"""The training loop: steps, per-epoch validation and pictures, checkpoints and exact resume."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from latent_cnf import checkpoints, data
from latent_cnf.config import Preset, SolverConfig
from latent_cnf.images import png_bytes, trajectory_strip
from latent_cnf.model import LatentCNF
from latent_cnf.networks import PatchDiscriminator

from .objectives import OBJECTIVES, adversarial_losses, discriminator_loss

STATE_FILE = "state.pt"
EVAL_SOLVER = SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5)


@dataclass
class RunOptions:
    preset: Preset
    dataset: str = "mnist"
    data_dir: Path | None = None
    out: Path = Path("runs/default")
    export: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_steps: int | None = None
    val_images: int = 1000
    val_importance_samples: int = 8
    reference_images: int = 1000
    reference_importance_samples: int = 16
    resume: bool = False
    command: str = ""
    train_subset: int | None = None
    eval_solver: SolverConfig = EVAL_SOLVER

    @property
    def checkpoint(self) -> Path:
        return self.export or self.out / "checkpoint"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Trainer:
    """Owns the model, discriminator, optimisers and the step counter; everything needed to resume."""

    def __init__(self, options: RunOptions):
        self.options = options
        self.cfg = options.preset.train
        torch.manual_seed(self.cfg.seed)
        self.model = LatentCNF(options.preset.model).to(options.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.disc = None
        if self.cfg.adversarial:
            self.disc = PatchDiscriminator(self.cfg.disc_channels, self.cfg.disc_leaky).to(options.device)
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=self.cfg.disc_lr)
        self.step = 0
        self.elapsed = 0.0
        self.sessions: list[dict] = []  # one entry per invocation: command, commit, first step
        self.objective = OBJECTIVES[self.cfg.objective]
        fit = data.load_split(options.dataset, "fit", options.data_dir)
        if options.train_subset:
            fit = fit.subset(torch.arange(min(options.train_subset, len(fit))))
        self.train_x = data.to_float(fit.images).to(options.device)
        self.train_y = fit.labels.to(options.device)
        val = data.load_split(options.dataset, "val", options.data_dir)
        val = val.subset(torch.arange(min(options.val_images, len(val))))
        generator = torch.Generator().manual_seed(0)
        self.val_x = data.binarize(data.to_float(val.images), generator).to(options.device)
        self.val_y = val.labels.to(options.device)
        self.steps_per_epoch = math.ceil(len(self.train_x) / self.cfg.batch_size)
        self.total_steps = self.cfg.epochs * self.steps_per_epoch
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)

    def batch_indices(self, step: int) -> torch.Tensor:
        """The permutation of an epoch depends only on (seed, epoch), so any step can be resumed."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_x), generator=generator)
        start = position * self.cfg.batch_size
        return order[start : start + self.cfg.batch_size].to(self.options.device)

    @torch.no_grad()
    def solver_gaps(self) -> tuple[float, float | None]:
        """Mean |log p_train - log p_exact| over validation latents at the training step count and at half of
        it (None below the floor). A flow trained with too coarse a fixed step learns to exploit the
        discretisation (Ott et al. 2021, "ResNet after all?"): its training density drifts from the ODE's."""
        labels = self.val_y if self.model.config.encoder_conditional else None
        z, _ = self.model.encode(self.val_x, labels)
        prior_labels = self.val_y if self.model.prior.conditional else None
        exact = self.model.prior.log_prob(z, prior_labels, self.options.eval_solver).log_prob
        solver = self.cfg.train_solver

        def gap(steps: int) -> float:
            coarse = self.model.prior.log_prob(z, prior_labels, dataclasses.replace(solver, steps=steps)).log_prob
            return (coarse - exact).abs().mean().item()

        half = solver.steps // 2
        return gap(solver.steps), gap(half) if half >= self.cfg.min_train_steps_per_solve else None

    def adapt_train_solver(self, gap: float, half_gap: float | None) -> None:
        """Double the training solver's steps while the gap is above `max_solver_gap_nats`; halve them when half
        the steps would stay within a quarter of it (rk4's error falls 16-fold per halving of the step, so
        this leaves margin). The flow smooths as it trains: the final weights often need far fewer steps
        than the epochs where it was learning fastest."""
        solver = self.cfg.train_solver
        limit = self.cfg.max_solver_gap_nats
        if limit is None:
            return
        if gap > limit and solver.steps * 2 <= self.cfg.max_train_steps_per_solve:
            steps = solver.steps * 2
        elif half_gap is not None and half_gap <= limit / 4:
            steps = solver.steps // 2
        else:
            return
        self.cfg = dataclasses.replace(self.cfg, train_solver=dataclasses.replace(solver, steps=steps))
        tqdm.write(f"solver gap {gap:.3f} nats: training solver now {solver.method} x{steps}")

    def learning_rate(self, step: int) -> float:
        """A pure function of the step (no scheduler state), so resume and --max-steps need nothing extra."""
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        progress = min(1.0, step / (self.cfg.epochs * self.steps_per_epoch))
        return self.cfg.lr_final + 0.5 * (self.cfg.lr - self.cfg.lr_final) * (1 + math.cos(math.pi * progress))

    def train_step(self) -> dict[str, float]:
        index = self.batch_indices(self.step)
        x, labels = self.train_x[index], self.train_y[index]
        target = data.binarize(x) if self.cfg.binarize else x
        self.model.train()
        out = self.objective(self.model, target, labels, self.cfg, self.step)
        terms = dict(out.terms, nfe=out.nfe)
        loss = out.loss
        if self.disc is not None:
            fake = torch.sigmoid(out.logits)
            d_loss = self.cfg.disc_weight * discriminator_loss(self.disc, x, fake)
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
            adversarial, matching = adversarial_losses(self.disc, x, fake)
            loss = loss + self.cfg.adv_weight * adversarial + self.cfg.feature_match_weight * matching
            terms.update(disc=d_loss.item(), adv=adversarial.item(), fm=matching.item())
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return dict(terms, loss=loss.item(), lr=self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        score = self.model.score(self.val_x, k=self.options.val_importance_samples, solver=self.options.eval_solver)
        gap, half_gap = self.solver_gaps()
        coarser = {} if half_gap is None else {"val_solver_gap_half_steps_nats": half_gap}
        return coarser | {
            "val_solver_gap_nats": gap,
            "train_solver_steps": self.cfg.train_solver.steps,
            "val_iwae_nats": score.log_likelihood.mean().item(),
            "val_elbo_nats": score.elbo.mean().item(),
            "val_latent_nll_nats": -score.latent_log_density.mean().item(),
            "val_importance_samples": self.options.val_importance_samples,
        }

    @torch.no_grad()
    def trajectory_png(self) -> bytes:
        self.model.eval()
        label = torch.arange(4) if self.model.prior.conditional else None
        z0, labels = self.model.draw_base(4, seed=0)
        if label is not None:
            labels = label.to(self.model.device)
        path = self.model.generate(z0, labels, self.options.eval_solver, steps=11)
        return png_bytes(trajectory_strip(path.times, path.images))

    def state(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_json(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "sessions": self.sessions,
            "train_solver_steps": self.cfg.train_solver.steps,
            "rng": torch.get_rng_state(),
        }
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_optimizer.state_dict())
        return state

    def load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.options.device, weights_only=True)
        saved = state.get("model_config")  # runs begun before it was recorded have none
        if saved is not None and saved != self.model.config.to_json():
            raise SystemExit(
                f"{path} was trained with model config {saved}, this invocation builds "
                f"{self.model.config.to_json()}: resume with the run's --preset and --model-set flags"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.sessions = state.get("sessions", [])  # runs begun before sessions were recorded have none
        steps = int(state["train_solver_steps"])
        self.cfg = dataclasses.replace(self.cfg, train_solver=dataclasses.replace(self.cfg.train_solver, steps=steps))
        torch.set_rng_state(state["rng"].cpu())

    def save(self, metrics: dict[str, float]) -> None:
        out = self.options.out
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.state(), out / f"{STATE_FILE}.tmp")
        (out / f"{STATE_FILE}.tmp").replace(out / STATE_FILE)
        checkpoints.save(self.model, self.options.checkpoint, self.card(metrics))

    def card(self, metrics: dict[str, float]) -> dict:
        o = self.options
        return {
            "preset": o.preset.name,
            "description": o.preset.description,
            "dataset": o.dataset,
            "dataset_sha256": data.DATASETS[o.dataset],
            "train_config": self.cfg.to_dict(),
            "command": o.command,
            "seed": self.cfg.seed,
            "git_commit": self.sessions[-1]["git_commit"],
            "sessions": self.sessions,
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "train_images": len(self.train_x),
            "wall_time_s": round(self.elapsed, 1),
            "device": str(o.device),
            "torch": torch.__version__,
            "validation": metrics,
        }

    @torch.no_grad()
    def score_reference(self) -> dict:
        """Test-set score quantiles, the reference behind the service's `percentile`."""
        o = self.options
        test = data.load_split(o.dataset, "test", o.data_dir)
        images = data.to_float(test.images[: o.reference_images])
        self.model.eval()
        score = self.model.score(
            (images > 0.5).float(), k=o.reference_importance_samples, solver=self.options.eval_solver
        )
        quantiles = torch.quantile(score.log_likelihood.cpu(), torch.linspace(0, 1, 101))
        return {
            "binarization": "threshold 0.5",
            "images": len(images),
            "importance_samples": o.reference_importance_samples,
            "log_likelihood_quantiles": [round(q, 3) for q in quantiles.tolist()],
        }

    def run(self) -> dict[str, float]:
        o = self.options
        if o.resume and (o.out / STATE_FILE).exists():
            self.load_state(o.out / STATE_FILE)
            print(f"resumed from {o.out / STATE_FILE} at step {self.step}", file=sys.stderr)
        self.sessions.append({"command": o.command, "git_commit": git_commit(), "from_step": self.step})
        o.out.mkdir(parents=True, exist_ok=True)
        log = (o.out / "metrics.jsonl").open("a")
        metrics: dict[str, float] = {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc=o.preset.name, unit="step", dynamic_ncols=True)
        while self.step < self.total_steps:
            start = time.perf_counter()
            terms = self.train_step()
            seconds = time.perf_counter() - start
            self.elapsed += seconds
            bar.update(1)
            bar.set_postfix(
                {k: f"{v:.3g}" for k, v in terms.items()} | {"img/s": f"{self.cfg.batch_size / seconds:.0f}"}
            )
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                metrics = self.validate()
                epoch = self.step / self.steps_per_epoch
                record = {
                    "step": self.step,
                    "epoch": round(epoch, 3),
                    "wall_time_s": round(self.elapsed, 1),
                    **terms,
                    **metrics,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                (o.out / f"trajectory-epoch{math.ceil(epoch):03d}.png").write_bytes(self.trajectory_png())
                self.adapt_train_solver(metrics["val_solver_gap_nats"], metrics.get("val_solver_gap_half_steps_nats"))
                self.save(metrics)
                bar.write(json.dumps(record))
        bar.close()
        log.close()
        metrics = metrics or self.validate()
        final = self.card(metrics)
        final["score_reference"] = self.score_reference()
        checkpoints.save(self.model, o.checkpoint, final)
        return metrics
