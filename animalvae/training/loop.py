"""The training skeleton both stage-5 models run: schedules, optimiser, epochs, checkpoints, logs.

A model brings three things: its step (the loss of one batch, :class:`StepLoss`), its
validation (a dict of means with at least ``loss``) and its payload (what ``model.pth`` and
``last.pth`` hold of it). :class:`TrainingLoop` does the rest, the same for both:

- the learning rate (linear warm-up, then a cosine to a tenth, nanoGPT's ``get_lr``) and the
  KL weight (linear warm-up), pure functions of the step (:class:`Schedule`);
- the epochs, each in the order :func:`~animalvae.training.dataset.epoch_order` draws, with
  the loss checked finite, the gradient clipped and the run stopped at ``max_steps``;
- after every epoch (or a stop): validation, one row of ``metrics.csv`` (and ``loss.png``),
  ``model.pth`` when the validation loss is the best so far and ``last.pth`` always, both
  written atomically, ``last.pth`` with everything :meth:`TrainingLoop.resume` needs to go on
  exactly (position, optimiser, RNG states, metrics);
- under torchrun (:mod:`animalvae.training.distributed`): the model in DDP, the logged means
  summed over ranks, and only rank 0 writing files and drawing the progress bar.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import AnimalVAEError
from ..stage import atomic_path, write_settings
from .checkpoint import clear_run_dir, rng_state, save_checkpoint, set_rng_state
from .dataset import epoch_order
from .distributed import DistContext
from .run_folder import LAST, LOSS_PLOT, METRICS, MODEL

__all__ = ["TrainingDiverged", "Schedule", "Batch", "StepLoss", "TrainingLoop", "lr_at",
           "beta_at", "make_optimizer", "write_metrics", "start_run_dir"]

log = logging.getLogger(__name__)

_MIN_LR_FACTOR = 0.1        # the cosine decays to lr / 10 (nanoGPT's min_lr)
_PLOT_EVERY_S = 30.0        # redraw loss.png at most this often (and at the end)


class TrainingDiverged(AnimalVAEError):
    """The loss became NaN or Inf; the message names the epoch and step (vae.py exits 1).

    Not a :class:`~animalvae.errors.ConfigError`: the settings were valid, the run failed.
    """


# --------------------------------------------------------------------------------------------
# Schedules and optimiser
# --------------------------------------------------------------------------------------------

def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine to lr/10."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    factor = _MIN_LR_FACTOR + (1 - _MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr * factor


def beta_at(step: int, *, beta: float, warmup_steps: int) -> float:
    """KL weight at optimiser step ``step``: linear from 0 to ``beta`` over ``warmup_steps``."""
    return beta if warmup_steps <= 0 else beta * min(1.0, step / warmup_steps)


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weights of convolutions and linears only (not on biases
    and norm gains, nanoGPT's split)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


@dataclass(frozen=True)
class Schedule:
    """How long a run trains, at which learning rate and KL weight (functions of the step).

    ``max_steps`` only stops early (0: never) and does not change the curves, so a stopped
    run resumes onto the same ones.
    """

    epochs: int
    steps_per_epoch: int
    lr: float
    warmup_steps: int
    beta: float
    kl_warmup_steps: int
    max_steps: int = 0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        return lr_at(step, lr=self.lr, warmup_steps=self.warmup_steps,
                     total_steps=self.total_steps)

    def beta_at(self, step: int) -> float:
        return beta_at(step, beta=self.beta, warmup_steps=self.kl_warmup_steps)

    def record(self) -> dict[str, Any]:
        """The learning-rate curve as ``last.pth`` holds it (``--resume`` warns on a change)."""
        return {"kind": "warmup-cosine", "lr": self.lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_factor": _MIN_LR_FACTOR}


# --------------------------------------------------------------------------------------------
# Run folder files
# --------------------------------------------------------------------------------------------

def start_run_dir(run_dir: Path, dist: DistContext, *, resume: bool, settings: dict[str, Any],
                  write_split: Callable[[], None]) -> None:
    """Rank 0 readies ``run_dir``: a fresh run clears the old run's files and writes its
    split; every run writes ``settings.yaml``. Called once the data and model check out, so
    a bad ``--input`` or setting leaves an old run be."""
    if not dist.is_main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_run_dir(run_dir)
        write_split()
    write_settings(run_dir, settings)


def write_metrics(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """``metrics.csv``: one row per epoch, floats to 6 significant digits, written atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                             for k in columns})


