"""Training the VAE: one readable loop, with its loss, schedules and logs just above it.

Reads a stage-4 folder (``paths.spectrograms``: ``<group>/<id>.npy`` + ``normalizer.json``)
and writes into the run folder (``paths.runs/<train.name>``):

- ``split.csv``: which file is in ``train`` and which in ``val`` (held out per group, fixed by
  ``train.seed``); ``reconstruct`` and ``evaluate`` use the ``val`` rows only;
- ``model.pth``: the weights with the best validation loss so far, plus everything needed to
  use them (see :mod:`animalvae.sound.model`); ``last.pth``: the latest state, for ``--resume``;
- ``metrics.csv`` (one row per epoch) and ``loss.png``; ``settings.yaml``: the config in effect;

Finding, splitting and loading the data is :mod:`animalvae.training.dataset`; saving, resuming and
clearing the run folder is :mod:`animalvae.training.checkpoint`.

Loss (per pixel, so its size does not depend on the spectrogram shape)::

    recon = mean over pixels and batch of |x_hat - x|   (or (x_hat - x)**2 with recon_loss: mse)
    kl    = mean over batch of sum over latent dims of KL(q(z|x) || N(0, I))      [nats/sample]
    loss  = recon + beta * kl / (n_bins * n_frames) + spectral_weight * sc
            + modulation_weight * mod + pitch_weight * pitch

i.e. the negative ELBO of a Laplace (l1, scale 1) or Gaussian (mse, variance 1/2) decoder
divided by the number of pixels, up to a constant, with the KL weighted by ``beta``, plus
``train.spectral_weight`` times the multi-resolution spectral convergence ``sc`` of linear
magnitudes, where the loud pixels that make a call recognisable count most, and
``train.modulation_weight`` times the distance ``mod`` of the modulation spectra, which asks
for a trill's or a bark train's fluctuation without asking when each pulse falls (both in
:mod:`animalvae.sound.losses`, :class:`~animalvae.sound.losses.ReconstructionLoss`). With the
pitch comb (``model.pitch_candidates`` > 0), ``pitch`` is the cross-entropy of the decoder's
pitch head, at the sampled code, against each frame's best-fitting comb
(:func:`animalvae.sound.harmonic.pitch_loss`), times ``train.pitch_weight``. ``beta``
rises linearly from 0 to ``train.beta`` over the first ``train.kl_warmup_epochs`` epochs (per
step). ``metrics.csv`` logs ``recon`` and ``kl`` separately; the validation loss (which
picks ``model.pth``) always uses the full ``train.beta``.

Learning rate: linear warm-up over ``train.warmup_steps``, then a cosine decay to a tenth of
``train.lr`` at the end of ``train.epochs`` (a pure function of the step, as in nanoGPT;
``train.max_steps`` only stops early and does not change the schedule, so a stopped run
resumes onto the same curve).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, config_to_dict
from ..errors import AnimalVAEError, ConfigError
from ..spectrogram import SpectrogramSpec
from ..stage import StageOptions, atomic_path, write_settings
from ..training.checkpoint import (
    check_run_dir,
    clear_run_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from ..training.dataset import (
    SpectrogramSet,
    epoch_order,
    find_spectrograms,
    iter_batches,
    read_split,
    split_items,
    write_split,
)
from ..training.distributed import DistContext, distributed
from .harmonic import pitch_distribution, pitch_loss
from .losses import ReconstructionLoss
from .model import VAE, build_model, checkpoint_payload, kl_divergence, read_checkpoint
from ..training.run_folder import LAST, LOSS_PLOT, METRICS, MODEL, SPLIT

__all__ = ["train", "TrainingDiverged", "LossTerms", "vae_loss", "lr_at", "beta_at",
           "make_optimizer", "write_metrics"]

log = logging.getLogger(__name__)

_METRIC_COLUMNS = ("epoch", "step", "train_loss", "train_recon", "train_kl", "val_loss",
                   "val_recon", "val_kl", "beta", "lr", "seconds")
_MIN_LR_FACTOR = 0.1        # the cosine decays to lr / 10 (nanoGPT's min_lr)
_PLOT_EVERY_S = 30.0        # redraw loss.png at most this often (and at the end)


class TrainingDiverged(AnimalVAEError):
    """The loss became NaN or Inf; the message names the epoch and step (vae.py exits 1).

    Not a :class:`ConfigError`: the settings were valid, the run itself failed.
    """


# --------------------------------------------------------------------------------------------
# Loss and schedules
# --------------------------------------------------------------------------------------------

@dataclass
class LossTerms:
    """The objective and its two parts (0-d tensors, batch means)."""

    loss: Tensor    # recon (+ spectral and modulation terms) + beta * kl / n_pixels
    recon: Tensor   # per pixel
    kl: Tensor      # nats per sample


def vae_loss(x_hat: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, *,
             reconstruction: ReconstructionLoss, beta: float) -> LossTerms:
    """The VAE objective described in the module docstring.

    Parameters
    ----------
    x_hat, x : Tensor [shape=(B, 1, H, W)]
    mu, logvar : Tensor [shape=(B, L)]
    reconstruction : ReconstructionLoss
        The reconstruction term (``train.recon_loss``, ``spectral_weight``,
        ``modulation_weight``).
    beta : float
        KL weight, >= 0.
    """
    rec_loss, recon = reconstruction(x_hat, x)
    kl_dims = kl_divergence(mu, logvar)                   # (B, L)
    kl = kl_dims.sum(dim=1).mean()                        # nats per sample
    n_pixels = x[0].numel()
    return LossTerms(rec_loss + beta * kl / n_pixels, recon, kl)


def pitch_term(logits: Tensor | None, x: Tensor, combs: Tensor | None, *,
               weight: float) -> Tensor:
    """``weight`` times the cross-entropy of the pitch head's ``logits`` (B, K, T), from the
    forward pass that reconstructed ``x``, against ``x``'s best-fitting ``combs`` (0-d; module
    docstring). 0 when ``weight`` is 0 or the model has no comb (``logits`` None)."""
    if weight == 0 or logits is None:
        return x.new_zeros(())
    return weight * pitch_loss(pitch_distribution(logits, x.shape[3]), x, combs)


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


# --------------------------------------------------------------------------------------------
# Metrics files
# --------------------------------------------------------------------------------------------

def write_metrics(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """``metrics.csv``: one row per epoch, floats to 6 significant digits, written atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                             for k in columns})


