"""Training the sound <-> image model (``vae.py train-images``).

Reads stage 4's folder (spectrograms and, in ``images/``, the frames under the same ids; see
:mod:`animalvae.image.pairs`) and writes the sub-folder ``images/`` of the run folder
(``paths.runs/<train.name>/images``): ``model.pth`` (best validation loss;
:mod:`animalvae.image.model` describes it), ``last.pth`` (for ``--resume``, after every
epoch), ``split.csv``, ``metrics.csv``, ``settings.yaml``.

Loss. For a posterior q and what it must reconstruct (``S``: the spectrogram, ``I``: the image;
``|.|`` the mean absolute error per value; ``n`` = values of a spectrogram + values of an
image)::

    elbo(q) = |S_hat - S| + image_weight * image_loss(I_hat, I) + beta * KL(q || N(0, I)) / n
    image_loss(I_hat, I) = |I_hat - I| + edge_weight * |E(I_hat) - E(I)|

``E``: the edge energy around each pixel (absolute differences of neighbouring pixels,
averaged over 5 x 5; :func:`image_loss`). Where an edge's place is uncertain, the per-pixel
error alone is about as low for a smear as for a step; ``E`` of a step is about the same a
pixel or two away and that of a smear is not, so the term asks for edges
(``sound_image.edge_weight``; 0 = per-pixel only).

A step takes a batch of pairs and, when there are any, as many unpaired sounds and unpaired
images. Each pair trains three posteriors (MVAE's sub-sampled ELBOs): q(z | sound, image) and
q(z | sound) decode both halves (the cross term from the sound alone is what the model is
for: JMVAE, Suzuki et al. 2016), q(z | image) decodes the image (a spectrogram decode costs
far more than an image's at these sizes; image -> sound rests on the joint term). An
unpaired sound trains q(z | sound) on the sound, an unpaired image q(z | image) on the image.
The step's loss is the mean of those terms. ``beta`` rises over
``sound_image.kl_warmup_epochs``; the learning rate follows :func:`animalvae.training.loop.lr_at`
(``train.warmup_steps``, cosine to a tenth). The validation loss (which picks ``model.pth``)
is the pairs' term with the full ``beta`` and seeded noise.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, SoundImageConfig, config_to_dict
from ..device import pick_device
from ..errors import ConfigError
from ..sound.model import kl_divergence, reparameterize
from ..spectrogram import SpectrogramSpec
from ..stage import StageOptions
from ..training.checkpoint import check_run_dir, seed_everything
from ..training.dataset import SpectrogramSet, epoch_order, iter_batches
from ..training.distributed import DistContext
from ..training.loop import Batch, Schedule, StepLoss, TrainingLoop, make_optimizer, start_run_dir
from ..training.run_folder import LAST, MODEL, SPLIT
from .model import (
    ARCHITECTURE,
    SoundImageVAE,
    pairs_payload,
    product_of_experts,
    read_pairs_checkpoint,
)
from .pairs import ImageSet, PairItems, PairSet, find_pairs, read_pair_split, write_pair_split

__all__ = ["train_images", "elbo_term", "pair_loss", "code_statistics", "image_loss"]

log = logging.getLogger(__name__)

def _edge_energy(images: Tensor) -> Tensor:
    """|horizontal| + |vertical| neighbour differences, averaged over 5 x 5 neighbourhoods.

    (B, 3, S, S) -> (B, 3, S, S): how much edge there is around each pixel, wherever exactly
    the edge lies within a couple of pixels.
    """
    dx = torch.nn.functional.pad((images[..., :, 1:] - images[..., :, :-1]).abs(), (0, 1))
    dy = torch.nn.functional.pad((images[..., 1:, :] - images[..., :-1, :]).abs(), (0, 0, 0, 1))
    return torch.nn.functional.avg_pool2d(dx + dy, 5, stride=1, padding=2,
                                          count_include_pad=False)


def image_loss(decoded: Tensor, image: Tensor, *, edge_weight: float) -> Tensor:
    """Mean |error| per value plus ``edge_weight`` x mean |error| of the local edge energy.

    The edge energy (:func:`_edge_energy`) of a step and of the same step a pixel or two away
    are alike, that of a ramp is not: so the term charges blur, not a slightly misplaced edge.

    Parameters
    ----------
    decoded, image : Tensor [shape=(B, 3, S, S)]

    Returns
    -------
    Tensor
        0-d.
    """
    loss = (decoded - image).abs().mean()
    if edge_weight:
        loss = loss + edge_weight * (_edge_energy(decoded) - _edge_energy(image)).abs().mean()
    return loss


def elbo_term(model: SoundImageVAE, mu: Tensor, logvar: Tensor, *, sound: Tensor | None,
              image: Tensor | None, beta: float, image_weight: float, n_values: int,
              edge_weight: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One posterior's term of the loss (module docstring): reconstruct what is given.

    Parameters
    ----------
    mu, logvar : Tensor [shape=(B, L)]
    sound : Tensor [shape=(B, 1, H, W)] or None
    image : Tensor [shape=(B, 3, S, S)] or None
    noise : Tensor [shape=(B, L)] or None
        The reparameterisation's eps (None: drawn from torch's RNG).

    Returns
    -------
    Tensor
        0-d: the batch mean.
    """
    eps = torch.randn_like(mu) if noise is None else noise
    z = reparameterize(mu, logvar, eps)
    loss = beta * kl_divergence(mu, logvar).sum(dim=1).mean() / n_values
    if sound is not None:
        loss = loss + (model.decode_sound(z) - sound).abs().mean()
    if image is not None:
        loss = loss + image_weight * image_loss(model.decode_image(z), image,
                                                edge_weight=edge_weight)
    return loss


