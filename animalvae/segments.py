"""Stage 4's input: one 3 s segment read as the spectrogram transform needs it.

Mono, at the spec's sample rate (soxr, high quality, when the file has another rate), padded or
cut to ``spec.n_samples``; bad input becomes :class:`ItemFailed` or :class:`ItemSkipped` with a
one-line reason. Used by stage 4's worker threads and by its round-trip check.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .audio import pad_audio, read_mono, resample, rms_dbfs
from .errors import ItemSkipped
from .spectrogram import SpectrogramSpec

__all__ = ["load_segment"]



def _frames_to_read(source_hz: int, spec: SpectrogramSpec) -> int:
    """Frames of a file at ``source_hz`` that give ``spec.n_samples`` after resampling.

    Beyond the frames that map onto the segment, a margin for the resampling filter: soxr's
    high-quality filter reaches less than 128 source frames (scaled by the rate ratio when
    downsampling) past a cut, so the output then matches resampling the whole file to ~1e-7.
    """
    if source_hz == spec.sample_rate:
        return spec.n_samples
    ratio = source_hz / spec.sample_rate
    return math.ceil(spec.n_samples * ratio) + math.ceil(256 * max(1.0, ratio))


def load_segment(path: Path, spec: SpectrogramSpec, *, silence_dbfs: float = -60.0,
                 pad: str = "zeros") -> tuple[np.ndarray, dict[str, Any]]:
    """Read one segment as the transform needs it: mono, ``spec.sample_rate``, fixed length.

    Only the start of the file that the segment spans is read (plus a margin for resampling).

    Parameters
    ----------
    path : Path
        Any file soundfile reads (WAV, FLAC, ...).
    spec : SpectrogramSpec
    silence_dbfs : float
        RMS level (dBFS) below which the segment counts as silent.
    pad : {"zeros", "repeat"}
        How a short segment is brought to ``spec.n_samples``: zeros after it, or the segment
        looped (:func:`animalvae.audio.pad_audio`).

    Returns
    -------
    y : np.ndarray [shape=(spec.n_samples,), float32]
        Padded or cut to ``spec.n_samples``.
    info : dict
        ``rms_dbfs``, ``padded_s``, ``source_rate`` for the manifest.

    Raises
    ------
    ItemFailed
        Unreadable, empty, or NaN/Inf samples.
    ItemSkipped
        Silent (RMS below ``silence_dbfs``, or all zeros); records ``rms_dbfs``.
    """
    y, rate, _ = read_mono(path, max_frames=lambda sr: _frames_to_read(sr, spec))
    y = resample(y, rate, spec.sample_rate)
    y = y[:spec.n_samples]
    rms = round(rms_dbfs(y), 2)   # of what is kept, before any padding
    if rms < silence_dbfs:   # the rounded level: the one the row records
        raise ItemSkipped(f"silent ({rms:.2f} dBFS)", rms_dbfs=rms)
    missing = spec.n_samples - y.shape[0]
    y = pad_audio(y, spec.n_samples, mode=pad)
    info = {"rms_dbfs": rms, "padded_s": round(max(missing, 0) / spec.sample_rate, 4),
            "source_rate": rate}
    return np.ascontiguousarray(y, dtype=np.float32), info
