"""How far a decoded spectrogram is from its target: a per-pixel term and two that see past it.

The per-pixel term (``train.recon_loss``: mean ``|x_hat - x|`` or its square) compares the
normalised log-magnitudes, where a quiet valley counts as much as a loud peak. On its own it
lets a decoder trade the few loud pixels that make a sound recognisable (a bark's onset, a
meow's harmonics) for the many quiet ones: the peaks come out far too low and smeared.
The spectral term compares linear magnitudes, where the loud pixels dominate, at several
time-frequency resolutions: the multi-resolution spectral convergence of Parallel WaveGAN
(Yamamoto et al. 2020; Arik et al. 2019), here on the one STFT the spectrogram holds, coarser
resolutions made by average-pooling its magnitudes.

Both still reward a decoder that is unsure *when* a pulse falls for drawing the average of
the places it could fall: a smooth blob where a trill or a bark train was. The modulation
term compares how much each frequency band's level fluctuates at each rate (the magnitude of
its Fourier transform along time, the modulation spectrum of sound-texture statistics:
McDermott & Simoncelli 2011), which does not depend on where the pulses fall, so it asks for
the fluctuation without asking for the timing::

    S = 10 ** ((x - 1) * top_db / 20)                        the magnitude, peak at 1
    sc_k = || pool_k(S) - pool_k(S_hat) ||_F / || pool_k(S) ||_F     per clip, k in SCALES
    M = | rfft over time of pool_band(x) |, without the 0 Hz bin     per clip and band
        (train.modulation_taper: of hann * (pool_band(x) - its mean))
    mod = sum |M_hat - M| / sum M                                    per clip
    loss = recon_term + spectral_weight * mean sc_k + modulation_weight * mean mod
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ..config import TrainConfig
from ..spectrogram import spectral_convergence, unit_to_magnitude

__all__ = ["SCALES", "MODULATION_BAND", "MODULATION_FLOOR", "pixel_loss", "spectral_loss",
           "modulation_loss", "ReconstructionLoss"]

#: Pooling factors (time and frequency alike) of the spectral term's resolutions.
SCALES = (1, 2, 4)
#: Frequency rows averaged into one band of the modulation term: a call that glides by a row
#: or two between clips keeps its band.
MODULATION_BAND = 4
#: Floor of the modulation term's denominator, per modulation bin: a target whose bands hardly
#: fluctuate (silence, a steady drone) is scored against this much fluctuation rather than its
#: own near-zero amount, so that one such clip cannot swamp a batch's gradient. Ordinary clips
#: fluctuate far more, and the floor leaves them as they are.
MODULATION_FLOOR = 0.01


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


def modulation_loss(x_hat: Tensor, x: Tensor, *, band: int = MODULATION_BAND,
                    taper: bool = False) -> Tensor:
    """Distance between the temporal modulation spectra of two spectrograms (0-d tensor).

    Parameters
    ----------
    x_hat, x : Tensor [shape=(B, 1, H, W)]
        Normalised log-magnitudes.
    band : int
        Frequency rows averaged into one band before the transform along time (the top
        band holds the rows left over when H is not divisible by it).
    taper : bool
        Each band's series less its mean and times a Hann window before the transform. The
        transform alone reads a clip as periodic and counts the jump from its last frame
        back to its first as one more pulse, which only the edge frames can answer
        (docs/benchmarks.md, "Edge stripes"); tapered, a shift in time is no longer exactly
        free.

    Returns
    -------
    Tensor
        The batch mean of ``sum |M_hat - M| / sum M`` (module docstring): 0 when the bands
        fluctuate alike, 1 when ``x_hat`` is constant over time. Shifting a clip in time
        (circularly) leaves it unchanged (tapered: near 0). ``sum M`` is floored at
        :data:`MODULATION_FLOOR` per modulation bin, so a silent target gives a bounded
        figure.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 1, 8, 16)
    >>> float(modulation_loss(torch.roll(x, 5, dims=3), x)) < 1e-5
    True
    >>> round(float(modulation_loss(x.mean(dim=3, keepdim=True).expand_as(x), x)), 4)
    1.0
    >>> pulses = torch.zeros(1, 1, 8, 64)
    >>> pulses[..., ::8] = 1.0
    >>> float(modulation_loss(torch.roll(pulses, 4, dims=3), pulses, taper=True)) < 0.01
    True
    """
    window = (torch.hann_window(x.shape[-1], periodic=False, dtype=x.dtype, device=x.device)
              if taper else None)

    def spectrum(s: Tensor) -> Tensor:
        rows = F.avg_pool2d(s, (band, 1), ceil_mode=True)
        if window is not None:
            rows = (rows - rows.mean(dim=-1, keepdim=True)) * window
        return torch.fft.rfft(rows, dim=-1).abs()[..., 1:]       # (B, 1, H/band, W/2)

    m, m_hat = spectrum(x), spectrum(x_hat)
    distance = (m_hat - m).abs().sum(dim=(1, 2, 3))
    floor = MODULATION_FLOOR * m[0].numel()
    return (distance / m.sum(dim=(1, 2, 3)).clamp(min=floor)).mean()


@dataclass(frozen=True)
class ReconstructionLoss:
    """The reconstruction term of the module docstring, with its settings.

    Built once per run (:meth:`from_config`) and called on each batch; the training epochs and
    their validation score reconstructions with it.

    Parameters
    ----------
    kind : {"l1", "mse"}
        The per-pixel term (``train.recon_loss``).
    spectral_weight, modulation_weight : float
        Weights of :func:`spectral_loss` and :func:`modulation_loss`; 0 = off.
    modulation_taper : bool
        :func:`modulation_loss`'s ``taper``.
    top_db : float
        The spectrogram's dB range, which the spectral term needs to undo the normalisation.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 1, 8, 8)
    >>> loss, pixel = ReconstructionLoss("l1", spectral_weight=1.0)(torch.zeros_like(x), x)
    >>> bool(loss > pixel) and torch.isclose(pixel, x.mean()).item()
    True
    """

    kind: str = "l1"
    spectral_weight: float = 0.0
    modulation_weight: float = 0.0
    top_db: float = 80.0
    modulation_taper: bool = False

    @classmethod
    def from_config(cls, train: TrainConfig, *, top_db: float) -> ReconstructionLoss:
        """The loss of ``train.recon_loss``/``spectral_weight``/``modulation_weight``/
        ``modulation_taper``."""
        return cls(train.recon_loss, train.spectral_weight, train.modulation_weight, top_db,
                   train.modulation_taper)

    def __call__(self, x_hat: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x_hat`` against ``x`` (both (B, 1, H, W) in [0, 1]).

        Returns
        -------
        loss : Tensor
            The per-pixel term plus the weighted spectral and modulation terms (0-d).
        pixel : Tensor
            The per-pixel term alone, the figure logged as ``recon`` (0-d).
        """
        pixel = pixel_loss(x_hat, x, self.kind)
        loss = pixel
        if self.spectral_weight > 0:
            loss = loss + self.spectral_weight * spectral_loss(x_hat, x, top_db=self.top_db)
        if self.modulation_weight > 0:
            loss = loss + self.modulation_weight * modulation_loss(
                x_hat, x, taper=self.modulation_taper)
        return loss, pixel
