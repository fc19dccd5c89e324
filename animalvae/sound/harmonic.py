"""Harmonic combs: the decoder draws a call's harmonics at a pitch it names, not as a blur.

A conv decoder trained with a per-pixel loss on a few hundred clips draws a meow's or a
howl's harmonic stack as a smooth band: it cannot tell from ``z`` *where* along frequency
each harmonic of an unseen pitch falls, so it draws the average of the places. This module
gives it the harmonic structure as a prior (as DDSP's harmonic synthesiser does in the
waveform domain: Engel et al. 2020), in the spectrogram's own terms:

- a dictionary of K combs, one per candidate harmonic spacing from :data:`MIN_SPACING` to
  :data:`MAX_SPACING` frequency rows, log-spaced (a pitch grid, as CREPE's classifier over
  f0 bins: Kim et al. 2018); comb k has a narrow peak at every multiple of its spacing;
- a pitch head that reads each time position of ``z`` and gives a distribution over the K
  spacings (:class:`PitchHead`);
- the decoder's output logits plus a non-negative gain (a second output channel: where and
  how strongly the harmonics show) times the comb of that distribution (:func:`expected_comb`,
  :func:`add_comb`);
- the pitch head is taught by :func:`pitch_loss`: cross-entropy against the spacing whose
  comb correlates best with the target spectrogram, in the frames where one clearly does
  (:func:`pitch_targets`). Without it the head never finds the pitch (the average of many
  combs is flat, so the loss gives it no direction).

Shapes: spectrograms (B, 1, H, W), combs (K, H), pitch distributions (B, K, W).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MIN_SPACING", "MAX_SPACING", "PEAK_HALF_WIDTH", "comb_spacings", "harmonic_combs",
           "PitchHead", "pitch_distribution", "expected_comb", "add_comb", "moving_average",
           "comb_correlation", "pitch_targets", "pitch_loss"]

#: Smallest and largest harmonic spacing, in frequency rows (at 32 kHz and n_fft 1024, a row
#: is 31.25 Hz: f0 from 125 Hz, a large dog's bark, to 4 kHz, a small bird's whistle; a bird
#: call above the grid would be given a comb of some harmonic spacing it does not have).
MIN_SPACING, MAX_SPACING = 4.0, 128.0
#: Half width at half height of each comb peak, rows: about a Hann window's main lobe.
PEAK_HALF_WIDTH = 1.5
#: Rows averaged to take out the spectral envelope before the combs are correlated with a
#: target, and the rows the correlation spans (the harmonics of animal calls lie below).
_ENVELOPE_ROWS, _TARGET_ROWS = 33, (2, 256)
#: Correlation of the best comb with a frame below which the frame has no clear pitch (the
#: best of many combs correlates that well with noise; docs/quality.md), and the rise over
#: which its weight goes from 0 to 1.
_CORRELATION_FLOOR, _CORRELATION_RISE = 0.25, 0.15


def comb_spacings(candidates: int) -> Tensor:
    """The K candidate harmonic spacings in rows, log-spaced over [MIN, MAX]: (K,)."""
    return torch.logspace(math.log10(MIN_SPACING), math.log10(MAX_SPACING), candidates)


def harmonic_combs(candidates: int, n_bins: int) -> Tensor:
    """The comb dictionary: (K, H), each comb zero-mean over its H rows.

    Comb k is ``exp(kappa_k * (cos(2 pi f / d_k) - 1))`` over rows ``f``: 1 at every multiple
    of the spacing ``d_k`` (row 0, 0 Hz, included), with ``kappa_k`` set so each peak is
    :data:`PEAK_HALF_WIDTH` rows wide at half height whatever the spacing.

    Examples
    --------
    >>> combs = harmonic_combs(8, 64)
    >>> tuple(combs.shape), bool(combs.mean(dim=1).abs().max() < 1e-6)
    ((8, 64), True)
    >>> int(harmonic_combs(1, 64)[0, 1:].argmax()) + 1     # first peak after 0 Hz: row 4
    4
    """
    spacing = comb_spacings(candidates)[:, None]                      # (K, 1)
    rows = torch.arange(n_bins, dtype=torch.float32)[None]            # (1, H)
    kappa = math.log(2.0) / (1.0 - torch.cos(2 * math.pi * PEAK_HALF_WIDTH / spacing))
    combs = torch.exp(kappa * (torch.cos(2 * math.pi * rows / spacing) - 1.0))
    return combs - combs.mean(dim=1, keepdim=True)


class PitchHead(nn.Module):
    """Each time position of the code (and group) -> logits over the K spacings.

    Two 1-D convolutions along time (kernel 3): the pitch at a position may depend on its
    neighbours' codes, as a glide does. (B, C, T) -> (B, K, T).
    """

    def __init__(self, in_channels: int, candidates: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv1d(hidden, candidates, 3, padding=1))

    def forward(self, codes: Tensor) -> Tensor:
        """(B, C, T) codes -> (B, K, T) logits."""
        return self.net(codes)


def pitch_distribution(logits: Tensor, n_frames: int, *, temperature: float = 1.0) -> Tensor:
    """Logits (B, K, T) -> probabilities (B, K, W) at the spectrogram's W frames (softmax over
    K at ``temperature``, then linear interpolation along time)."""
    probs = torch.softmax(logits / temperature, dim=1)
    return F.interpolate(probs, size=n_frames, mode="linear", align_corners=False)


def expected_comb(logits: Tensor, combs: Tensor, n_frames: int, *,
                  temperature: float = 1.0) -> Tensor:
    """The comb of the pitch distribution at each of the W frames: (B, 1, H, W).

    ``sum_k probs_k * comb_k`` with ``probs`` the :func:`pitch_distribution` of ``logits``
    (B, K, T). Taken at the T positions and then interpolated along time, which is the same
    (both steps are linear) at a T/W-th of the cost.
    """
    probs = torch.softmax(logits / temperature, dim=1)                  # (B, K, T)
    comb = torch.einsum("bkt,kh->bht", probs, combs)                    # (B, H, T)
    return F.interpolate(comb, size=n_frames, mode="linear", align_corners=False)[:, None]


def add_comb(logits: Tensor, gain: Tensor, comb: Tensor) -> Tensor:
    """The spectrogram in [0, 1] with ``comb`` drawn in at the given gain.

    Parameters
    ----------
    logits, gain : Tensor [shape=(B, 1, H, W)]
        The decoder's two output channels: the spectrogram's logits, and the comb's strength
        before a softplus (so it is never negative: a comb is never drawn upside down).
    comb : Tensor [shape=(B, 1, H, W)]
        The comb of each frame's pitch (:func:`expected_comb`).

    Returns
    -------
    Tensor [shape=(B, 1, H, W)]
        ``sigmoid(logits + softplus(gain) * comb)``.
    """
    return torch.sigmoid(logits + F.softplus(gain) * comb)


def moving_average(x: Tensor, width: int) -> Tensor:
    """The mean of each ``width`` (odd) neighbours along the last axis, fewer at the ends (as
    ``avg_pool1d`` with ``count_include_pad=False``), from a cumulative sum: O(1) per value
    whatever the width.

    Examples
    --------
    >>> moving_average(torch.tensor([0.0, 3.0, 6.0, 9.0]), 3)
    tensor([1.5000, 3.0000, 6.0000, 7.5000])
    """
    n, half = x.shape[-1], width // 2
    sums = F.pad(x.cumsum(dim=-1), (1, 0))                             # sums[i] = x[:i].sum()
    ends = torch.arange(n, device=x.device)
    lo, hi = (ends - half).clamp(min=0), (ends + half + 1).clamp(max=n)
    return (sums[..., hi] - sums[..., lo]) / (hi - lo).to(x.dtype)


def comb_correlation(x: Tensor, combs: Tensor) -> Tensor:
    """How well each comb fits each frame's fine structure: (B, 1, H, W) -> (B, K, W) in [-1, 1].

    Each frame's rows less their moving average over ``_ENVELOPE_ROWS`` rows (the envelope,
    so only the fine structure is compared) are correlated with every comb over the rows of
    ``_TARGET_ROWS``. A comb at twice the true spacing misses every other harmonic, and one at
    half of it also peaks in the valleys between them, so either scores lower than the true one.
    """
    # the rows the correlation spans, and the half envelope width above them that it reads
    frames = x[:, 0, :_TARGET_ROWS[1] + _ENVELOPE_ROWS // 2].transpose(1, 2)   # (B, W, H")
    fine = (frames - moving_average(frames, _ENVELOPE_ROWS))[..., slice(*_TARGET_ROWS)]
    basis = combs[:, slice(*_TARGET_ROWS)]                                     # (K, H')
    correlation = torch.einsum("bwh,kh->bkw", fine, basis)
    return correlation / (fine.norm(dim=2)[:, None].clamp(min=1e-6) * basis.norm(dim=1)[:, None])


def pitch_targets(x: Tensor, combs: Tensor) -> tuple[Tensor, Tensor]:
    """The spacing whose comb fits each frame of ``x`` best (:func:`comb_correlation`), and
    how clearly it does.

    Parameters
    ----------
    x : Tensor [shape=(B, 1, H, W), values in [0, 1]]
    combs : Tensor [shape=(K, H)]

    Returns
    -------
    index : Tensor [shape=(B, W), int64]
        The best comb per frame.
    weight : Tensor [shape=(B, W)]
        0 where the best correlation is at most ``_CORRELATION_FLOOR`` (noise, silence), 1
        from ``_CORRELATION_FLOOR + _CORRELATION_RISE`` up, linear between.
    """
    best = comb_correlation(x, combs).max(dim=1)
    weight = ((best.values - _CORRELATION_FLOOR) / _CORRELATION_RISE).clamp(0.0, 1.0)
    return best.indices, weight


def pitch_loss(probs: Tensor, x: Tensor, combs: Tensor) -> Tensor:
    """Cross-entropy (nats) of the pitch distribution ``probs`` (B, K, W) against
    :func:`pitch_targets` of ``x``: per clip, its frames weighted by their clarity (a clip
    whose frames add up to less than one clear frame counts that much less; 0 with none), then
    the mean over clips (0-d tensor). A mean of per-clip terms, as the other loss terms are, so
    a batch shared out over torchrun's processes gives the same gradient."""
    with torch.no_grad():
        index, weight = pitch_targets(x, combs)
    nll = -probs.clamp(min=1e-8).log().gather(1, index[:, None]).squeeze(1)   # (B, W)
    return ((nll * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)).mean()
