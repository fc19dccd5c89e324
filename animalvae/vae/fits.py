"""What is fit on the training clips after training and stored in ``model.pth`` beside the
weights: the prior over codes (:mod:`animalvae.vae.prior`) with each group's spread
(:mod:`animalvae.vae.spread`), and the texture (:mod:`animalvae.vae.texture`).

The prior and the texture come from one pass over the training clips under the stored
weights: each clip is encoded once, its posterior mean feeding the prior and, decoded as
``generate`` decodes an encoded clip, the texture. The spread is fit last, on samples drawn
from both. :func:`store_fits` runs at the end of ``vae.py train``; :func:`refit` serves
``vae.py fit-prior`` and ``vae.py fit-texture``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..device import pick_device
from .checkpoint import save_checkpoint
from .dataset import SpectrogramSet, first_per_group, iter_batches, read_split, require_sources
from .generate import decode_for_output
from .model import VAE, read_checkpoint, trained_model_from
from .prior import PRIOR, SPREAD, fit_prior
from .run_folder import MODEL
from .spread import fit_spread
from .texture import TEXTURE, TextureFit

__all__ = ["MAX_CLIPS", "fit_after_training", "add_spread", "store_fits", "refit"]

log = logging.getLogger(__name__)

#: Training clips per group the texture and the spread are fit on: a 16 x 16 table per group
#: needs far fewer pixels than that many clips hold, and a large dataset should not wait on
#: the decoding.
MAX_CLIPS = 256


@torch.no_grad()
def fit_after_training(model: VAE, data: SpectrogramSet, config: Config, *,
                       device: torch.device, prior: bool, texture: bool,
                       batch_size: int = 32) -> dict[str, Any]:
    """The prior (``train.prior``, on every clip's code) and the texture (on the first
    :data:`MAX_CLIPS` clips of each group), whichever are asked for, in one pass over
    ``data``: ``{"prior": ..., "texture": ...}`` as ``model.pth`` stores them.

    An unconditional model's outputs belong to no group, so its clips are pooled into one
    texture table, stored once per group.
    """
    model.eval()
    texture_fit = TextureFit(model.n_groups) if texture else None
    decode = torch.zeros(len(data), dtype=torch.bool)                      # (N,)
    decode[first_per_group([it.group for it in data.items], MAX_CLIPS)] = True
    codes = []
    for idx in iter_batches(len(data), batch_size):
        x, y = data.batch(idx, device)
        mu, _ = model.encode(x, y)
        codes.append(mu.float().cpu().numpy())
        keep = decode[idx].to(device)
        if texture_fit is not None and keep.any():
            x_hat = decode_for_output(model, mu[keep], model.decoder.condition(y[keep]), config)
            texture_fit.add(x[keep, 0], x_hat,
                            y[keep] if model.config.conditional else torch.zeros_like(y[keep]))
    fits: dict[str, Any] = {}
    if prior:
        tc = config.train
        kind = (f"a kernel density estimate (bandwidth {tc.prior_bandwidth:g})"
                if tc.prior == "kde" else f"a {tc.prior_components}-component Gaussian mixture")
        log.info("prior: %s per group, fit on %d training codes", kind, len(data))
        fits[PRIOR] = fit_prior(np.concatenate(codes), data.y.numpy(),
                                n_groups=model.n_groups, train=tc)
    if texture_fit is not None:
        table = texture_fit.table()
        if not model.config.conditional:
            table = table[:1].expand_as(table).clone()
        log.info("texture: fit on %d training clips (mean noise %.3f, max %.3f of the [0, 1] "
                 "range)", int(decode.sum()), table.mean().item(), table.max().item())
        fits[TEXTURE] = table
    return fits


def add_spread(payload: dict[str, Any], path: Path, data: SpectrogramSet, config: Config, *,
               device: torch.device) -> None:
    """Fit each group's spread (:func:`~animalvae.vae.spread.fit_spread`) with the weights,
    prior and texture of ``payload`` (``model.pth``'s contents) and put it in its prior;
    nothing without a prior."""
    if payload.get(PRIOR) is None:
        return
    trained = trained_model_from(payload, path, device=device)
    payload[PRIOR][SPREAD] = fit_spread(trained, data, config, max_clips=MAX_CLIPS)


def store_fits(path: Path, model: VAE, data: SpectrogramSet, config: Config, *,
               device: torch.device) -> None:
    """Fit the prior (unless ``train.prior: none``) with its spread, and the texture, on
    ``data`` with the weights in ``path``, and store them there (one read, one atomic write).

    ``model`` is only a vessel of the right architecture: the weights of ``path`` (the best
    epoch) are loaded into it first.
    """
    payload = read_checkpoint(path)
    model.load_state_dict(payload["model"])
    payload.update(fit_after_training(model, data, config, device=device,
                                      prior=config.train.prior != "none", texture=True))
    add_spread(payload, path, data, config, device=device)
    save_checkpoint(path, payload)


def refit(config: Config, run_dir: Path, *, prior: bool = False, texture: bool = False) -> Path:
    """Fit the prior (with its spread) and/or the texture of a trained run again and store
    them in its ``model.pth`` in place of the old ones (atomically).

    Fit on the run's training clips (``split.csv``) under its weights, with the ``train.prior*``
    and ``generate.restore_peak`` settings in effect, so another prior can be tried without
    training again and a run trained before either existed gets it; ``train.prior: none``
    removes the stored prior. A damaged stored fit is replaced, not an obstacle.
    """
    path = Path(run_dir) / MODEL
    payload = read_checkpoint(path, what=MODEL)
    for key, replaced in ((PRIOR, prior), (TEXTURE, texture)):
        if replaced:
            payload.pop(key, None)
    trained = trained_model_from(payload, path)   # a usable model, before anything changes
    if prior and config.train.prior == "none":
        log.info("prior: removed (generate samples z ~ N(0, I))")
        prior = False
    if prior or texture:
        train_items, _ = read_split(run_dir)
        require_sources(train_items, run_dir, role="a training file",
                        why="the prior and the texture are fit on the training spectrograms")
        device = pick_device(config.train.device, key="train.device")
        data = SpectrogramSet(train_items, trained.groups, trained.spec.shape)
        payload.update(fit_after_training(trained.model.to(device), data, config,
                                          device=device, prior=prior, texture=texture))
        if prior:
            add_spread(payload, path, data, config, device=device)
    save_checkpoint(path, payload)
    log.info("%s rewritten", path)
    return path