def make_optimizer(model: torch.nn.Module, *, lr: float,
                   weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weights of convolutions and linears only (not on biases
    and norm gains, nanoGPT's split)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _plot_losses(path: Path, rows: list[dict[str, float]]) -> None:
    """loss.png: loss, reconstruction and KL per epoch, training vs validation."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, key, title in zip(axes, ("loss", "recon", "kl"),
                              ("loss (per pixel)", "reconstruction (per pixel)",
                               "KL (nats per sample)")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", ms=3, label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", ms=3, label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def _validate(model: VAE, data: SpectrogramSet, *, batch_size: int, dist: DistContext,
              reconstruction: ReconstructionLoss, beta: float, pitch_weight: float,
              seed: int) -> dict[str, float]:
    """Mean recon, KL and loss (full beta, plus ``pitch_weight`` times the pitch
    term) over ``data``, on every rank.

    The reparameterisation noise comes from its own generator, seeded the same every time:
    epochs are compared on equal terms and the training RNG is left untouched. Under
    torchrun each rank scores its share of every batch and the sums are added up.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64)                   # recon, kl, loss (x n)
    for idx in iter_batches(len(data), batch_size):
        noise = torch.randn(len(idx), model.config.latent_dim, generator=gen)
        part, weight = dist.shard(len(idx))
        x, y = data.batch(idx[part], dist.device)
        x_hat, mu, logvar, logits = model(x, y, noise=noise[part], pitch_logits=True)
        terms = vae_loss(x_hat, x, mu, logvar, reconstruction=reconstruction, beta=beta)
        terms.loss = terms.loss + pitch_term(logits, x, model.decoder.combs, weight=pitch_weight)
        n = len(part) if weight else 0
        sums += torch.stack([terms.recon, terms.kl, terms.loss]).double().cpu() * n
    model.train()
    recon, kl, loss = (dist.sum(sums).cpu() / len(data)).tolist()
    return {"recon": recon, "kl": kl, "loss": loss}


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------

def train(config: Config, run_dir: Path, *, resume: bool = False,
          options: StageOptions | None = None) -> Path:
    """Train the VAE on ``config.paths.spectrograms``; write the run folder.

    Under ``torchrun`` every process calls this; they train one model together with
    DistributedDataParallel (see :mod:`animalvae.training.distributed`) and rank 0 writes the run
    folder.

    Parameters
    ----------
    config : Config
        Uses ``paths.spectrograms``, ``model.*`` and ``train.*``.
    run_dir : Path
        The run folder (``paths.runs/<train.name>`` by default).
    resume : bool
        Continue from ``run_dir/last.pth`` exactly: weights, optimiser, schedule position,
        epoch and batch, RNG states, best validation loss, metrics so far; the data split is
        the recorded ``split.csv``. The current config's ``train.epochs``/``max_steps`` apply.
        Under another number of processes than the run so far, the global batches, their
        order and the noise stay the same, so training goes on equal within float rounding.
    options : StageOptions
        ``limit`` caps the number of files (fresh runs; a smoke test), ``force`` starts over
        in a folder that holds a run (its model, checkpoints, metrics, ``samples/`` and
        ``index.html`` are removed, but only after the new data and model check out),
        ``progress`` shows the progress bar.

    Returns
    -------
    Path
        ``run_dir/model.pth``.

    Raises
    ------
    ConfigError
        Missing or empty input, no ``normalizer.json``, a bad array, a ``last.pth`` that
        does not fit this data or model config, or a run folder already in use.
    TrainingDiverged
        When the loss becomes NaN or Inf (naming the epoch and step).
    """
    with distributed(config.train.device) as dist:
        return _train(config, Path(run_dir), dist, resume=resume,
                      options=options or StageOptions())


def _train(config: Config, run_dir: Path, dist: DistContext, *, resume: bool,
           options: StageOptions) -> Path:
    """:func:`train` in one process of the job ``dist`` (the only one without torchrun)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    tc = config.train
    device = dist.device
    check_run_dir(run_dir, resume=resume, force=options.force)

    # -- data: a fresh split, or the recorded one when resuming --------------------------------
    state: dict[str, Any] | None = None
    if resume:
        state = read_checkpoint(run_dir / LAST, what=LAST)
        spec = SpectrogramSpec.from_dict(state["spec"])
        train_items, val_items = read_split(run_dir)
        groups = [str(g) for g in state["groups"]]
        if state["model_config"] != config_to_dict(config.model):
            raise ConfigError(f"--resume: the model settings differ from those in {run_dir / LAST}"
                              f" ({state['model_config']} vs {config_to_dict(config.model)}); "
                              "resume with the same model.* values, or start over with --force")
        if options.limit is not None:
            log.info("--limit is ignored with --resume: the recorded split is used")
    else:
        spec, items = find_spectrograms(config.paths.spectrograms, limit=options.limit)
        train_items, val_items = split_items(items, val_fraction=tc.val_fraction, seed=tc.seed)
        if not val_items:
            raise ConfigError(f"no group in {config.paths.spectrograms} has 2 or more files, so "
                              "nothing can be held out for validation; add data")
        groups = sorted({it.group for it in items})
    seed_everything(tc.seed)  # before the model, so its initial weights are repeatable
    model = build_model(config.model, spec, groups).to(device)  # ConfigError on a bad shape
    replicas = dist.wrap(model)  # the model in DDP under torchrun: forward through it to train
    train_set = SpectrogramSet(train_items, groups, spec.shape, progress=options.progress)
    val_set = SpectrogramSet(val_items, groups, spec.shape, progress=options.progress)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            clear_run_dir(run_dir)  # only now: a bad --input or setting leaves the old run be
            write_split(run_dir / SPLIT, train_items, val_items)
        write_settings(run_dir, config_to_dict(config))
    log.info("%d training and %d validation spectrograms %s in %d group(s) (%s); "
             "%.2f M parameters on %s", len(train_set), len(val_set), spec.shape, len(groups),
             ", ".join(groups), sum(p.numel() for p in model.parameters()) / 1e6, device)

    # -- optimiser and schedule ----------------------------------------------------------------
    optimizer = make_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    schedule = {"kind": "warmup-cosine", "lr": tc.lr, "warmup_steps": tc.warmup_steps,
                "total_steps": total_steps, "min_factor": _MIN_LR_FACTOR}
    kl_warmup_steps = tc.kl_warmup_epochs * steps_per_epoch
    reconstruction = ReconstructionLoss.from_config(tc, top_db=spec.top_db)
    pitch_weight = tc.pitch_weight if model.decoder.pitch is not None else 0.0
    # in last.pth: --resume checks they still hold
    loss_settings = {**asdict(reconstruction), **({"pitch_weight": pitch_weight} if pitch_weight
                                                  else {})}

    # -- start or resume -----------------------------------------------------------------------
    epoch, batch, step = 0, 0, 0
    best_val, rows = math.inf, []
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "n": 0}
    if state is not None:
        # every compatibility check before any state is loaded
        if state.get("world_size", 1) != dist.world_size and dist.is_main:
            log.warning("--resume: the run so far trained on %d process(es), this one on %d: "
                        "the same global batches (train.batch_size=%d), order and noise, "
                        "shared out anew, so it goes on equal within float rounding, "
                        "not bit for bit", state.get("world_size", 1), dist.world_size,
                        tc.batch_size)
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ConfigError(f"--resume: train.batch_size={tc.batch_size} differs from the run "
                              f"being resumed; keep the batch size, or start over with --force")
        if state["scheduler"] != schedule:
            log.warning("--resume with other train.epochs/lr/warmup_steps than the run so far: "
                        "the learning-rate curve changes from here on")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, batch, step = state["epoch"], state["batch"], state["step"]
        best_val, rows, sums = state["best_val"], list(state["metrics"]), dict(state["sums"])
        if state.get("loss") != loss_settings:
            log.warning("--resume with other reconstruction-loss settings than the run so far "
                        "(%s, now %s): its validation losses do not compare with the new ones, "
                        "so model.pth becomes the best epoch from here on",
                        state.get("loss", "those of a version before train.modulation_weight"),
                        loss_settings)
            best_val = math.inf
        set_rng_state(state["rng"])
        log.info("resuming at epoch %d, step %d (best validation loss %.5g)", epoch + 1, step,
                 best_val)
    if epoch >= tc.epochs or (tc.max_steps and step >= tc.max_steps):
        log.info("nothing to do: the run already reached train.epochs=%d / train.max_steps=%d",
                 tc.epochs, tc.max_steps)
        return run_dir / MODEL
    if tc.max_steps:
        total_steps_this_run = min(total_steps, tc.max_steps)
    else:
        total_steps_this_run = total_steps

    def checkpoint(**extra: Any) -> dict[str, Any]:
        return checkpoint_payload(model, spec=spec, groups=groups,
                                  config=config_to_dict(config), **extra)

    def vae_state() -> dict[str, Any]:
        """Where the VAE epochs stand now, as ``last.pth`` holds it for ``--resume``."""
        return {"epoch": epoch, "batch": batch, "step": step, "steps_per_epoch": steps_per_epoch,
                "best_val": best_val, "sums": sums, "optimizer": optimizer.state_dict(),
                "scheduler": schedule, "loss": loss_settings, "world_size": dist.world_size}

    # -- the loop ------------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=total_steps_this_run, initial=step, desc="train", unit="step",
               disable=not options.progress or not dist.is_main, dynamic_ncols=True)
    stop = False
    last_plot = time.monotonic()
    with bar, logging_redirect_tqdm():
        while epoch < tc.epochs and not stop:
            t0 = time.monotonic()
            order = epoch_order(len(train_set), seed=tc.seed, epoch=epoch)
            beta = lr = 0.0
            while batch < steps_per_epoch:
                # learning rate and KL weight of this step
                lr = lr_at(step, lr=tc.lr, warmup_steps=tc.warmup_steps, total_steps=total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                beta = beta_at(step, beta=tc.beta, warmup_steps=kl_warmup_steps)

                # this step's global batch and noise, drawn alike on every rank; this rank's share
                idx = order[batch * tc.batch_size:(batch + 1) * tc.batch_size]
                noise = torch.randn(len(idx), model.config.latent_dim)        # (B, L)
                part, weight = dist.shard(len(idx))

                # float32 on every device; on CUDA, cuDNN runs the convolutions in TF32
                x, y = train_set.batch(idx[part], device)
                x_hat, mu, logvar, logits = replicas(x, y, noise=noise[part], pitch_logits=True)
                terms = vae_loss(x_hat, x, mu, logvar, reconstruction=reconstruction, beta=beta)
                terms.loss = terms.loss + pitch_term(logits, x, model.decoder.combs,
                                                     weight=pitch_weight)
                # the step's one CPU-GPU sync: the batch means over all ranks, logged and
                # needed for the check below
                n = len(idx)
                totals = dist.sum(torch.stack([terms.loss, terms.recon, terms.kl]).detach()
                                  * (len(part) if weight else 0))
                loss, recon, kl = (totals / n).tolist()
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged: the loss is {loss} at epoch {epoch + 1}, step "
                        f"{step + 1} (recon {recon:.4g}, kl {kl:.4g});"
                        f" lower train.lr={tc.lr} or set train.grad_clip, then train again "
                        "with --force (or --resume from the last good epoch)")

                # backward (DDP averages the ranks' gradients), clip, step
                optimizer.zero_grad(set_to_none=True)
                (terms.loss * weight).backward()
                if tc.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    if not torch.isfinite(norm):
                        raise TrainingDiverged(
                            f"training diverged: the gradient norm is {norm.item()} at epoch "
                            f"{epoch + 1}, step {step + 1}; lower train.lr={tc.lr}")
                optimizer.step()
                step += 1
                batch += 1

                # log
                sums["loss"] += loss * n
                sums["recon"] += recon * n
                sums["kl"] += kl * n
                sums["n"] += n
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", recon=f"{recon:.4f}",
                                kl=f"{kl:.1f}", refresh=False)
                if tc.max_steps and step >= tc.max_steps:
                    stop = True
                    break

            # end of epoch (or of a run stopped by max_steps): validate, log, checkpoint
            val = _validate(model, val_set, batch_size=tc.batch_size, dist=dist,
                            reconstruction=reconstruction, beta=tc.beta,
                            pitch_weight=pitch_weight, seed=tc.seed)
            done = batch >= steps_per_epoch
            count = max(1, sums["n"])
            rows.append({"epoch": epoch + batch / steps_per_epoch, "step": step,
                         "train_loss": sums["loss"] / count, "train_recon": sums["recon"] / count,
                         "train_kl": sums["kl"] / count, "val_loss": val["loss"],
                         "val_recon": val["recon"], "val_kl": val["kl"], "beta": beta, "lr": lr,
                         "seconds": time.monotonic() - t0})
            log.info("epoch %s/%d: train loss %.5f (recon %.5f, kl %.2f) · val loss %.5f "
                     "(recon %.5f, kl %.2f) · beta %.3g · lr %.3g · %.1f s",
                     f"{rows[-1]['epoch']:.3g}", tc.epochs, rows[-1]["train_loss"],
                     rows[-1]["train_recon"], rows[-1]["train_kl"], val["loss"], val["recon"],
                     val["kl"], beta, lr, rows[-1]["seconds"])
            if done:
                epoch, batch = epoch + 1, 0
                sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "n": 0}
            if not dist.is_main:
                continue
            if val["loss"] < best_val:
                best_val = val["loss"]
                save_checkpoint(run_dir / MODEL, checkpoint(epoch=rows[-1]["epoch"], step=step,
                                                            val_loss=best_val))
            save_checkpoint(run_dir / LAST, checkpoint(**vae_state(), metrics=rows,
                                                       rng=rng_state()))
            write_metrics(run_dir / METRICS, rows, _METRIC_COLUMNS)
            # drawing is slow next to a small epoch: at most every _PLOT_EVERY_S, and at the end
            if stop or epoch >= tc.epochs or time.monotonic() - last_plot >= _PLOT_EVERY_S:
                _plot_losses(run_dir / LOSS_PLOT, rows)
                last_plot = time.monotonic()

    if stop and epoch < tc.epochs:
        log.info("stopped at train.max_steps=%d; continue with vae.py train --resume "
                 "(and a larger or zero train.max_steps)", tc.max_steps)
    log.info("best validation loss %.5g: %s (last state: %s)", best_val, run_dir / MODEL,
             run_dir / LAST)
    return run_dir / MODEL