def _plot_losses(path: Path, rows: list[dict[str, float]], panels: dict[str, str]) -> None:
    """loss.png: one panel per ``panels`` key (title as value), training vs validation."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(4 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title) in zip(axes, panels.items()):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", ms=3, label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", ms=3, label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _describe(values: dict[str, float]) -> str:
    """``loss 0.1234 (recon 0.01, kl 3.2)`` of a dict with a ``loss``."""
    rest = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "loss")
    return f"loss {values['loss']:.5f}" + (f" ({rest})" if rest else "")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """One optimiser step as a model's step function receives it."""

    epoch: int       # 0-based
    index: int       # the batch's place in its epoch, 0-based
    step: int        # optimiser steps before this one
    rows: Tensor     # the global batch: positions in the training set, (B,)
    beta: float      # the KL weight of this step


@dataclass
class StepLoss:
    """What a model's step returns: the loss to back-propagate and the means to log."""

    loss: Tensor                # 0-d; this rank's share, weighted so DDP's average is the batch's
    logged: dict[str, Tensor]   # 0-d means over this rank's rows, logged as train_<key>
    rows: int                   # this rank's rows in those means (0: it adds nothing)
    n: int                      # rows of the global batch


@dataclass
class TrainingLoop:
    """Epochs of one model's steps, with validation, checkpoints and logs after each.

    ``what`` names the config section of ``lr`` in messages (``train``, ``sound_image``);
    ``panels`` are the ``loss.png`` panels (metric key -> title; empty: no plot).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    dist: DistContext
    run_dir: Path
    batch_size: int
    n_train: int
    seed: int
    grad_clip: float = 0.0
    what: str = "train"
    panels: dict[str, str] = field(default_factory=dict)
    epoch_log_level: int = logging.INFO
    # where the run stands; last.pth holds it
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_val: float = math.inf
    rows: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=lambda: {"n": 0})
    stopped: bool = False

    def __post_init__(self) -> None:
        # the model in DDP under torchrun (itself alone): steps forward through it to train
        self.replicas = self.dist.wrap(self.model)
        self.lr = self.beta = 0.0

    def resume(self, state: dict[str, Any]) -> None:
        """Go on from ``last.pth``'s ``state`` (checked by the model before): weights,
        optimiser, position, best validation loss, metrics, RNG states."""
        if state.get("world_size", 1) != self.dist.world_size and self.dist.is_main:
            log.warning("--resume: the run so far trained on %d process(es), this one on %d: "
                        "the same global batches (batch size %d), order and noise, shared "
                        "out anew, so it goes on equal within float rounding, not bit for bit",
                        state.get("world_size", 1), self.dist.world_size, self.batch_size)
        if state.get("scheduler", self.schedule.record()) != self.schedule.record():
            log.warning("--resume with other %s.epochs/lr/batch_size or train.warmup_steps "
                        "than the run so far: the learning-rate curve changes from here on",
                        self.what)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.batch, self.step = state["epoch"], state.get("batch", 0), state["step"]
        self.best_val, self.rows = state["best_val"], list(state["metrics"])
        self.sums = dict(state.get("sums", {"n": 0}))
        set_rng_state(state["rng"])

    def done(self) -> bool:
        """Whether the run has reached its epochs or ``max_steps`` (says so when it has)."""
        s = self.schedule
        if self.epoch >= s.epochs or (s.max_steps and self.step >= s.max_steps):
            log.info("nothing to do: the run already reached %s.epochs=%d%s", self.what,
                     s.epochs, f" / train.max_steps={s.max_steps}" if s.max_steps else "")
            return True
        return False

    def run(self, step: Callable[[Batch], StepLoss], validate: Callable[[], dict[str, float]],
            payload: Callable[[bool], dict[str, Any]], *, desc: str, progress: bool) -> None:
        """Train to the end of the schedule (or ``max_steps``).

        ``step`` computes one batch's loss, ``validate`` the validation means (every rank
        under torchrun), ``payload(best)`` the model's part of ``model.pth`` (best) or
        ``last.pth``.
        """
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        s = self.schedule
        total = min(s.total_steps, s.max_steps) if s.max_steps else s.total_steps
        bar = tqdm(total=total, initial=self.step, desc=desc, unit="step",
                   disable=not progress or not self.dist.is_main, dynamic_ncols=True)
        last_plot = time.monotonic()
        self.model.train()
        with bar, logging_redirect_tqdm():
            while self.epoch < s.epochs and not self.stopped:
                t0 = time.monotonic()
                order = epoch_order(self.n_train, seed=self.seed, epoch=self.epoch)
                while self.batch < s.steps_per_epoch and not self.stopped:
                    self._step(step, order, bar)
                    self.stopped = bool(s.max_steps and self.step >= s.max_steps)
                self._end_epoch(validate(), payload, seconds=time.monotonic() - t0)
                # drawing is slow next to a small epoch: at most every _PLOT_EVERY_S, and at
                # the end
                end = self.stopped or self.epoch >= s.epochs
                if (self.panels and self.dist.is_main
                        and (end or time.monotonic() - last_plot >= _PLOT_EVERY_S)):
                    _plot_losses(self.run_dir / LOSS_PLOT, self.rows, self.panels)
                    last_plot = time.monotonic()
        if self.stopped and self.epoch < s.epochs:
            log.info("stopped at train.max_steps=%d; continue with --resume (and a larger or "
                     "zero train.max_steps)", s.max_steps)

    def _step(self, step: Callable[[Batch], StepLoss], order: Tensor, bar: Any) -> None:
        """One optimiser step: schedule, the model's loss, finite check, backward, clip, step."""
        # learning rate and KL weight of this step
        self.lr, self.beta = self.schedule.lr_at(self.step), self.schedule.beta_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        rows = order[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
        out = step(Batch(self.epoch, self.batch, self.step, rows, self.beta))
        # the step's one CPU-GPU sync: the batch means over all ranks, logged and checked
        logged = torch.stack(list(out.logged.values())).detach()
        if self.dist.world_size > 1:
            logged = self.dist.sum(logged * out.rows) / out.n
        values = dict(zip(out.logged, logged.tolist()))
        if not math.isfinite(values["loss"]):
            rest = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "loss")
            raise TrainingDiverged(
                f"training diverged: the loss is {values['loss']} at epoch {self.epoch + 1}, "
                f"step {self.step + 1}{f' ({rest})' if rest else ''}; lower "
                f"{self.what}.lr={self.schedule.lr} or set train.grad_clip, then train again "
                "with --force (or --resume from the last good epoch)")
        # backward (DDP averages the ranks' gradients), clip, step
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if not torch.isfinite(norm):
                raise TrainingDiverged(
                    f"training diverged: the gradient norm is {norm.item()} at epoch "
                    f"{self.epoch + 1}, step {self.step + 1}; lower {self.what}.lr="
                    f"{self.schedule.lr}")
        self.optimizer.step()
        self.step += 1
        self.batch += 1
        # log
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * out.n
        self.sums["n"] += out.n
        bar.update()
        bar.set_postfix(epoch=self.epoch + 1, **{k: f"{v:.4f}" for k, v in values.items()},
                        refresh=False)

    def _end_epoch(self, val: dict[str, float], payload: Callable[[bool], dict[str, Any]], *,
                   seconds: float) -> None:
        """After an epoch (or a stop): a metrics row, the epoch's log line, the checkpoints."""
        spe = self.schedule.steps_per_epoch
        whole = self.batch >= spe
        count = max(1, self.sums["n"])
        row = {"epoch": self.epoch + 1 if whole else self.epoch + self.batch / spe,
               "step": self.step,
               **{f"train_{k}": v / count for k, v in self.sums.items() if k != "n"},
               **{f"val_{k}": v for k, v in val.items()},
               "beta": self.beta, "lr": self.lr, "seconds": seconds}
        self.rows.append(row)
        train = {k: v / count for k, v in self.sums.items() if k != "n"}
        log.log(self.epoch_log_level, "epoch %s/%d: train %s · val %s · beta %.3g · lr %.3g · "
                "%.1f s", f"{row['epoch']:.3g}", self.schedule.epochs, _describe(train),
                _describe(val), self.beta, self.lr, seconds)
        if whole:
            self.epoch, self.batch, self.sums = self.epoch + 1, 0, {"n": 0}
        if not self.dist.is_main:
            return
        if val["loss"] < self.best_val:
            self.best_val = val["loss"]
            save_checkpoint(self.run_dir / MODEL, {**payload(True), "epoch": row["epoch"],
                                                   "step": self.step, "val_loss": self.best_val})
        save_checkpoint(self.run_dir / LAST, {
            **payload(False), "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "steps_per_epoch": spe, "best_val": self.best_val, "sums": self.sums,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.record(),
            "world_size": self.dist.world_size, "metrics": self.rows, "rng": rng_state()})
        write_metrics(self.run_dir / METRICS, self.rows, tuple(row))