def pair_loss(model: SoundImageVAE, sound: Tensor, image: Tensor, *, beta: float,
              image_weight: float, edge_weight: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """Mean of the three posteriors' terms of a batch of pairs, each decoding both halves."""
    n_values = sound[0].numel() + image[0].numel()
    s_expert, i_expert = model.experts(sound, image)

    terms = []
    for experts, targets in (([s_expert, i_expert], (sound, image)), ([s_expert], (sound, image)),
                             ([i_expert], (None, image))):
        mu, logvar = product_of_experts(experts)
        noise = None if generator is None else torch.randn(
            mu.shape, generator=generator).to(mu.device)
        terms.append(elbo_term(model, mu, logvar, sound=targets[0], image=targets[1], beta=beta,
                               image_weight=image_weight, n_values=n_values,
                               edge_weight=edge_weight, noise=noise))
    return torch.stack(terms).mean()


@torch.no_grad()
def code_statistics(model: SoundImageVAE, data: PairSet, groups: list[str], *,
                    device: torch.device, batch_size: int
                    ) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, tuple[Tensor, Tensor]]]:
    """Per group, over the pairs of ``data``: the codes and the sound's residuals, (L,) each.

    Returns
    -------
    codes : dict
        group -> (mean, std) of q(z | sound, image)'s means (sampling a group).
    residuals : dict
        group -> (mean of q(z | sound)'s means (L,), each pair's q(z | image) mean minus its
        q(z | sound) mean (N, L)): what the sound leaves open (:mod:`animalvae.image.model`).
    """
    model.eval()
    rows: dict[str, list[Tensor]] = {"joint": [], "sound": [], "image": [], "y": []}
    for idx in iter_batches(len(data), batch_size):
        sound, image, y = data.batch(idx, device)
        rows["joint"].append(model.posterior(sound, image)[0].cpu())
        rows["sound"].append(model.posterior(sound=sound)[0].cpu())
        rows["image"].append(model.posterior(image=image)[0].cpu())
        rows["y"].append(y.cpu())
    model.train()
    joint, sound, image, y = (torch.cat(rows[k]) for k in ("joint", "sound", "image", "y"))
    codes, residuals = {}, {}
    for g, name in enumerate(groups):
        rows_g = y == g
        if rows_g.any():
            codes[name] = (joint[rows_g].mean(dim=0), _std(joint[rows_g]))
            residuals[name] = (sound[rows_g].mean(dim=0), image[rows_g] - sound[rows_g])
    return codes, residuals


