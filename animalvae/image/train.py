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
``sound_image.kl_warmup_epochs``; the learning rate follows :func:`animalvae.sound.train.lr_at`
(``train.warmup_steps``, cosine to a tenth). The validation loss (which picks ``model.pth``)
is the pairs' term with the full ``beta`` and seeded noise.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, config_to_dict
from ..device import pick_device
from ..errors import ConfigError
from ..stage import StageOptions, write_settings
from ..training.checkpoint import (
    check_run_dir,
    clear_run_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from ..training.dataset import SpectrogramSet, epoch_order, iter_batches
from ..sound.model import kl_divergence, reparameterize
from .model import (
    ARCHITECTURE,
    SoundImageVAE,
    pairs_payload,
    product_of_experts,
    read_pairs_checkpoint,
)
from .pairs import ImageSet, PairSet, find_pairs, read_pair_split, write_pair_split
from ..training.run_folder import LAST, METRICS, MODEL, SPLIT
from ..sound.train import TrainingDiverged, beta_at, lr_at, make_optimizer, write_metrics

__all__ = ["train_images", "elbo_term", "pair_loss", "code_statistics", "image_loss"]

log = logging.getLogger(__name__)

_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_sound_l1", "val_image_from_sound_l1",
            "beta", "lr", "seconds")


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
    sums = {"loss": 0.0, "sound": 0.0, "image": 0.0}
    for idx in iter_batches(len(data), batch_size):
        sound, image, _ = data.batch(idx, device)
        sums["loss"] += pair_loss(model, sound, image, beta=beta, image_weight=image_weight,
                                  edge_weight=edge_weight, generator=gen).item() * len(idx)
        mu, _ = model.posterior(sound=sound)
        sums["sound"] += (model.decode_sound(mu) - sound).abs().mean().item() * len(idx)
        sums["image"] += (model.decode_image(mu) - image).abs().mean().item() * len(idx)
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
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    options = options or StageOptions()
    si, tc = config.sound_image, config.train
    run_dir = Path(run_dir)
    device = pick_device(tc.device, key="train.device")
    check_run_dir(run_dir, resume=resume, force=options.force)
    state: dict[str, Any] | None = None
    if resume:
        state = read_pairs_checkpoint(run_dir / LAST, what=LAST, keys=(
            "model", "model_config", "spec", "groups", "optimizer", "epoch"))
        now = config_to_dict(si)
        changed = [k for k in ARCHITECTURE if state["model_config"].get(k) != now[k]]
        if state["image_size"] != config.features.image_size:
            changed.append("features.image_size")
        if changed:
            raise ConfigError(f"--resume: {', '.join(changed)} differ from those in "
                              f"{run_dir / LAST}; resume with the same values, or start over "
                              "with --force")
        if any(state["model_config"].get(k) != now[k] for k in ("epochs", "batch_size", "lr")):
            log.warning("--resume with other sound_image.epochs/batch_size/lr than the run so "
                        "far: the learning-rate curve changes from here on")
        from ..spectrogram import SpectrogramSpec
        spec = SpectrogramSpec.from_dict(state["spec"])
        items = read_pair_split(run_dir)
        groups = [str(g) for g in state["groups"]]
    else:
        spec, items = find_pairs(config.paths.spectrograms, image_size=config.features.image_size,
                                 val_fraction=tc.val_fraction, seed=tc.seed, limit=options.limit)
        groups = sorted({it.group for it in [*items.train, *items.val, *items.sounds,
                                             *items.images]})
    seed_everything(tc.seed)
    model = SoundImageVAE(si, spec.shape, config.features.image_size).to(device)
    size = config.features.image_size
    train_set = PairSet(items.train, groups, spec.shape, size, progress=options.progress)
    val_set = PairSet(items.val, groups, spec.shape, size, progress=options.progress)
    sounds = SpectrogramSet(items.sounds, groups, spec.shape) if items.sounds else None
    images = ImageSet([Path(it.source) for it in items.images],
                      [groups.index(it.group) for it in items.images], size)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_run_dir(run_dir)
        write_pair_split(run_dir / SPLIT, items)
    write_settings(run_dir, config_to_dict(config))
    log.info("%d training pairs, %d validation pairs, %d unpaired sounds, %d unpaired images "
             "in %d group(s) (%s); spectrograms %s, images %d px; %.2f M parameters on %s",
             len(train_set), len(val_set), len(items.sounds), len(images), len(groups),
             ", ".join(groups), spec.shape, size,
             sum(p.numel() for p in model.parameters()) / 1e6, device)

    optimizer = make_optimizer(model, lr=si.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_set) / si.batch_size))
    total_steps = si.epochs * steps_per_epoch
    warmup = min(tc.warmup_steps, total_steps // 5)
    n_values = math.prod(spec.shape) + 3 * size * size
    epoch, step, best_val, rows = 0, 0, math.inf, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, best_val, rows = (state["epoch"], state["step"], state["best_val"],
                                       list(state["metrics"]))
        set_rng_state(state["rng"])
        log.info("resuming at epoch %d (best validation loss %.5g)", epoch + 1, best_val)
    if epoch >= si.epochs:
        log.info("nothing to do: the run already reached sound_image.epochs=%d", si.epochs)
        return run_dir / MODEL

    def payload(**extra: Any) -> dict[str, Any]:
        codes, residuals = code_statistics(model, train_set, groups, device=device,
                                           batch_size=si.batch_size)
        return pairs_payload(model, spec=spec, groups=groups, group_codes=codes,
                             residuals=residuals, config=config_to_dict(config), **extra)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train-images", unit="step",
               disable=not options.progress, dynamic_ncols=True)
    with bar, logging_redirect_tqdm(), _torch_threads(si.threads if device.type == "cpu" else 0):
        while epoch < si.epochs:
            t0 = time.monotonic()
            order = epoch_order(len(train_set), seed=tc.seed, epoch=epoch)
            total, count = 0.0, 0
            beta = lr = 0.0
            for b in range(steps_per_epoch):
                lr = lr_at(step, lr=si.lr, warmup_steps=warmup, total_steps=total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                beta = beta_at(step, beta=si.beta,
                               warmup_steps=si.kl_warmup_epochs * steps_per_epoch)
                sound, image, _ = train_set.batch(order[b * si.batch_size:
                                                        (b + 1) * si.batch_size], device)
                terms = [pair_loss(model, sound, image, beta=beta, image_weight=si.image_weight,
                                   edge_weight=si.edge_weight)]
                if sounds is not None:
                    s, _ = sounds.batch(_cycle(len(sounds), seed=tc.seed, epoch=epoch, step=b,
                                               batch_size=len(sound)), device)
                    terms.append(elbo_term(model, *model.posterior(sound=s), sound=s, image=None,
                                           beta=beta, image_weight=si.image_weight,
                                           n_values=n_values))
                if len(images):
                    im, _ = images.batch(_cycle(len(images), seed=tc.seed, epoch=epoch, step=b,
                                                batch_size=len(sound)), device)
                    terms.append(elbo_term(model, *model.posterior(image=im), sound=None,
                                           image=im, beta=beta, image_weight=si.image_weight,
                                           edge_weight=si.edge_weight, n_values=n_values))
                loss = torch.stack(terms).mean()
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"training diverged: the loss is {value} at epoch {epoch + 1}, step "
                        f"{step + 1}; lower sound_image.lr={si.lr}, then train-images --force")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                step += 1
                total, count = total + value * len(sound), count + len(sound)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}", refresh=False)
            val = _validate(model, val_set, device=device, batch_size=si.batch_size,
                            beta=si.beta, image_weight=si.image_weight,
                            edge_weight=si.edge_weight, seed=tc.seed)
            epoch += 1
            rows.append({"epoch": epoch, "step": step, "train_loss": total / max(1, count),
                         "val_loss": val["loss"], "val_sound_l1": val["sound"],
                         "val_image_from_sound_l1": val["image"], "beta": beta, "lr": lr,
                         "seconds": time.monotonic() - t0})
            log.debug("epoch %d/%d: train %.5f · val %.5f · image from sound |err| %.4f",
                      epoch, si.epochs, rows[-1]["train_loss"], val["loss"], val["image"])
            if val["loss"] < best_val:
                best_val = val["loss"]
                save_checkpoint(run_dir / MODEL, payload(epoch=epoch, step=step,
                                                         val_loss=best_val))
            save_checkpoint(run_dir / LAST, {
                **pairs_payload(model, spec=spec, groups=groups, group_codes={}, residuals={},
                                config=config_to_dict(config)),
                "epoch": epoch, "step": step, "best_val": best_val, "metrics": rows,
                "optimizer": optimizer.state_dict(), "rng": rng_state()})
            write_metrics(run_dir / METRICS, rows, _COLUMNS)
    log.info("train-images: %d epoch(s), best validation loss %.5g (image from sound: mean "
             "|error| %.4f at the end) -> %s", epoch, best_val,
             rows[-1]["val_image_from_sound_l1"], run_dir / MODEL)
    return run_dir / MODEL
