"""How good the images made from sounds are: retrieval, group accuracy, Fréchet distance.

Pure functions on arrays (no files, no model), used by ``vae.py evaluate-images``:

- :func:`retrieval_recall`: sound -> image retrieval on held-out pairs. Each sound's code
  ranks K candidate images' codes (its own frame among them) by Euclidean distance; R@k is
  the share of sounds whose own frame is among the k nearest. Chance is k / K.
- :func:`image_features`: a small, fixed description of a picture (an 8 x 8 thumbnail in RGB
  and a 4-bin histogram per channel). No pretrained network is needed (none can be fetched
  offline), so the figures rank models of one dataset; they are not comparable with
  Inception-based FID figures elsewhere.
- :func:`fit_group_classifier` / :func:`accuracy`: a logistic regression fit on the features of
  real training frames, which then labels real held-out frames (the ceiling) and the images
  generated from held-out sounds.
- :func:`frechet_distance`: between two feature sets (Heusel et al. 2017), each summarised by
  its mean and covariance.
- :func:`variety`: how much the images of one sound differ from one another, beside how much
  images of different sounds differ (mean absolute pixel difference, 0-255).
- :func:`group_only_recall`: the R@1 of a ranker that knows only each sound's group (it picks
  one candidate of that group at random): what retrieval must beat to show more than the group.
- :func:`edge_strength`: mean absolute difference of neighbouring pixels (0-255), the sharpness
  of a set of images; generated against real frames, below 1 is blur.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = ["retrieval_recall", "image_features", "fit_group_classifier", "accuracy",
           "frechet_distance", "candidate_sets", "variety", "group_only_recall",
           "edge_strength"]


def candidate_sets(n: int, k: int, *, seed: int) -> np.ndarray:
    """For each of ``n`` queries, ``min(k, n)`` candidate indices: its own first, the rest drawn.

    Returns
    -------
    np.ndarray [shape=(n, min(k, n)), dtype=int64]
    """
    k = min(k, n)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        rows.append(np.concatenate([[i], rng.choice(others, size=k - 1, replace=False)]))
    return np.stack(rows).astype(np.int64)


def retrieval_recall(queries: np.ndarray, keys: np.ndarray, candidates: np.ndarray,
                     ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """R@k of each query finding its own key (column 0 of ``candidates``) among the others.

    Parameters
    ----------
    queries, keys : np.ndarray [shape=(n, d)]
        Row i of ``keys`` belongs to row i of ``queries``.
    candidates : np.ndarray [shape=(n, K)]
        Indices into ``keys``; ``candidates[i, 0] == i``.
    ks : tuple of int

    Returns
    -------
    dict
        ``{k: share of queries whose own key ranks among the k nearest}``; a tie counts
        against the query (its own key must be strictly nearer than those it beats).
    """
    dist = np.linalg.norm(queries[:, None, :] - keys[candidates], axis=-1)     # (n, K)
    rank = (dist[:, 1:] <= dist[:, :1]).sum(axis=1)                            # 0 = first
    return {k: float(np.mean(rank < k)) for k in ks}


def image_features(images: np.ndarray) -> np.ndarray:
    """Features of RGB images: an 8 x 8 thumbnail (192 values) and 4-bin colour histograms.

    Parameters
    ----------
    images : np.ndarray [shape=(n, S, S, 3), uint8 or float in [0, 1]]
        S divisible by 8.

    Returns
    -------
    np.ndarray [shape=(n, 204), float64]
    """
    x = np.asarray(images, dtype=np.float64)
    if np.issubdtype(np.asarray(images).dtype, np.integer):
        x = x / 255.0
    n, s = x.shape[0], x.shape[1]
    thumb = x.reshape(n, 8, s // 8, 8, s // 8, 3).mean(axis=(2, 4)).reshape(n, -1)
    bins = np.minimum((x * 4).astype(np.int64), 3)                             # (n, S, S, 3)
    hist = np.stack([(bins[..., c] == b).mean(axis=(1, 2)) for c in range(3)
                     for b in range(4)], axis=1)                               # (n, 12)
    return np.concatenate([thumb, hist], axis=1)


def fit_group_classifier(features: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> Any:
    """A logistic regression (scikit-learn, L2) of group from :func:`image_features`.

    The features are not standardised: they share one scale (fractions in [0, 1]) already,
    and with a few training frames per group, standardising would blow up the features that
    barely vary among them, so that any change there (a generated image's blur) decides.
    """
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed).fit(features, labels)


def accuracy(classifier: Any, features: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows the classifier labels with their own group (NaN for no rows)."""
    return float(np.mean(classifier.predict(features) == labels)) if len(labels) else math.nan


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fit to two feature sets.

    ``|mu_a - mu_b|**2 + tr(C_a + C_b - 2 (C_a C_b)**0.5)``; 0 for identical sets.

    Parameters
    ----------
    a, b : np.ndarray [shape=(n_a, d), (n_b, d)]
        Each with at least 2 rows.
    """
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # Fewer rows than features make both covariances singular (always so for a few
        # held-out pairs): scipy warns, and the root is still the one the formula needs.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    root = np.real(root)  # rounding leaves a tiny imaginary part on near-singular products
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))
    return max(value, 0.0)


def group_only_recall(labels: np.ndarray, candidates: np.ndarray) -> float:
    """R@1 of knowing only the group: per query, 1 / (candidates of its own group), averaged.

    Parameters
    ----------
    labels : np.ndarray [shape=(n,), int]
        Group of each pair.
    candidates : np.ndarray [shape=(n, K)]
        As for :func:`retrieval_recall`.
    """
    same = labels[candidates] == labels[:, None]                                # (n, K)
    return float(np.mean(1.0 / same.sum(axis=1)))


def _as_255(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.integer) else x * 255.0


def variety(images: np.ndarray) -> tuple[float, float]:
    """Within-sound and across-sound variety of generated images, 0-255 scale.

    Parameters
    ----------
    images : np.ndarray [shape=(n_sounds, count, S, S, 3), uint8 or float in [0, 1]]

    Returns
    -------
    within : float
        Mean absolute pixel difference between two images of one sound (NaN when
        ``count`` < 2).
    across : float
        The same between image k of one sound and image k of another (NaN for one sound).
    """
    x = _as_255(images).reshape(images.shape[0], images.shape[1], -1)          # (n, c, P)
    n, count = x.shape[:2]
    within = [np.abs(x[:, a] - x[:, b]).mean() for a in range(count) for b in range(a + 1, count)]
    across = [np.abs(x[i] - x[j]).mean() for i in range(n) for j in range(i + 1, n)]
    return (float(np.mean(within)) if within else math.nan,
            float(np.mean(across)) if across else math.nan)


def edge_strength(images: np.ndarray) -> float:
    """Mean absolute difference of horizontally and vertically neighbouring pixels, 0-255.

    Parameters
    ----------
    images : np.ndarray [shape=(n, S, S, 3), uint8 or float in [0, 1]]
    """
    x = _as_255(images)
    return float((np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()) / 2)
