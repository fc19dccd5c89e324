"""Audio helpers every stage shares: reading mono samples, resampling, padding, levels.

Stage-neutral on purpose: stage 2 measures levels, stage 3 reads and pads clips for the
detector, stage 4 reads segments for the spectrogram, and ``vae.py interpolate`` reads a user's
file the way stage 4 does, all through these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from .errors import ItemFailed

__all__ = ["read_mono", "resample", "pad_audio", "as_float32", "rms_dbfs", "wav_rms_dbfs"]


def read_mono(path: Path | str, *, max_frames: int | Callable[[int], int] | None = None,
              keep_int16: bool = False) -> tuple[np.ndarray, int, int]:
    """The samples of an audio file, channels averaged to mono.

    Parameters
    ----------
    path : Path
        Any file soundfile reads (WAV, FLAC, OGG, MP3, ...).
    max_frames : int, callable or None
        Read at most this many frames from the start, or ``max_frames(sample_rate)`` of them
        (when the count depends on the file's rate); None reads the whole file.
    keep_int16 : bool
        Return a mono PCM 16-bit file's samples as int16, exactly as stored (no scaling).

    Returns
    -------
    y : np.ndarray [shape=(n,), float32 in [-1, 1], or int16]
    sr : int
        The file's sample rate in Hz.
    total_frames : int
        Frames in the whole file (more than ``n`` when ``max_frames`` cut it).

    Raises
    ------
    ItemFailed
        Unreadable, empty, or NaN/Inf samples.
    """
    try:
        with sf.SoundFile(str(path)) as fh:
            sr, total = fh.samplerate, fh.frames
            limit = max_frames(sr) if callable(max_frames) else max_frames
            exact = keep_int16 and fh.subtype == "PCM_16" and fh.channels == 1
            data = fh.read(total if limit is None else min(total, limit), always_2d=True,
                           dtype="int16" if exact else "float32")     # (n, channels)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ItemFailed(f"cannot read audio: {' '.join(str(exc).split())}") from None
    if data.size == 0:
        raise ItemFailed("no samples")
    y = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if y.dtype != np.int16 and not np.isfinite(y).all():
        raise ItemFailed("non-finite samples (NaN or Inf)")
    return y, sr, total


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``y`` at ``target_sr`` (soxr, high quality); unchanged when the rates agree.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), float32]

    Returns
    -------
    np.ndarray [shape=(round(n * target_sr / orig_sr),), float32]
    """
    if orig_sr == target_sr:
        return y
    return soxr.resample(as_float32(y), orig_sr, target_sr, quality="HQ")


def pad_audio(y: np.ndarray, length: int, *, mode: Literal["zeros", "repeat"] = "zeros"
              ) -> np.ndarray:
    """``y`` padded at the end to ``length`` samples (returned unchanged when long enough).

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], any dtype
    length : int
    mode : {"zeros", "repeat"}
        ``zeros``: silence after the clip; ``repeat``: the clip again (looped).

    Returns
    -------
    np.ndarray [shape=(max(n, length),), same dtype]
    """
    if y.shape[0] >= length:
        return y
    if mode == "repeat":
        if y.shape[0] == 0:
            raise ValueError("cannot repeat an empty clip")
        return np.resize(y, length)  # np.resize tiles the data
    if mode != "zeros":
        raise ValueError(f"pad mode {mode!r} must be 'zeros' or 'repeat'")
    out = np.zeros(length, dtype=y.dtype)
    out[:y.shape[0]] = y
    return out


def as_float32(y: np.ndarray) -> np.ndarray:
    """PCM int16 -> float32 in [-1, 1) (exact: /32768); float input as float32."""
    if y.dtype == np.int16:
        return y.astype(np.float32) / 32768.0
    return y.astype(np.float32, copy=False)


def rms_dbfs(y: np.ndarray) -> float:
    """RMS level of a signal in dBFS (0 dBFS = RMS of a full-scale square wave).

    Parameters
    ----------
    y : np.ndarray [shape=(n,) or (n, channels), float in [-1, 1]]

    Returns
    -------
    float
        ``20 * log10(rms)``; ``-inf`` for digital silence or an empty signal; NaN or +inf
        when a sample is NaN or Inf (so callers can tell bad input from silence).
    """
    # float64 squares cannot overflow; np.square rather than a dot product, which would wake
    # OpenBLAS threads that spin on the cores the worker threads need.
    return _dbfs(float(np.sum(np.square(y, dtype=np.float64))), np.size(y))


def wav_rms_dbfs(path: Path, *, block_frames: int = 1 << 16) -> float:
    """RMS level (dBFS) of an audio file, read in blocks so long recordings fit in memory."""
    total, n = 0.0, 0
    for block in sf.blocks(str(path), blocksize=block_frames, dtype="float64"):
        total += float(np.sum(block * block))
        n += block.size
    return _dbfs(total, n)


def _dbfs(sum_squares: float, n: int) -> float:
    if n == 0 or sum_squares <= 0:
        return -math.inf
    return 10.0 * math.log10(sum_squares / n)
