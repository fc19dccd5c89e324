"""Texture: the pixel-scale detail a decoder trained on a per-pixel loss averages away.

A real spectrogram is rough at the scale of single bins and frames: in noisy and breathy
parts each bin's level fluctuates by several dB from frame to frame. That roughness cannot be
predicted from a code, so a decoder trained on a per-pixel loss outputs its average, a smooth
surface; a judge then hears the smoothness (the decoded clips are less rough than any real
clip of their group) and Griffin-Lim turns it into a buzz.

After training, :func:`fit_texture` measures how much pixel-scale variance the decoder lost:
per group, frequency band and local level, the variance of ``x - local_mean(x)`` (3x3) of the
real training spectrograms minus that of their reconstructions. :func:`add_texture` puts the
missing variance back as independent Gaussian noise on every decoded spectrogram
(``generate.texture`` scales it; 0 turns it off). The table, ``(groups, bands, levels)``
standard deviations, is stored in ``model.pth`` as a plain tensor (``texture``).

The table is measured on reconstructions (encoded training clips) and serves samples from the
prior as well, whose codes are new but whose decoder is the same.

Like :mod:`animalvae.vae.prior` it is fit once at the end of ``vae.py train`` and again on
request (``vae.py fit-texture``), so a run trained before it existed can have one too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from ..config import Config
from ..device import pick_device
from .checkpoint import save_checkpoint
from .dataset import SpectrogramSet, iter_batches, read_split, require_sources
from .model import VAE, read_checkpoint, trained_model_from
from .run_folder import MODEL

log = logging.getLogger(__name__)

__all__ = ["TEXTURE", "BANDS", "LEVELS", "MAX_CLIPS", "fine_detail", "fit_texture", "add_texture",
           "texture_tables", "add_texture_to_checkpoint", "refit_texture"]

#: Key of the table in ``model.pth``.
TEXTURE = "texture"
#: Frequency bands (equal numbers of rows) and local-level bins ([0, 1] in equal steps) of a
#: fitted table; a stored table carries its own shape.
BANDS, LEVELS = 16, 16
#: Training clips per group the texture is fit on: a 16 x 16 table per group needs far fewer
#: pixels than that many clips hold, and a large dataset should not wait on the fit.
MAX_CLIPS = 256
# iid noise of standard deviation s has pixel-scale variance s**2 * (1 - 1/9) against its
# own 3x3 mean, so a variance deficit d needs noise of variance d * 9/8
_NOISE_GAIN = 9.0 / 8.0


def fine_detail(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split spectrograms into pixel-scale detail and local level.

    Parameters
    ----------
    x : Tensor [shape=(B, H, W)]
        Normalised spectrograms in [0, 1].

    Returns
    -------
    detail, level : Tensor [shape=(B, H, W)]
        ``level`` is the 3x3 mean around each pixel (edges: over the pixels that exist) and
        ``detail = x - level``. A smooth surface has detail near 0; a constant one, exactly 0.
    """
    level = F.avg_pool2d(x[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    return x - level, level


def _cells(level: Tensor, labels: Tensor, bands: int, levels: int) -> Tensor:
    """Flat ``(group, band, level bin)`` index of every pixel: (B, H, W) -> (B, H, W) long."""
    height = level.shape[1]
    band = torch.arange(height, device=level.device) * bands // height                # (H,)
    level_bin = (level * levels).long().clamp(0, levels - 1)
    return (labels[:, None, None] * bands + band[None, :, None]) * levels + level_bin


def fit_texture(pairs: Iterable[tuple[Tensor, Tensor, Tensor]], *, n_groups: int,
                bands: int = BANDS, levels: int = LEVELS) -> Tensor:
    """The noise that gives decoded spectrograms the pixel-scale variance of real ones.

    Parameters
    ----------
    pairs : iterable of (real, decoded, labels)
        Batches of real spectrograms ``(B, H, W)``, the model's output for them ``(B, H, W)``
        (both in [0, 1]) and their group indices ``(B,)``.
    n_groups : int
    bands, levels : int
        Frequency bands and local-level bins of the table.

    Returns
    -------
    Tensor [shape=(n_groups, bands, levels), float32]
        Standard deviations, in the spectrogram's [0, 1] units: per group, band and local
        level, ``sqrt(max(var_real - var_decoded, 0) * 9/8)`` of :func:`fine_detail`, each side
        binned by its own local level. 0 where the decoder is as rough as the data, or where
        no pixel of that group reaches that level.
    """
    size = n_groups * bands * levels
    sums = torch.zeros(2, size, dtype=torch.float64)     # squared detail: real, decoded
    counts = torch.zeros(2, size, dtype=torch.float64)
    for real, decoded, labels in pairs:
        for side, x in enumerate((real, decoded)):
            detail, level = fine_detail(x.detach().double().cpu())
            cells = _cells(level, labels.cpu(), bands, levels).flatten()
            sums[side].index_add_(0, cells, detail.flatten() ** 2)
            counts[side].index_add_(0, cells, torch.ones_like(cells, dtype=torch.float64))
    variance = sums / counts.clamp(min=1)
    deficit = (variance[0] - variance[1]).clamp(min=0) * (counts[0] > 0)
    return (deficit * _NOISE_GAIN).sqrt().float().view(n_groups, bands, levels)


def add_texture(x: Tensor, tables: Tensor, *, scale: float = 1.0, seed: int = 0) -> Tensor:
    """Decoded spectrograms with the fitted texture added as Gaussian noise.

    Parameters
    ----------
    x : Tensor [shape=(B, H, W)]
        Decoded spectrograms in [0, 1].
    tables : Tensor [shape=(B, bands, levels)]
        Each spectrogram's table (:func:`texture_tables`).
    scale : float
        Multiplies the noise; 0 returns ``x`` unchanged.
    seed : int
        The noise's seed: the same inputs give the same output on every device.

    Returns
    -------
    Tensor [shape=(B, H, W)]
        ``clamp(x + scale * sigma * n, 0, 1)``, ``n ~ N(0, 1)`` per pixel, ``sigma`` looked up
        by each pixel's band and local level (the 3x3 mean of ``x``).
    """
    if scale == 0:
        return x
    _, bands, levels = tables.shape
    _, level = fine_detail(x)
    cells = _cells(level, torch.arange(len(x), device=x.device), bands, levels)
    sigma = tables.to(x.device, x.dtype).flatten()[cells]                          # (B, H, W)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + scale * sigma * noise.to(x.device, x.dtype)).clamp(0.0, 1.0)


def texture_tables(texture: Tensor, weights: Tensor) -> Tensor:
    """Per-spectrogram tables from a model's ``(G, bands, levels)`` texture.

    ``weights`` is ``(B,)`` group indices, or ``(B, G)`` blends of the groups (an interpolation
    between two groups blends their tables as it blends their embeddings).
    """
    texture = texture.to(weights.device)
    if weights.dim() == 1:
        return texture[weights]
    return torch.einsum("bg,gkl->bkl", weights.to(texture.dtype), texture)


@torch.no_grad()
def _fit_on(model: VAE, data: SpectrogramSet, *, config: Config, device: torch.device,
            batch_size: int = 16) -> Tensor:
    """The texture of ``model`` on ``data``'s clips (at most :data:`MAX_CLIPS` per group),
    decoded as ``generate`` decodes an encoded clip.

    An unconditional model's outputs belong to no group, so its clips are pooled into one
    table, stored once per group."""
    from .generate import decode_for_output  # generate applies the texture this module fits

    model.eval()
    chosen = torch.cat([torch.nonzero(data.y == g)[:MAX_CLIPS, 0]
                        for g in range(model.n_groups)]).sort().values          # (N,)

    def pairs():
        for idx in iter_batches(len(chosen), batch_size):
            x, y = data.batch(chosen[idx], device)
            mu, _ = model.encode(x, y)
            x_hat = decode_for_output(model, mu, model.decoder.condition(y), config)
            yield x[:, 0], x_hat, y if model.config.conditional else torch.zeros_like(y)

    table = fit_texture(pairs(), n_groups=model.n_groups)
    if not model.config.conditional:
        table = table[:1].expand_as(table).clone()
    log.info("texture: fit on %d training clips (mean noise %.3f, max %.3f of the [0, 1] "
             "range)", len(chosen), table.mean().item(), table.max().item())
    return table


def add_texture_to_checkpoint(path: Path, model: VAE, data: SpectrogramSet, *,
                              config: Config, device: torch.device) -> None:
    """Fit the texture on ``data`` with the weights in ``path``; store it there (atomically).

    ``model`` is only a vessel of the right architecture: the weights of ``path`` are loaded
    into it first.
    """
    payload = read_checkpoint(path)
    model.load_state_dict(payload["model"])
    payload[TEXTURE] = _fit_on(model, data, config=config, device=device)
    save_checkpoint(path, payload)


def refit_texture(config: Config, run_dir: Path) -> Path:
    """Fit the texture of a trained run again and store it in its ``model.pth``.

    Fit on the run's training clips (``split.csv``) under its weights and the current
    ``generate.restore_peak``; a run trained before textures existed gets one.
    """
    path = Path(run_dir) / MODEL
    payload = read_checkpoint(path, what=MODEL)
    payload.pop(TEXTURE, None)                    # replaced below, so a damaged one may go
    trained = trained_model_from(payload, path)   # a usable model, before anything changes
    train_items, _ = read_split(run_dir)
    require_sources(train_items, run_dir, role="a training file",
                    why="the texture is fit on the training spectrograms")
    device = pick_device(config.train.device, key="train.device")
    data = SpectrogramSet(train_items, trained.groups, trained.spec.shape)
    payload[TEXTURE] = _fit_on(trained.model.to(device), data, config=config, device=device)
    save_checkpoint(path, payload)
    log.info("texture stored in %s", path)
    return path
