"""Drawing spectrograms with real axes (seconds, Hz), shared by stage 4's preview and stage 5.

matplotlib's object API only (``Figure``, no pyplot): no global state, no GUI backend.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .spectrogram import SpectrogramSpec

__all__ = ["show_spectrogram"]


def show_spectrogram(ax: Any, x: np.ndarray, spec: SpectrogramSpec, *,
                     xlabel: bool = True, ylabel: bool = True) -> Any:
    """Draw one normalised spectrogram on ``ax`` with time in seconds and frequency in Hz.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    x : np.ndarray [shape=(n_bins, n_frames), values in [0, 1]]
    spec : SpectrogramSpec
        Gives the time and frequency of each pixel (mel bands are labelled in Hz).
    xlabel, ylabel : bool
        Label the axes (off for inner panels of a grid).

    Returns
    -------
    matplotlib.image.AxesImage
        For a colour bar.
    """
    # Pixel centres on frame centres (t * hop / sr) and bin centres (k * sr / n_fft, or mel
    # band k).
    frame_s, bin_hz = spec.hop_length / spec.sample_rate, spec.sample_rate / spec.n_fft
    low, high = (-bin_hz / 2, (spec.n_bins - 0.5) * bin_hz) if spec.kind == "stft" \
        else (-0.5, spec.n_bins - 0.5)
    image = ax.imshow(x, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
                      extent=(-frame_s / 2, (spec.n_frames - 0.5) * frame_s, low, high),
                      interpolation="nearest")
    if spec.kind == "mel":
        _mel_ticks(ax, spec)
    ax.tick_params(labelsize=7)
    if xlabel:
        ax.set_xlabel("time (s)", fontsize=8)
    if ylabel:
        ax.set_ylabel("frequency (Hz)", fontsize=8)
    return image


def _mel_ticks(ax: Any, spec: SpectrogramSpec) -> None:
    # Label the mel axis in Hz. Band k peaks at mel point k + 1 of n_mels + 2 evenly spaced
    # from 0 to the Nyquist frequency's mel (HTK scale, as the filterbank).
    def mel(f_hz: float) -> float:
        return 2595.0 * math.log10(1.0 + f_hz / 700.0)

    step = mel(spec.sample_rate / 2) / (spec.n_bins + 1)
    ticks_hz = [f for f in (100, 500, 1000, 2000, 4000, 8000, 16000, 32000)
                if mel(f) / step - 1 <= spec.n_bins - 0.5]
    positions = [mel(f) / step - 1 for f in ticks_hz]
    ax.set_yticks(positions, [f"{f:g}" for f in ticks_hz])
