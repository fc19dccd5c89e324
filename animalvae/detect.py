"""Stage 3's PANNs scores: pure functions from frame-wise class probabilities to animal scores
and labels (arrays in and out).

Both backends give one score per 10 ms frame (:data:`animalvae.audio.FRAMES_PER_S` = 100, so
frame index / 100 is seconds): ``panns`` the max probability over the group's AudioSet classes
(:func:`frame_scores`), ``energy`` the frame's RMS level mapped to [0, 1]
(:func:`animalvae.audio.energy_scores`). :func:`animalvae.audio.best_window` then finds the
fixed-length window with the highest mean score; the window choice lives in the stage-neutral
:mod:`animalvae.audio` because stage 5 picks the loudest window of a user's file the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["n_frames", "frame_scores", "peak_frame", "top_labels"]

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
