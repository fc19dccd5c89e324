"""Training the VAE: its loss, its step and its validation in the one training loop.

Reads a stage-4 folder (``paths.spectrograms``: ``<group>/<id>.npy`` + ``normalizer.json``)
and writes into the run folder (``paths.runs/<train.name>``):

- ``split.csv``: which file is in ``train`` and which in ``val`` (held out per group, fixed by
  ``train.seed``); ``reconstruct`` and ``evaluate`` use the ``val`` rows only;
- ``model.pth``: the weights with the best validation loss so far, plus everything needed to
  use them (see :mod:`animalvae.sound.model`); ``last.pth``: the latest state, for ``--resume``;
- ``metrics.csv`` (one row per epoch) and ``loss.png``; ``settings.yaml``: the config in effect;

The epochs, schedules, checkpoints, ``--resume``, metrics and torchrun's part are
:mod:`animalvae.training.loop` (shared with the sound -> image model); finding, splitting and
loading the data is :mod:`animalvae.training.dataset`.

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

import functools
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, config_to_dict
from ..errors import ConfigError
from ..spectrogram import SpectrogramSpec
from ..stage import Item, StageOptions
from ..training.checkpoint import check_run_dir, seed_everything
from ..training.dataset import (
    SpectrogramSet,
    find_spectrograms,
    iter_batches,
    read_split,
    split_items,
    write_split,
)
from ..training.distributed import DistContext, distributed
from ..training.loop import Batch, Schedule, StepLoss, TrainingLoop, make_optimizer, start_run_dir
from ..training.run_folder import LAST, MODEL, SPLIT
from .harmonic import pitch_distribution, pitch_loss
from .losses import ReconstructionLoss
from .model import VAE, build_model, checkpoint_payload, kl_divergence, read_checkpoint

__all__ = ["train", "LossTerms", "vae_loss", "pitch_term"]

log = logging.getLogger(__name__)

#: loss.png's panels: metric -> title
_PANELS = {"loss": "loss (per pixel)", "recon": "reconstruction (per pixel)",
           "kl": "KL (nats per sample)"}


# --------------------------------------------------------------------------------------------
# Loss
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
        out = model(x, y, noise=noise[part])
        terms = vae_loss(out.x_hat, x, out.mu, out.logvar, reconstruction=reconstruction,
                         beta=beta)
        terms.loss = terms.loss + pitch_term(out.pitch_logits, x, model.decoder.combs,
                                             weight=pitch_weight)
        n = len(part) if weight else 0
        sums += torch.stack([terms.recon, terms.kl, terms.loss]).double().cpu() * n
    model.train()
    recon, kl, loss = (dist.sum(sums).cpu() / len(data)).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}



def _step(batch: Batch, *, loop: TrainingLoop, data: SpectrogramSet,
          reconstruction: ReconstructionLoss, pitch_weight: float) -> StepLoss:
    """The loss of one global batch on this rank (:class:`~animalvae.training.loop.StepLoss`)."""
    model, dist = loop.model, loop.dist
    # this step's global batch and noise, drawn alike on every rank; this rank's share
    noise = torch.randn(len(batch.rows), model.config.latent_dim)        # (B, L)
    part, weight = dist.shard(len(batch.rows))
    # float32 on every device; on CUDA, cuDNN runs the convolutions in TF32
    x, y = data.batch(batch.rows[part], dist.device)
    out = loop.replicas(x, y, noise=noise[part])
    # the VAE objective, plus the pitch head's term from this same pass
    terms = vae_loss(out.x_hat, x, out.mu, out.logvar, reconstruction=reconstruction,
                     beta=batch.beta)
    loss = terms.loss + pitch_term(out.pitch_logits, x, model.decoder.combs, weight=pitch_weight)
    # weighted by this rank's share, so DDP's average over ranks is the global batch mean
    return StepLoss(loss * weight, {"loss": loss, "recon": terms.recon, "kl": terms.kl},
                    rows=len(part) if weight else 0, n=len(batch.rows))


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
    tc = config.train
    check_run_dir(run_dir, resume=resume, force=options.force)
    # the data: a fresh split, or the recorded one when resuming
    state = read_checkpoint(run_dir / LAST, what=LAST) if resume else None
    spec, groups, train_items, val_items = _read_data(config, run_dir, state, options)
    # the model, seeded first so that its initial weights are repeatable
    seed_everything(tc.seed)
    model = build_model(config.model, spec, groups).to(dist.device)  # ConfigError: bad shape
    train_set = SpectrogramSet(train_items, groups, spec.shape, progress=options.progress)
    val_set = SpectrogramSet(val_items, groups, spec.shape, progress=options.progress)
    start_run_dir(run_dir, dist, resume=resume, settings=config_to_dict(config),
                  write_split=lambda: write_split(run_dir / SPLIT, train_items, val_items))
    log.info("%d training and %d validation spectrograms %s in %d group(s) (%s); "
             "%.2f M parameters on %s", len(train_set), len(val_set), spec.shape, len(groups),
             ", ".join(groups), sum(p.numel() for p in model.parameters()) / 1e6, dist.device)
    # the schedule, the optimiser and the loop around them
    steps_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    schedule = Schedule(epochs=tc.epochs, steps_per_epoch=steps_per_epoch, lr=tc.lr,
                        warmup_steps=tc.warmup_steps, beta=tc.beta,
                        kl_warmup_steps=tc.kl_warmup_epochs * steps_per_epoch,
                        max_steps=tc.max_steps)
    loop = TrainingLoop(model, make_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay),
                        schedule, dist, run_dir, batch_size=tc.batch_size,
                        n_train=len(train_set), seed=tc.seed, grad_clip=tc.grad_clip,
                        panels=_PANELS)
    # the loss; its settings go into last.pth, and --resume checks they still hold
    reconstruction = ReconstructionLoss.from_config(tc, top_db=spec.top_db)
    pitch_weight = tc.pitch_weight if model.decoder.pitch is not None else 0.0
    loss_settings = {**asdict(reconstruction),
                     **({"pitch_weight": pitch_weight} if pitch_weight else {})}
    # go on from last.pth
    if state is not None:
        _resume(loop, state, loss_settings, run_dir=run_dir)
    if loop.done():
        return run_dir / MODEL

    def payload(best: bool) -> dict[str, Any]:
        """The model's part of model.pth (best) or last.pth."""
        return checkpoint_payload(model, spec=spec, groups=groups, config=config_to_dict(config),
                                  **({} if best else {"loss": loss_settings}))

    # train: one step per batch, validation and checkpoints after each epoch
    step = functools.partial(_step, loop=loop, data=train_set, reconstruction=reconstruction,
                             pitch_weight=pitch_weight)
    validate = functools.partial(_validate, model, val_set, batch_size=tc.batch_size, dist=dist,
                                 reconstruction=reconstruction, beta=tc.beta,
                                 pitch_weight=pitch_weight, seed=tc.seed)
    loop.run(step, validate, payload, desc="train", progress=options.progress)
    log.info("best validation loss %.5g: %s (last state: %s)", loop.best_val, run_dir / MODEL,
             run_dir / LAST)
    return run_dir / MODEL


