"""The training loop: steps, per-epoch validation and pictures, model-folder exports and exact resume."""

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

from latent_cnf import data, model_folder
from latent_cnf.config import DEFAULT_SOLVER, SolverConfig
from latent_cnf.images import BINARIZE_THRESHOLD, binarize_at_threshold, png_bytes, trajectory_strip
from latent_cnf.model import LatentCNF
from train.discriminator import PatchDiscriminator
from train.presets import Preset

from . import cli, distributed, reflow, resume_state
from .objectives import OBJECTIVES, adversarial_losses, discriminator_loss
from .resume_state import LEGACY_STATE_FILE, STATE_FILE


@dataclass(frozen=True)
class RunOptions:
    """What one invocation of `python -m train` asks for, beside the preset: fixed for the whole run. The fields
    made by cli.flag are flags as they are; --out and --device are flags that main turns into their fields."""

    preset: Preset
    dataset: str = cli.flag("mnist", help="training data", choices=sorted(data.DATASETS))
    data_dir: Path | None = cli.flag(None, help=cli.DATA_DIR_HELP)
    out: Path = Path("runs/default")
    export: Path | None = cli.flag(None, help="where the checkpoint goes (default <out>/checkpoint)")
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_steps: int | None = cli.flag(None, help="stop after this many optimiser steps in total")
    val_images: int = cli.flag(
        1000, help="validation images scored each epoch (again, binarized as /score does, for its export)"
    )
    val_importance_samples: int = 8
    reference_images: int = cli.flag(1000, help="test images behind the final export's score quantiles")
    reference_importance_samples: int = 16
    resume: bool = cli.flag(False, help="continue exactly from <out>/state.safetensors")
    command: str = ""
    train_subset: int | None = cli.flag(None, help="train on the first N training images (smoke runs)")
    eval_solver: SolverConfig = DEFAULT_SOLVER

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
        self.frozen = self.freeze_autoencoder()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=self.cfg.lr)
        self.disc = None
        if self.cfg.adversarial:
            self.disc = PatchDiscriminator(self.cfg.disc_channels, self.cfg.disc_leaky).to(options.device)
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=self.cfg.disc_lr)
        self.step = 0
        # The training solver's step count adapts during the run (adapt_train_solver) and is saved in the
        # state; the configuration's count is where it starts.
        self.train_solver_steps = self.cfg.train_solver.steps
        self.elapsed = 0.0
        self.sessions: list[dict] = []  # one entry per invocation: command, commit, first step
        self.objective = OBJECTIVES[self.cfg.objective]
        # Under torchrun: gradients averaged over the ranks, each rank drawing its own noise (rank 0 keeps the
        # single-process stream). A wrapper only when distributed: one process runs what it always ran.
        self.objective_step = distributed.data_parallel(
            distributed.InForward(self.model, self.objective), options.device
        )
        self.disc_step = distributed.data_parallel(self.disc, options.device) if self.disc is not None else None
        if distributed.rank() > 0:
            torch.manual_seed(distributed.rank_seed(self.cfg.seed))
        with distributed.local_leader_first():  # one download per node, not one per process
            fit = data.load_split(options.dataset, "fit", options.data_dir)
            val = data.load_split(options.dataset, "val", options.data_dir)
        if options.train_subset:
            fit = fit.subset(torch.arange(min(options.train_subset, len(fit))))
        self.train_x = data.to_float(fit.images).to(options.device)
        self.train_y = fit.labels.to(options.device)
        self.teacher = self.reflow_teacher()
        if self.cfg.objective == "flow_matching":
            self.train_x = self.posterior_rows()
        val = val.subset(torch.arange(min(options.val_images, len(val))))
        if min(len(val), options.reference_images) < distributed.world_size():
            raise SystemExit("--val-images and --reference-images must be at least the number of processes")
        grey = data.to_float(val.images)
        self.val_x = data.binarize(grey, torch.Generator().manual_seed(0)).to(options.device)
        self.val_grey = grey.to(options.device)  # the epoch exports' score reference binarizes it as /score does
        self.val_y = val.labels.to(options.device)
        self.steps_per_epoch = math.ceil(len(self.train_x) / self.cfg.batch_size)
        self.total_steps = self.cfg.epochs * self.steps_per_epoch
        if options.max_steps is not None:
            self.total_steps = min(self.total_steps, options.max_steps)

    def freeze_autoencoder(self) -> dict[str, str] | None:
        """Load the encoder and decoder of `frozen_autoencoder` and keep them fixed, so that only the prior
        trains; what training.json records of them (None when everything trains)."""
        if self.cfg.frozen_autoencoder is None:
            return None
        if self.cfg.objective == "flow_matching" and self.cfg.adversarial:
            raise SystemExit("flow matching decodes nothing: it cannot train with the discriminator")
        name = self.cfg.frozen_autoencoder.format(dataset=self.options.dataset)
        source = model_folder.load(name, self.options.device)
        for part in ("encoder", "decoder"):
            try:
                getattr(self.model, part).load_state_dict(getattr(source, part).state_dict())
            except RuntimeError as error:
                raise SystemExit(f"{name}'s {part} does not fit this model: {error}") from None
            getattr(self.model, part).requires_grad_(False)
        return {"checkpoint": name, "sha256": model_folder.weights_sha256(name)}

    def reflow_teacher(self) -> dict[str, str] | None:
        """Reflow: start the prior from `reflow_teacher`'s and replace the training images by the coupling its
        flow makes of base draws (one per image, with the image's label); what training.json records of it."""
        if self.cfg.reflow_teacher is None:
            return None
        name = self.cfg.reflow_teacher.format(dataset=self.options.dataset)
        teacher = model_folder.load(name, self.options.device)
        if teacher.config != self.model.config:
            raise SystemExit(f"{name}'s model config differs from this preset's: it cannot be reflowed here")
        self.model.prior.load_state_dict(teacher.prior.state_dict())
        labels = self.train_y if teacher.prior.uses_labels else None
        generator = torch.Generator().manual_seed(self.cfg.seed)
        self.train_x = reflow.coupled_pairs(teacher.prior, labels, len(self.train_y), self.cfg.reflow_solver, generator)
        return {"checkpoint": name, "sha256": model_folder.weights_sha256(name)}

    @torch.no_grad()
    def posterior_rows(self, batch: int = 1024) -> torch.Tensor:
        """Flow matching: the frozen encoder's posterior of every training image as rows [mean, log_std], in
        place of the images. The encoder is fixed and runs without dropout, so this is what encoding each batch
        would give, once instead of every epoch (it was half the cost of a step)."""
        if not self.frozen or self.cfg.binarize:
            raise SystemExit("flow matching fits a prior to a frozen encoder's posterior of fixed images")
        self.model.encoder.eval()
        labels = self.train_y if self.model.config.encoder_uses_labels else None
        rows = [
            torch.cat(self.model.encode(x, None if labels is None else labels[i : i + batch]), dim=1)
            for i, x in zip(range(0, len(self.train_x), batch), self.train_x.split(batch), strict=True)
        ]
        return torch.cat(rows)

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
        discretisation (Ott et al. 2021, "ResNet after all?"): its training density drifts from the ODE's.
        Each rank integrates its block of the latents; the mean is over all of them."""
        part = distributed.shard(len(self.val_x))
        val_x, val_y = self.val_x[part], self.val_y[part]
        labels = val_y if self.model.config.encoder_uses_labels else None
        z, _ = self.model.encode(val_x, labels)
        prior_labels = val_y if self.model.prior.uses_labels else None
        exact = self.model.prior.log_prob(z, prior_labels, self.options.eval_solver).log_prob
        solver = self.train_solver

        def gap(steps: int) -> float:
            coarse = self.model.prior.log_prob(z, prior_labels, dataclasses.replace(solver, steps=steps)).log_prob
            return distributed.gather_rows((coarse - exact).abs()).mean().item()

        half = solver.steps // 2
        return gap(solver.steps), gap(half) if half >= self.cfg.min_train_steps_per_solve else None

    def adapt_train_solver(self, gap: float, half_gap: float | None) -> None:
        """Double the training solver's steps while the gap is above `max_solver_gap_nats`; halve them when half
        the steps would stay within a quarter of it (rk4's error falls 16-fold per halving of the step, so
        this leaves margin). The flow smooths as it trains: the final weights often need far fewer steps
        than the epochs where it was learning fastest."""
        solver = self.train_solver
        limit = self.cfg.max_solver_gap_nats
        if limit is None:
            return
        if gap > limit and solver.steps * 2 <= self.cfg.max_train_steps_per_solve:
            steps = solver.steps * 2
        elif half_gap is not None and half_gap <= limit / 4:
            steps = solver.steps // 2
        else:
            return
        self.train_solver_steps = steps
        tqdm.write(f"solver gap {gap:.3f} nats: training solver now {solver.method} x{steps}")

    @property
    def train_solver(self) -> SolverConfig:
        """The configured training solver at the step count the run has adapted it to."""
        return dataclasses.replace(self.cfg.train_solver, steps=self.train_solver_steps)

    def learning_rate(self, step: int) -> float:
        """A pure function of the step (no scheduler state), so resume and --max-steps need nothing extra."""
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        progress = min(1.0, step / (self.cfg.epochs * self.steps_per_epoch))
        return self.cfg.lr_final + 0.5 * (self.cfg.lr - self.cfg.lr_final) * (1 + math.cos(math.pi * progress))

    def train_step(self) -> dict[str, float]:
        """One optimiser step on the global batch of `batch_size` rows; under torchrun each rank takes its block
        of it, and its loss, a mean over its rows, is weighted by its rows' share so that DDP's average of the
        gradients is the gradient of the mean over the whole batch, as in one process."""
        index = self.batch_indices(self.step)
        mine = index[distributed.shard(len(index))]
        share = len(mine) / len(index)
        weight = share * distributed.world_size()
        if len(mine) == 0:  # a last batch smaller than the world: join the all-reduce with weight 0
            mine = index[:1]
        x, labels = self.train_x[mine], self.train_y[mine]
        target = data.binarize(x) if self.cfg.binarize else x
        self.model.train()
        if self.frozen:  # no dropout either: the prior fits the posterior that scoring and sampling see
            self.model.encoder.eval()
            self.model.decoder.eval()
        out = self.objective_step(target, labels, self.cfg, self.train_solver, self.step)
        terms = dict(out.terms, nfe=out.nfe)
        loss = out.loss
        if self.disc is not None:
            fake = torch.sigmoid(out.logits)
            d_loss = self.cfg.disc_weight * discriminator_loss(self.disc_step, x, fake)
            self.disc_optimizer.zero_grad(set_to_none=True)
            (weight * d_loss).backward()
            self.disc_optimizer.step()
            adversarial, matching = adversarial_losses(self.disc, x, fake)
            loss = loss + self.cfg.adv_weight * adversarial + self.cfg.feature_match_weight * matching
            terms.update(disc=d_loss.item(), adv=adversarial.item(), fm=matching.item())
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        (weight * loss).backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        terms = distributed.weighted_mean(dict(terms, loss=loss.item()), share)  # the global batch's means
        return terms | {"lr": self.optimizer.param_groups[0]["lr"]}

    @torch.no_grad()
    def score_rows(self, images: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(IWAE bound, ELBO, latent log-density) per image, image i seeded with i: each rank scores its block,
        so the numbers do not depend on how many processes share the work."""
        self.model.eval()
        part = distributed.shard(len(images))
        seeds = torch.arange(len(images))[part]
        score = self.model.score(images[part], k=k, solver=self.options.eval_solver, seed=seeds)
        parts = (score.log_likelihood, score.elbo, score.latent_log_density)
        return tuple(distributed.gather_rows(t) for t in parts)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The validation metrics, on the randomly binarized images that training's likelihood is measured on."""
        k = self.options.val_importance_samples
        iwae, elbo, latent = self.score_rows(self.val_x, k)
        gap, half_gap = self.solver_gaps()
        coarser = {} if half_gap is None else {"val_solver_gap_half_steps_nats": half_gap}
        return coarser | {
            "val_solver_gap_nats": gap,
            "train_solver_steps": self.train_solver_steps,
            "val_iwae_nats": iwae.mean().item(),
            "val_elbo_nats": elbo.mean().item(),
            "val_latent_nll_nats": -latent.mean().item(),
            "val_importance_samples": k,
        }

    @torch.no_grad()
    def score_reference(self, grey: torch.Tensor, split: str, k: int) -> dict:
        """serving.json's score reference: the percentiles 0..100 of the IWAE bounds of the grey images `grey`
        of `split` binarized at the threshold as /score binarizes them (the service's `percentile` compares a
        request's bound with these), and how they were made."""
        log_likelihood, _, _ = self.score_rows(binarize_at_threshold(grey), k)
        quantiles = torch.quantile(log_likelihood.double().cpu(), torch.linspace(0, 1, 101, dtype=torch.float64))
        return {
            "split": split,
            "binarization": f"threshold {BINARIZE_THRESHOLD:g}",
            "images": len(log_likelihood),
            "importance_samples": k,
            "log_likelihood_quantiles": [round(q, 3) for q in quantiles.tolist()],
        }

    def val_score_reference(self) -> dict:
        """An epoch export's score reference: the validation images at validation's K, scored a second time
        binarized at the threshold (the final export's reference scores test images instead)."""
        return self.score_reference(self.val_grey, f"{self.options.dataset} val", self.options.val_importance_samples)

    @torch.no_grad()
    def trajectory_png(self) -> bytes:
        self.model.eval()
        label = torch.arange(4) if self.model.prior.uses_labels else None
        z0, labels = self.model.draw_base(4, seed=0)
        if label is not None:
            labels = label.to(self.model.device)
        path = self.model.sample_from(z0, labels, self.options.eval_solver, steps=11)
        return png_bytes(trajectory_strip(path.times, path.images))

    def state(self) -> dict:
        """Everything a resume needs, on every rank (each rank's random state is gathered: call on all)."""
        rngs = distributed.gather([torch.get_rng_state()])
        state = {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_json(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "sessions": self.sessions,
            "train_solver_steps": self.train_solver_steps,
            "rng": rngs[0],
            "rng_ranks": rngs,
        }
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_optimizer.state_dict())
        return state

    def load_state(self, path: Path) -> None:
        state = resume_state.load(path)
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
        self.train_solver_steps = int(state["train_solver_steps"])
        rngs = state.get("rng_ranks", [state["rng"]])  # runs begun before distributed training have one
        if len(rngs) == distributed.world_size() or distributed.rank() == 0:
            torch.set_rng_state(rngs[distributed.rank()].cpu())
        else:  # resumed with another number of processes: rank 0 continues its stream, the others start anew
            torch.manual_seed(distributed.rank_seed(self.cfg.seed, self.step))

    def save(self, metrics: dict[str, float], reference: dict) -> None:
        """Rank 0 writes the state and a complete export (loadable and servable as is); every rank calls this
        (the state gathers from all)."""
        state = self.state()
        if not distributed.is_main():
            return
        out = self.options.out
        out.mkdir(parents=True, exist_ok=True)
        resume_state.save(state, out / STATE_FILE)
        self.export(metrics, reference)

    def export(self, metrics: dict[str, float], reference: dict) -> None:
        """The model folder of the weights now, with `reference` as its score reference."""
        training = self.training_record(metrics)
        model_folder.save_pretrained(self.model, self.options.checkpoint, training, {"score_reference": reference})

    def training_record(self, metrics: dict[str, float]) -> dict:
        """training.json: how the weights now were made."""
        o = self.options
        return {
            "preset": o.preset.name,
            "description": o.preset.description,
            "dataset": o.dataset,
            "dataset_sha256": data.DATASETS[o.dataset],
            "train_config": self.cfg.to_dict(),  # as configured: the adapted solver is validation.train_solver_steps
            "command": o.command,
            "seed": self.cfg.seed,
            "git_commit": self.sessions[-1]["git_commit"],
            "sessions": self.sessions,
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "train_images": len(self.train_x),
            "wall_time_s": round(self.elapsed, 1),
            "device": str(o.device),
            "world_size": distributed.world_size(),
            "backend": distributed.backend(),
            "torch": torch.__version__,
            "validation": metrics,
            **({"frozen_autoencoder": self.frozen} if self.frozen else {}),
            **({"reflow_teacher": self.teacher} if self.teacher else {}),
        }

    @torch.no_grad()
    def test_score_reference(self) -> dict:
        """The final export's reference behind the service's `percentile`: test images, as the service binarizes."""
        o = self.options
        with distributed.local_leader_first():
            test = data.load_split(o.dataset, "test", o.data_dir)
        images = data.to_float(test.images[: o.reference_images])
        return self.score_reference(images, f"{o.dataset} test", o.reference_importance_samples)

    def run(self) -> dict[str, float]:
        o = self.options
        if o.resume and not (o.out / STATE_FILE).exists() and (o.out / LEGACY_STATE_FILE).exists():
            raise SystemExit(
                f"{o.out / LEGACY_STATE_FILE} is a resume state of the old format, which --resume does not read "
                f"(it would restart at step 0 and overwrite the run's export): start a new run with another --out, "
                f"or resume this one with the code of commit {resume_state.LEGACY_COMMIT}, the last that wrote it"
            )
        if o.resume and (o.out / STATE_FILE).exists():
            self.load_state(o.out / STATE_FILE)
            if distributed.is_main():
                print(f"resumed from {o.out / STATE_FILE} at step {self.step}", file=sys.stderr)
        self.sessions.append(
            {
                "command": o.command,
                "git_commit": git_commit(),
                "from_step": self.step,
                "world_size": distributed.world_size(),
                "backend": distributed.backend(),
            }
        )
        main = distributed.is_main()  # the only rank that writes: logs, pictures, state, checkpoint
        if main:
            o.out.mkdir(parents=True, exist_ok=True)
        log = (o.out / "metrics.jsonl").open("a") if main else None
        metrics: dict[str, float] = {}
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=o.preset.name,
            unit="step",
            dynamic_ncols=True,
            disable=not main,
        )
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
                    "world_size": distributed.world_size(),
                    "backend": distributed.backend(),
                    **terms,
                    **metrics,
                }
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    (o.out / f"trajectory-epoch{math.ceil(epoch):03d}.png").write_bytes(self.trajectory_png())
                    gaps = metrics["val_solver_gap_nats"], metrics.get("val_solver_gap_half_steps_nats")
                    self.adapt_train_solver(*gaps)
                # Rank 0 decides and the others follow: one decision, so every rank integrates the same way.
                self.train_solver_steps = distributed.broadcast(self.train_solver_steps)
                self.save(metrics, self.val_score_reference())
                if log is not None:
                    bar.write(json.dumps(record))
        bar.close()
        if log is not None:
            log.close()
        metrics = metrics or self.validate()
        reference = self.test_score_reference()
        if main:
            self.export(metrics, reference)
        return metrics