def _std(rows: Tensor) -> Tensor:
    """Per column, the spread of ``rows`` (N, L) (1 for a single row), at least 1e-3."""
    std = rows.std(dim=0, unbiased=False) if len(rows) > 1 else torch.ones(rows.shape[1])
    return std.clamp(min=1e-3)


@torch.no_grad()
def _validate(model: SoundImageVAE, data: PairSet, *, device: torch.device, batch_size: int,
              beta: float, image_weight: float, edge_weight: float,
              seed: int) -> dict[str, float]:
    """Validation loss (seeded noise), and the sound's and the image-from-sound's mean |error|
    when decoding q(z | sound)'s mean."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = {"loss": 0.0, "sound_l1": 0.0, "image_from_sound_l1": 0.0}
    for idx in iter_batches(len(data), batch_size):
        sound, image, _ = data.batch(idx, device)
        sums["loss"] += pair_loss(model, sound, image, beta=beta, image_weight=image_weight,
                                  edge_weight=edge_weight, generator=gen).item() * len(idx)
        mu, _ = model.posterior(sound=sound)
        sums["sound_l1"] += (model.decode_sound(mu) - sound).abs().mean().item() * len(idx)
        sums["image_from_sound_l1"] += ((model.decode_image(mu) - image).abs().mean().item()
                                        * len(idx))
    model.train()
    return {k: v / len(data) for k, v in sums.items()}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to ``n`` inside (0: left as they are), restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cycle(n: int, *, seed: int, epoch: int, step: int, batch_size: int) -> Tensor:
    """Indices of the unpaired items for one step: their own shuffled order, wrapping around."""
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = epoch_order(n, seed=seed + 1, epoch=epoch)
    return order[(torch.arange(batch_size) + step * batch_size) % len(order)]


@dataclass(frozen=True)
class _Data:
    """The training pairs, the unpaired sounds (None without any) and the unpaired images."""

    pairs: PairSet
    sounds: SpectrogramSet | None
    images: ImageSet

    @classmethod
    def load(cls, items: PairItems, groups: list[str], shape: tuple[int, int], size: int, *,
             progress: bool) -> tuple[_Data, PairSet]:
        """The training data and the validation pairs of ``items``."""
        pairs = PairSet(items.train, groups, shape, size, progress=progress)
        val = PairSet(items.val, groups, shape, size, progress=progress)
        sounds = SpectrogramSet(items.sounds, groups, shape) if items.sounds else None
        images = ImageSet([Path(it.source) for it in items.images],
                          [groups.index(it.group) for it in items.images], size)
        return cls(pairs, sounds, images), val


def _step(batch: Batch, *, model: SoundImageVAE, data: _Data, si: SoundImageConfig, seed: int,
          n_values: int, device: torch.device) -> StepLoss:
    """The loss of one step: a batch of pairs and as many unpaired sounds and images."""
    # the pairs: q(z | sound, image), q(z | sound) and q(z | image)
    sound, image, _ = data.pairs.batch(batch.rows, device)
    terms = [pair_loss(model, sound, image, beta=batch.beta, image_weight=si.image_weight,
                       edge_weight=si.edge_weight)]
    # unpaired sounds, in their own order: q(z | sound) decodes the sound
    if data.sounds is not None:
        s, _ = data.sounds.batch(_cycle(len(data.sounds), seed=seed, epoch=batch.epoch,
                                        step=batch.index, batch_size=len(sound)), device)
        terms.append(elbo_term(model, *model.posterior(sound=s), sound=s, image=None,
                               beta=batch.beta, image_weight=si.image_weight,
                               n_values=n_values))
    # unpaired images, in their own order: q(z | image) decodes the image
    if len(data.images):
        im, _ = data.images.batch(_cycle(len(data.images), seed=seed, epoch=batch.epoch,
                                         step=batch.index, batch_size=len(sound)), device)
        terms.append(elbo_term(model, *model.posterior(image=im), sound=None, image=im,
                               beta=batch.beta, image_weight=si.image_weight,
                               edge_weight=si.edge_weight, n_values=n_values))
    # the mean of the terms
    loss = torch.stack(terms).mean()
    return StepLoss(loss, {"loss": loss}, rows=len(sound), n=len(sound))


def train_images(config: Config, run_dir: Path, *, resume: bool = False,
                 options: StageOptions | None = None) -> Path:
    """Train the sound <-> image model on ``paths.spectrograms``; write ``run_dir``.

    Parameters
    ----------
    config : Config
        Uses ``paths.spectrograms``, ``features.image_size``, ``sound_image.*`` and
        ``train.seed``, ``val_fraction``, ``device``, ``warmup_steps``, ``weight_decay``,
        ``grad_clip``. ``sound_image.threads`` (when not 0) sets torch's CPU threads for the
        loop: on a shared machine, threads of one small model that wait for each other at
        every layer cost far more than they bring.
    run_dir : Path
        The model's folder (``paths.runs/<train.name>/images`` by default).
    resume : bool
        Continue from ``run_dir/last.pth`` (the epoch after the last finished one; weights,
        optimiser, RNG states and metrics restored; the recorded split).
    options : StageOptions
        ``limit`` (at most N pairs, a smoke run), ``force`` (start over in a folder that
        holds a model), ``progress``.

    Returns
    -------
    Path
        ``run_dir/model.pth``.

    Raises
    ------
    ConfigError
        No pairs, a bad folder, a run folder in use, or a ``last.pth`` of other settings.
    TrainingDiverged
        When the loss becomes NaN or Inf.
    """
    options = options or StageOptions()
    si, tc, size = config.sound_image, config.train, config.features.image_size
    run_dir = Path(run_dir)
    dist = DistContext(0, 1, pick_device(tc.device, key="train.device"))  # one process
    check_run_dir(run_dir, resume=resume, force=options.force)
    # the pairs: found and split afresh, or the recorded split when resuming
    state = _read_last(config, run_dir) if resume else None
    spec, groups, items = _read_pairs(config, run_dir, state, options)
    # the model, seeded first so that its initial weights are repeatable
    seed_everything(tc.seed)
    model = SoundImageVAE(si, spec.shape, size).to(dist.device)
    data, val_set = _Data.load(items, groups, spec.shape, size, progress=options.progress)
    start_run_dir(run_dir, dist, resume=resume, settings=config_to_dict(config),
                  write_split=lambda: write_pair_split(run_dir / SPLIT, items))
    log.info("%d training pairs, %d validation pairs, %d unpaired sounds, %d unpaired images "
             "in %d group(s) (%s); spectrograms %s, images %d px; %.2f M parameters on %s",
             len(data.pairs), len(val_set), len(items.sounds), len(data.images), len(groups),
             ", ".join(groups), spec.shape, size,
             sum(p.numel() for p in model.parameters()) / 1e6, dist.device)
    # the schedule, the optimiser and the loop around them
    steps_per_epoch = max(1, math.ceil(len(data.pairs) / si.batch_size))
    schedule = Schedule(epochs=si.epochs, steps_per_epoch=steps_per_epoch, lr=si.lr,
                        warmup_steps=min(tc.warmup_steps, si.epochs * steps_per_epoch // 5),
                        beta=si.beta, kl_warmup_steps=si.kl_warmup_epochs * steps_per_epoch)
    loop = TrainingLoop(model, make_optimizer(model, lr=si.lr, weight_decay=tc.weight_decay),
                        schedule, dist, run_dir, batch_size=si.batch_size,
                        n_train=len(data.pairs), seed=tc.seed, grad_clip=tc.grad_clip,
                        what="sound_image", epoch_log_level=logging.DEBUG)
    # go on from last.pth
    if state is not None:
        loop.resume(state)
        log.info("resuming at epoch %d (best validation loss %.5g)", loop.epoch + 1,
                 loop.best_val)
    if loop.done():
        return run_dir / MODEL
    _run(loop, config, data, val_set, spec=spec, groups=groups, progress=options.progress)
    log.info("train-images: %d epoch(s), best validation loss %.5g (image from sound: mean "
             "|error| %.4f at the end) -> %s", loop.epoch, loop.best_val,
             loop.rows[-1]["val_image_from_sound_l1"], run_dir / MODEL)
    return run_dir / MODEL


def _run(loop: TrainingLoop, config: Config, data: _Data, val_set: PairSet, *,
         spec: SpectrogramSpec, groups: list[str], progress: bool) -> None:
    """Train: the image model's step, validation and payload in the loop."""
    si, tc, device = config.sound_image, config.train, loop.dist.device
    model = loop.model

    def payload(best: bool) -> dict[str, Any]:
        """The model's part of model.pth (with the codes of the training pairs) or last.pth."""
        codes, residuals = (code_statistics(model, data.pairs, groups, device=device,
                                            batch_size=si.batch_size) if best else ({}, {}))
        return pairs_payload(model, spec=spec, groups=groups, group_codes=codes,
                             residuals=residuals, config=config_to_dict(config))

    # train: one step per batch, validation and checkpoints after each epoch
    size = config.features.image_size
    step = functools.partial(_step, model=model, data=data, si=si, seed=tc.seed,
                             n_values=math.prod(spec.shape) + 3 * size * size, device=device)
    validate = functools.partial(_validate, model, val_set, device=device,
                                 batch_size=si.batch_size, beta=si.beta,
                                 image_weight=si.image_weight, edge_weight=si.edge_weight,
                                 seed=tc.seed)
    with _torch_threads(si.threads if device.type == "cpu" else 0):
        loop.run(step, validate, payload, desc="train-images", progress=progress)


