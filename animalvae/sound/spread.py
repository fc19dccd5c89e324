"""The spread of samples, fit per group after training.

A decoder trained on a reconstruction loss pulls every code towards its group's typical
sound, so samples from the prior vary less than real clips do, and by how much differs from
group to group and from run to run. ``generate`` undoes it by moving each sampled code away
from its group's centre (:func:`~animalvae.sound.prior.sample_prior`'s ``spread``); too little
and a group's samples are near-copies of its training clips, too much and they stop sounding
like the group.

:func:`fit_spread` starts every group at :data:`MIN_SPREAD`, which undoes the pull on
variety (docs/quality.md, "spread samples"), and raises a group's spread, up to
:data:`MAX_SPREAD`, until its samples, sent through Griffin-Lim and compared on the log-mel
statistics of :mod:`animalvae.evaluation.quality`, are as new as a real clip is: as far from
their nearest training clip as each training clip is from its nearest other one
(:func:`~animalvae.evaluation.quality.nearest_ratio` >= 1). A group whose decoder pulls its
codes together hardest (near-copies of its training clips) gets the most; the others keep the
smallest, which keeps their samples most typical of the group.

It runs after the prior is fit, as the last part of the sampler's fit
(:mod:`animalvae.sound.sampler`), and is stored beside the prior, ``(G,)``;
``generate.spread: fit`` uses it, a number overrides it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..evaluation.quality import logmel_stats, nearest_ratio
from ..spectrogram import SpectrogramSpec, to_audio
from ..training.dataset import SpectrogramSet, iter_batches

__all__ = ["SPREADS", "MIN_SPREAD", "MAX_SPREAD", "smallest_meeting", "fit_spread"]

log = logging.getLogger(__name__)

#: The spreads tried, in steps of 0.1: finer than a listener or the judge tells apart.
SPREADS = tuple(round(1.3 + k / 10, 1) for k in range(8))
#: Every group's spread at least: the spread that brings samples' variety near real clips'
#: (docs/quality.md, "spread samples"); further out, samples of some groups stop sounding like
#: the group.
MIN_SPREAD = SPREADS[0]
#: The largest spread: where samples never get as new as real clips, this one is used.
MAX_SPREAD = SPREADS[-1]
#: Samples per group judged at each spread tried.
SAMPLES_PER_GROUP = 32
#: Griffin-Lim iterations of the fit: enough for log-mel statistics, a quarter of the cost.
GRIFFIN_LIM_ITERS = 16


def smallest_meeting(meets: Callable[[np.ndarray], np.ndarray], n_groups: int,
                     grid: Sequence[float] = SPREADS) -> np.ndarray:
    """Each group's smallest value of ``grid`` at which ``meets`` holds, all groups bisected
    together: ``meets`` takes one value per group ``(G,)`` and says which groups meet.

    ``meets`` is assumed to hold from some value on (a group that never meets gets the last);
    ``ceil(log2(len(grid)))`` calls.

    Examples
    --------
    >>> smallest_meeting(lambda s: s >= np.array([1.0, 1.55, 9.0]), 3).tolist()
    [1.3, 1.6, 2.0]
    """
    values = np.asarray(grid, dtype=np.float64)
    lo, hi = np.zeros(n_groups, dtype=int), np.full(n_groups, len(values) - 1)
    while (lo < hi).any():
        open_, mid = lo < hi, (lo + hi) // 2
        ok = np.asarray(meets(values[mid]), dtype=bool)
        hi = np.where(open_ & ok, mid, hi)
        lo = np.where(open_ & ~ok, mid + 1, lo)
    return values[lo]


@torch.no_grad()
def fit_spread(draw: Callable[[Tensor, Tensor], Tensor], data: SpectrogramSet, chosen: Tensor,
               *, groups: Sequence[str], spec: SpectrogramSpec, config: Config,
               device: torch.device, batch_size: int = 32) -> Tensor:
    """Each group's spread (:func:`smallest_meeting` over :data:`SPREADS`), judged against
    the clips of ``data`` that ``chosen`` marks (read to ``device``).

    ``draw(labels, spread)`` samples and decodes one spectrogram per label at a per-group
    spread ``(G,)``, as ``generate`` draws them (the sampler's :meth:`draw`). A group with
    fewer than two chosen clips gets :data:`MIN_SPREAD`.

    Returns
    -------
    Tensor [shape=(G,), float32]
    """
    start = time.perf_counter()
    gc = config.generate

    def features(x: Tensor) -> np.ndarray:
        waves = to_audio(x, spec, n_iter=GRIFFIN_LIM_ITERS, seed=gc.seed)
        return logmel_stats(waves.cpu().numpy(), spec.sample_rate)

    index = torch.nonzero(chosen).flatten()
    real, real_y = [], []
    for idx in iter_batches(len(index), batch_size):
        x, y = data.batch(index[idx], device)
        real.append(features(x[:, 0]))
        real_y.append(y.cpu().numpy())
    feats, labels = np.concatenate(real), np.concatenate(real_y)
    mean, std = feats.mean(axis=0), feats.std(axis=0)
    std[std == 0] = 1.0
    n_groups = len(groups)
    reference = {g: (feats[labels == g] - mean) / std for g in range(n_groups)
                 if (labels == g).sum() >= 2}
    if not reference:
        return torch.full((n_groups,), MIN_SPREAD)
    sample_y = torch.tensor(sorted(reference)).repeat_interleave(SAMPLES_PER_GROUP)

    def meets(spread: np.ndarray) -> np.ndarray:
        x = draw(sample_y, torch.tensor(spread))
        gen = (np.concatenate([features(x[idx]) for idx in iter_batches(len(x), batch_size)])
               - mean) / std
        ok = np.ones(n_groups, dtype=bool)
        for g, ref in reference.items():
            mine = gen[sample_y.numpy() == g]
            ok[g] = nearest_ratio(mine, ref) >= 1.0
        return ok

    spread = smallest_meeting(meets, n_groups)     # a group without a reference always meets
    log.info("spread: %s (fit in %.1f s on %d training clips)", ", ".join(
        f"{name} {s:.3g}" for name, s in zip(groups, spread)),
        time.perf_counter() - start, len(index))
    return torch.tensor(spread, dtype=torch.float32)
