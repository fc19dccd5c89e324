"""How far a decoded spectrogram is from its target: the per-pixel term and a spectral one.

The per-pixel term (``train.recon_loss``: mean ``|x_hat - x|`` or its square) compares the
normalised log-magnitudes, where a quiet valley counts as much as a loud peak. On its own it
lets a decoder trade the few loud pixels that make a sound recognisable (a bark's onset, a
meow's harmonics) for the many quiet ones: the peaks come out 20 dB too low and smeared.
The spectral term compares linear magnitudes, where the loud pixels dominate, at several
time-frequency resolutions: the multi-resolution spectral convergence of Parallel WaveGAN
(Yamamoto et al. 2020; Arik et al. 2019), here on the one STFT the spectrogram holds, coarser
resolutions made by average-pooling its magnitudes::

    S = 10 ** ((x - 1) * top_db / 20)                        the magnitude, peak at 1
    sc_k = || pool_k(S) - pool_k(S_hat) ||_F / || pool_k(S) ||_F     per clip, k in SCALES
    loss = recon_term + spectral_weight * mean over k and batch of sc_k
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from ..spectrogram import spectral_convergence, unit_to_magnitude

__all__ = ["SCALES", "pixel_loss", "spectral_loss", "reconstruction_loss"]

#: Pooling factors (time and frequency alike) of the spectral term's resolutions.
SCALES = (1, 2, 4)


def pixel_loss(x_hat: Tensor, x: Tensor, kind: str) -> Tensor:
    """Mean ``|x_hat - x|`` (``kind`` l1) or ``(x_hat - x) ** 2`` (mse) over every value."""
    err = (x_hat - x).abs() if kind == "l1" else (x_hat - x).pow(2)
    return err.mean()


def spectral_loss(x_hat: Tensor, x: Tensor, *, top_db: float,
                  scales: tuple[int, ...] = SCALES) -> Tensor:
    """Multi-resolution spectral convergence of two normalised spectrograms (0-d tensor).

    Parameters
    ----------
    x_hat, x : Tensor [shape=(B, 1, H, W), values in [0, 1]]
        Normalised log-magnitudes (:mod:`animalvae.spectrogram`: 1 is the clip's peak,
        0 is ``top_db`` below it); H and W divisible by the largest scale.
    top_db : float
        The spectrogram's dB range.
    scales : tuple of int
        Average-pooling factors; 1 is the spectrogram itself.

    Returns
    -------
    Tensor
        The mean over scales and clips of :func:`animalvae.spectrogram.spectral_convergence`
        of the magnitudes: 0 when equal, about 1 when ``x_hat`` is silent.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 1, 8, 8)
    >>> float(spectral_loss(x, x, top_db=80.0))
    0.0
    >>> 0.99 < float(spectral_loss(torch.zeros_like(x), x, top_db=80.0)) < 1.0
    True
    """
    mag, mag_hat = unit_to_magnitude(x, top_db=top_db), unit_to_magnitude(x_hat, top_db=top_db)
    total = x.new_zeros(())
    for k in scales:
        a, b = (mag, mag_hat) if k == 1 else (F.avg_pool2d(mag, k), F.avg_pool2d(mag_hat, k))
        total = total + spectral_convergence(a, b).mean()
    return total / len(scales)


def reconstruction_loss(x_hat: Tensor, x: Tensor, *, kind: str, spectral_weight: float,
                        top_db: float) -> tuple[Tensor, Tensor]:
    """The reconstruction term of the module docstring, and its per-pixel part.

    Returns
    -------
    loss : Tensor
        ``pixel_loss + spectral_weight * spectral_loss`` (0-d).
    pixel : Tensor
        ``pixel_loss`` alone, the figure logged as ``recon`` (0-d).
    """
    pixel = pixel_loss(x_hat, x, kind)
    if spectral_weight <= 0:
        return pixel, pixel
    return pixel + spectral_weight * spectral_loss(x_hat, x, top_db=top_db), pixel
