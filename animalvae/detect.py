"""Choosing the animal window: pure functions from frame scores to a segment (arrays in and out).

Both backends give one score per 10 ms frame (:data:`FRAMES_PER_S` = 100, so frame index / 100
is seconds): ``panns`` the max probability over the group's AudioSet classes
(:func:`frame_scores`), ``energy`` the frame's RMS level mapped to [0, 1]
(:func:`energy_scores`). :func:`best_window` then finds the fixed-length window with the
highest mean score in O(n) with a cumulative sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "FRAMES_PER_S", "ENERGY_FLOOR_DB", "n_frames", "frame_scores", "best_window", "peak_frame",
    "top_labels", "energy_scores", "window_samples",
]

FRAMES_PER_S = 100  # PANNs: hop 320 samples at 32 kHz; the energy backend uses the same rate
#: The energy backend maps [ENERGY_FLOOR_DB, 0] dBFS linearly onto scores [0, 1].
ENERGY_FLOOR_DB = -80.0


def n_frames(n_samples: int, *, hop_length: int) -> int:
    """Frames a centred STFT gives for ``n_samples``: ``1 + n_samples // hop_length``.

    This is how many rows of PANNs' ``framewise_output`` belong to a clip of ``n_samples``
    (at 32 kHz, ``hop_length=320``); rows past it come from the padding of a batch.
    """
    if n_samples < 0 or hop_length <= 0:
        raise ValueError(f"n_samples={n_samples} must be >= 0 and hop_length={hop_length} > 0")
    return 1 + n_samples // hop_length


def frame_scores(probs: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """The animal score of each frame: the max probability over ``classes``.

    Parameters
    ----------
    probs : np.ndarray [shape=(n_frames, n_classes)]
        Frame-wise class probabilities (PANNs' ``framewise_output`` of one clip).
    classes : sequence of int
        Column indices to take the max over; not empty.

    Returns
    -------
    np.ndarray [shape=(n_frames,), dtype=float32]
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (n_frames, n_classes), got shape {probs.shape}")
    if len(classes) == 0:
        raise ValueError("classes is empty: name at least one AudioSet class")
    return probs[:, np.asarray(classes, dtype=np.intp)].max(axis=1).astype(np.float32)


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


def peak_frame(scores: np.ndarray, start: int, window_frames: int) -> int:
    """The frame with the highest score inside ``[start, start + window_frames)``."""
    inside = np.asarray(scores)[start:start + window_frames]
    if inside.size == 0:
        raise ValueError(f"empty window: start={start}, window_frames={window_frames}, "
                         f"{len(scores)} frames")
    return start + int(np.argmax(inside))


def top_labels(probs: np.ndarray, labels: Sequence[str], *, k: int = 3) -> list[str]:
    """The ``k`` labels with the highest mean probability over the frames of ``probs``.

    Parameters
    ----------
    probs : np.ndarray [shape=(n_frames, n_classes)]
        Probabilities inside the chosen window.
    labels : sequence of str [length n_classes]
    k : int

    Returns
    -------
    list of str
        Best first.
    """
    mean = np.asarray(probs).mean(axis=0)
    order = np.argsort(-mean, kind="stable")[:k]
    return [labels[i] for i in order]


def window_samples(start_frame: int, *, segment_samples: int, n_samples: int, sr: int) -> int:
    """The first sample of a window that starts at ``start_frame``, kept inside the clip.

    Frames are 10 ms apart, so frame ``f`` starts at sample ``round(f * sr / 100)``; the
    last frame of a clip may start less than a window before its end, hence the clamp.
    """
    start = int(round(start_frame * sr / FRAMES_PER_S))
    return max(0, min(start, n_samples - segment_samples))


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