def _read_last(config: Config, run_dir: Path) -> dict[str, Any]:
    """``last.pth``, checked against the architecture settings in effect."""
    state = read_pairs_checkpoint(run_dir / LAST, what=LAST, keys=(
        "model", "model_config", "spec", "groups", "optimizer", "epoch"))
    now = config_to_dict(config.sound_image)
    changed = [k for k in ARCHITECTURE if state["model_config"].get(k) != now[k]]
    if state["image_size"] != config.features.image_size:
        changed.append("features.image_size")
    if changed:
        raise ConfigError(f"--resume: {', '.join(changed)} differ from those in "
                          f"{run_dir / LAST}; resume with the same values, or start over "
                          "with --force")
    return state


def _read_pairs(config: Config, run_dir: Path, state: dict[str, Any] | None,
                options: StageOptions) -> tuple[SpectrogramSpec, list[str], PairItems]:
    """The spectrogram spec, the groups and the pairs: found and split afresh, or (resuming,
    ``state`` = ``last.pth``) the recorded ones."""
    if state is not None:
        return (SpectrogramSpec.from_dict(state["spec"]), [str(g) for g in state["groups"]],
                read_pair_split(run_dir))
    spec, items = find_pairs(config.paths.spectrograms, image_size=config.features.image_size,
                             val_fraction=config.train.val_fraction, seed=config.train.seed,
                             limit=options.limit)
    groups = sorted({it.group for it in [*items.train, *items.val, *items.sounds,
                                         *items.images]})
    return spec, groups, items
