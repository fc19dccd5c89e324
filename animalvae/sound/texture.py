"""Texture: the pixel-scale detail a decoder trained on a per-pixel loss averages away.

A real spectrogram is rough at the scale of single bins and frames: in noisy and breathy
parts each bin's level fluctuates by several dB from frame to frame. That roughness cannot be
predicted from a code, so a decoder trained on a per-pixel loss outputs its average, a smooth
surface; a judge then hears the smoothness (the decoded clips are less rough than any real
clip of their group) and Griffin-Lim turns it into a buzz.

After training, :class:`TextureFit` measures how much pixel-scale variance the decoder lost:
per group, frequency band and local level, the variance of ``x - local_mean(x)`` (3x3) of the
real training spectrograms minus that of their reconstructions. :func:`add_texture` puts the
missing variance back as independent Gaussian noise on every decoded spectrogram
(``generate.texture`` scales it; 0 turns it off). The table, ``(groups, bands, levels)``
standard deviations, is part of the run's sampler (:mod:`animalvae.sound.sampler`), a plain
tensor in ``sampler.pth`` (``texture``).

The table is measured on reconstructions (encoded training clips) and serves samples from the
prior as well, whose codes are new but whose decoder is the same. Like the prior it is fit at
the end of ``vae.py train``, in the same pass over the training clips, and again with
``vae.py fit-sampler``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["TEXTURE", "BANDS", "LEVELS", "fine_detail", "TextureFit", "add_texture",
           "texture_tables"]

#: Key of the table in a sampler's payload.
TEXTURE = "texture"
#: Frequency bands (equal numbers of rows) and local-level bins ([0, 1] in equal steps) of a
#: fitted table; a stored table carries its own shape.
BANDS, LEVELS = 16, 16
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


class TextureFit:
    """The noise that gives decoded spectrograms the pixel-scale variance of real ones, fit
    batch by batch (:meth:`add`), so the pass that fits it can do other work too.

    Parameters
    ----------
    n_groups : int
    bands, levels : int
        Frequency bands and local-level bins of the table.
    """

    def __init__(self, n_groups: int, *, bands: int = BANDS, levels: int = LEVELS):
        self.shape = (n_groups, bands, levels)
        size = n_groups * bands * levels
        self.sums = torch.zeros(2, size, dtype=torch.float64)     # squared detail: real, decoded
        self.counts = torch.zeros(2, size, dtype=torch.float64)

    def add(self, real: Tensor, decoded: Tensor, labels: Tensor) -> None:
        """Count a batch: real spectrograms ``(B, H, W)``, the model's output for them
        ``(B, H, W)`` (both in [0, 1]) and their group indices ``(B,)``."""
        _, bands, levels = self.shape
        for side, x in enumerate((real, decoded)):
            detail, level = fine_detail(x.detach().double().cpu())
            cells = _cells(level, labels.cpu(), bands, levels).flatten()
            self.sums[side].index_add_(0, cells, detail.flatten() ** 2)
            self.counts[side].index_add_(0, cells, torch.ones_like(cells, dtype=torch.float64))

    def table(self) -> Tensor:
        """The fit so far.

        Returns
        -------
        Tensor [shape=(n_groups, bands, levels), float32]
            Standard deviations, in the spectrogram's [0, 1] units: per group, band and local
            level, ``sqrt(max(var_real - var_decoded, 0) * 9/8)`` of :func:`fine_detail`, each
            side binned by its own local level. 0 where the decoder is as rough as the data,
            or where no pixel of that group reaches that level.
        """
        variance = self.sums / self.counts.clamp(min=1)
        deficit = (variance[0] - variance[1]).clamp(min=0) * (self.counts[0] > 0)
        return (deficit * _NOISE_GAIN).sqrt().float().view(self.shape)


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
