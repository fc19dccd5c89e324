"""Audio helpers every stage shares: reading mono samples, resampling, padding, levels, and the
loudest window of a clip.

Stage-neutral on purpose: stage 2 measures levels, stage 3 reads and pads clips for the
detector and chooses its window, stage 4 reads segments for the spectrogram, ``vae.py
interpolate`` reads a user's file the way stage 4 does, and ``vae.py sound-to-image`` cuts a
user's file to its loudest window the way stage 3's energy backend does, all through these
functions.
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

__all__ = ["read_mono", "resample", "pad_audio", "as_float32", "rms_dbfs", "wav_rms_dbfs",
           "FRAMES_PER_S", "ENERGY_FLOOR_DB", "energy_scores", "best_window", "window_samples"]

FRAMES_PER_S = 100  # PANNs: hop 320 samples at 32 kHz; the energy scores use the same rate
#: :func:`energy_scores` maps [ENERGY_FLOOR_DB, 0] dBFS linearly onto scores [0, 1].
ENERGY_FLOOR_DB = -80.0


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


# --------------------------------------------------------------------------------------------
# The loudest (best-scoring) window: frame scores at FRAMES_PER_S, the window with the highest
# mean, its first sample (stage 3's detector and stage 5's sound -> image both choose so)
# --------------------------------------------------------------------------------------------

def energy_scores(y: np.ndarray, sr: int, *, floor_db: float = ENERGY_FLOOR_DB) -> np.ndarray:
    """Frame RMS level as a score: 100 frames/s, ``floor_db`` dBFS -> 0, 0 dBFS -> 1.

    Frame ``i`` covers samples ``[floor(i * sr / 100), floor((i + 1) * sr / 100))``, so any
    sample rate works. Not animal-aware: the loudest window wins, whatever made the sound.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Audio, float in [-1, 1] (integer PCM is scaled to that range).
    sr : int >= 100
        Sample rate, Hz.
    floor_db : float < 0
        Level (dBFS, RMS) that scores 0; a full-scale sine (-3 dBFS) scores about 0.96.

    Returns
    -------
    np.ndarray [shape=(ceil(n * 100 / sr),), dtype=float32], values in [0, 1]
    """
    if sr < FRAMES_PER_S or floor_db >= 0:
        raise ValueError(f"sr={sr} must be >= {FRAMES_PER_S} and floor_db={floor_db} < 0")
    if np.issubdtype(y.dtype, np.integer):
        y = y.astype(np.float64) / -float(np.iinfo(y.dtype).min)
    n = y.shape[0]
    count = max(1, int(np.ceil(n * FRAMES_PER_S / sr)))
    # Frame starts, strictly increasing and < n (count is the ceiling), as reduceat needs.
    bounds = np.arange(count, dtype=np.int64) * sr // FRAMES_PER_S
    power = np.square(y, dtype=np.float64)
    sums = np.add.reduceat(power, bounds) if n else np.zeros(count)
    lengths = np.diff(np.append(bounds, n))
    mean_power = np.divide(sums, lengths, out=np.zeros(count), where=lengths > 0)
    level_db = 10.0 * np.log10(np.maximum(mean_power, 1e-12))
    return np.clip((level_db - floor_db) / -floor_db, 0.0, 1.0).astype(np.float32)


def best_window(scores: np.ndarray, *, window_frames: int) -> tuple[int, float]:
    """The start of the ``window_frames``-long window with the highest mean score.

    Parameters
    ----------
    scores : np.ndarray [shape=(n_frames,)]
        One score per frame, finite.
    window_frames : int > 0
        Window length in frames. When ``n_frames`` is shorter, the whole clip is the window
        (start 0, mean over the frames there are).

    Returns
    -------
    start : int
        First frame of the window; the earliest one on ties.
    mean : float
        Mean score inside the window.
    """
    if window_frames <= 0:
        raise ValueError(f"window_frames={window_frames} must be > 0")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    if scores.size <= window_frames:
        return 0, float(scores.mean())
    cumsum = np.concatenate([[0.0], np.cumsum(scores)])
    sums = cumsum[window_frames:] - cumsum[:-window_frames]  # sums[i] = scores[i:i+w].sum()
    start = int(np.argmax(sums))
    return start, float(sums[start] / window_frames)


def window_samples(start_frame: int, *, segment_samples: int, n_samples: int, sr: int) -> int:
    """The first sample of a window that starts at ``start_frame``, kept inside the clip.

    Frames are 10 ms apart, so frame ``f`` starts at sample ``round(f * sr / 100)``; the
    last frame of a clip may start less than a window before its end, hence the clamp.
    """
    start = int(round(start_frame * sr / FRAMES_PER_S))
    return max(0, min(start, n_samples - segment_samples))