def _read_data(config: Config, run_dir: Path, state: dict[str, Any] | None,
               options: StageOptions) -> tuple[SpectrogramSpec, list[str], list[Item], list[Item]]:
    """The spectrogram spec, the groups and the training and validation items: found and split
    afresh, or (resuming, ``state`` = ``last.pth``) the recorded ones."""
    if state is None:
        spec, items = find_spectrograms(config.paths.spectrograms, limit=options.limit)
        train_items, val_items = split_items(items, val_fraction=config.train.val_fraction,
                                             seed=config.train.seed)
        if not val_items:
            raise ConfigError(f"no group in {config.paths.spectrograms} has 2 or more files, so "
                              "nothing can be held out for validation; add data")
        return spec, sorted({it.group for it in items}), train_items, val_items
    if state["model_config"] != config_to_dict(config.model):
        raise ConfigError(f"--resume: the model settings differ from those in {run_dir / LAST}"
                          f" ({state['model_config']} vs {config_to_dict(config.model)}); "
                          "resume with the same model.* values, or start over with --force")
    if options.limit is not None:
        log.info("--limit is ignored with --resume: the recorded split is used")
    train_items, val_items = read_split(run_dir)
    return (SpectrogramSpec.from_dict(state["spec"]), [str(g) for g in state["groups"]],
            train_items, val_items)


def _resume(loop: TrainingLoop, state: dict[str, Any], loss_settings: dict[str, Any], *,
            run_dir: Path) -> None:
    """Check that ``last.pth``'s ``state`` fits this run, then go on from it."""
    if state["steps_per_epoch"] != loop.schedule.steps_per_epoch:
        raise ConfigError(f"--resume: train.batch_size={loop.batch_size} differs from the run "
                          f"being resumed; keep the batch size, or start over with --force")
    loop.resume(state)
    if state.get("loss") != loss_settings:
        log.warning("--resume with other reconstruction-loss settings than the run so far "
                    "(%s, now %s): its validation losses do not compare with the new ones, "
                    "so model.pth becomes the best epoch from here on",
                    state.get("loss", "those of a version before train.modulation_weight"),
                    loss_settings)
        loop.best_val = math.inf
    log.info("resuming at epoch %d, step %d (best validation loss %.5g) from %s",
             loop.epoch + 1, loop.step, loop.best_val, run_dir / LAST)
