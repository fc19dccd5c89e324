"""A prior that matches the codes: a Gaussian mixture per group, fit after training.

A VAE's posterior codes drift away from N(0, I) as the reconstruction improves, so z ~ N(0, I)
lands where the decoder has seen little data (Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders"; Dai & Wipf 2019). After training, the posterior means of the
training clips are fit again, group by group (``train.prior_fit``):

- ``kde`` (:func:`fit_kde`): a kernel density estimate (Parzen 1962): one component per
  training code (up to :data:`MAX_KERNELS` per group), each a Gaussian of
  ``train.kde_bandwidth`` times the group's per-dimension spread of codes. A sample is a
  training code moved by that much noise: every kind of call the group has keeps its own
  place, none is averaged with its neighbours;
- ``gmm`` (:func:`fit_gmm`): a diagonal Gaussian mixture of ``train.gmm_components``
  components fit by EM. With a few dozen codes per group each component is the mean of a
  handful of codes, and a decoded mean is a more typical, less varied sound;
- ``none``: no prior is stored; ``generate`` samples N(0, I).

The fit is part of the run's sampler (:mod:`animalvae.sound.sampler`): at the end of
``vae.py train`` and on request (``vae.py fit-sampler``). ``generate`` samples the mixture by
default (``generate.sample_prior: mixture``) and N(0, I) on request (``normal``) or when there is
none (``train.prior_fit: none``).

Both fits are plain tensors in ``sampler.pth`` under ``"prior"`` (loadable with
``torch.load(weights_only=True)``)::

    weights   (G, K)     mixture weights per group; unused components have weight 0
    means     (G, K, L)
    variances (G, K, L)  diagonal covariances
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import TrainConfig

__all__ = ["fit_gmm", "fit_kde", "fit_prior", "spread_components", "mixture_centres",
           "per_label", "sample_prior"]

_REG_COVAR = 1e-3   # added to each variance: keeps a component of near-identical codes sane
#: At most this many kernels per group (a seeded random choice of its codes), so that
#: ``sampler.pth`` stays small on a large dataset: 512 codes of 256 values, means and variances,
#: are 1 MiB per group.
MAX_KERNELS = 512


def _as_tensors(weights: np.ndarray, means: np.ndarray,
                variances: np.ndarray) -> dict[str, Tensor]:
    return {"weights": torch.tensor(weights, dtype=torch.float32),
            "means": torch.tensor(means, dtype=torch.float32),
            "variances": torch.tensor(variances, dtype=torch.float32)}


def fit_kde(codes: np.ndarray, labels: np.ndarray, *, n_groups: int, bandwidth: float,
            seed: int = 0) -> dict[str, Tensor]:
    """A kernel density estimate of each group's codes, as a Gaussian mixture.

    Parameters
    ----------
    codes : np.ndarray [shape=(N, L)]
        Posterior means of the training clips.
    labels : np.ndarray [shape=(N,), int]
        Group index of each code, in ``[0, n_groups)``.
    n_groups : int
    bandwidth : float
        The kernels' standard deviation, per dimension, as a multiple of that dimension's
        standard deviation over the group's codes (> 0).
    seed : int
        Picks the kernels of a group with more than :data:`MAX_KERNELS` codes.

    Returns
    -------
    dict of Tensor
        ``weights (G, K)``, ``means (G, K, L)``, ``variances (G, K, L)``, float32, with K the
        largest group's number of kernels: each group's codes (at most :data:`MAX_KERNELS`)
        with equal weights, the rest weight 0. A group without codes gets N(0, I) (one
        component).

    Examples
    --------
    >>> codes = np.array([[0.0, 0.0], [2.0, 4.0], [9.0, 9.0]])
    >>> prior = fit_kde(codes, np.array([0, 0, 1]), n_groups=2, bandwidth=0.5)
    >>> prior["weights"].tolist(), prior["variances"][0, 0].round(decimals=2).tolist()
    ([[0.5, 0.5], [1.0, 0.0]], [0.25, 1.0])
    """
    codes = np.asarray(codes, dtype=np.float64)
    size = min(MAX_KERNELS, max(1, *(int((labels == g).sum()) for g in range(n_groups))))
    weights = np.zeros((n_groups, size))
    means = np.zeros((n_groups, size, codes.shape[1]))
    variances = np.ones((n_groups, size, codes.shape[1]))
    rng = np.random.default_rng(seed)
    for g in range(n_groups):
        x = codes[labels == g]
        if len(x) == 0:
            weights[g, 0] = 1.0
            continue
        kernels = x if len(x) <= size else x[np.sort(rng.choice(len(x), size, replace=False))]
        n = len(kernels)
        weights[g, :n] = 1.0 / n
        means[g, :n] = kernels
        variances[g, :n] = (bandwidth * x.std(axis=0)) ** 2 + _REG_COVAR
    return _as_tensors(weights, means, variances)


def fit_gmm(codes: np.ndarray, labels: np.ndarray, *, n_groups: int, components: int,
            seed: int) -> dict[str, Tensor]:
    """Fit a diagonal Gaussian mixture to each group's codes by EM.

    Parameters
    ----------
    codes : np.ndarray [shape=(N, L)]
        Posterior means of the training clips.
    labels : np.ndarray [shape=(N,), int]
        Group index of each code, in ``[0, n_groups)``.
    n_groups : int
    components : int
        Components per group (>= 1); a group with fewer codes gets one per code.
    seed : int
        Seeds the mixture's k-means initialisation: the same codes give the same prior.

    Returns
    -------
    dict of Tensor
        ``weights (G, K)``, ``means (G, K, L)``, ``variances (G, K, L)``, float32. A group
        without codes gets N(0, I) (one component).
    """
    from sklearn.mixture import GaussianMixture

    codes = np.asarray(codes, dtype=np.float64)
    dim = codes.shape[1]
    weights = np.zeros((n_groups, components))
    means = np.zeros((n_groups, components, dim))
    variances = np.ones((n_groups, components, dim))
    for g in range(n_groups):
        x = codes[labels == g]
        if len(x) == 0:
            weights[g, 0] = 1.0
            continue
        k = min(components, len(x))
        if k == 1:
            weights[g, 0], means[g, 0] = 1.0, x.mean(axis=0)
            variances[g, 0] = x.var(axis=0) + _REG_COVAR
            continue
        gmm = GaussianMixture(k, covariance_type="diag", reg_covar=_REG_COVAR,
                              random_state=seed, n_init=1).fit(x)
        weights[g, :k], means[g, :k], variances[g, :k] = (gmm.weights_, gmm.means_,
                                                          gmm.covariances_)
    return _as_tensors(weights, means, variances)


def fit_prior(codes: np.ndarray, labels: np.ndarray, *, n_groups: int,
              train: TrainConfig) -> dict[str, Tensor]:
    """The prior ``train.prior_fit`` names (``kde`` or ``gmm``), fit on the codes."""
    if train.prior_fit == "kde":
        return fit_kde(codes, labels, n_groups=n_groups, bandwidth=train.kde_bandwidth,
                       seed=train.seed)
    return fit_gmm(codes, labels, n_groups=n_groups, components=train.gmm_components,
                   seed=train.seed)


def spread_components(weights: Tensor, n: int, *, generator: torch.Generator) -> Tensor:
    """``n`` component indices for a mixture of ``weights``, spread as evenly as they allow.

    Systematic resampling (Kitagawa 1996): one uniform offset places ``n`` evenly spaced
    points on the weights' cumulative sum, so component k is picked ``floor(n * w_k)`` or
    ``ceil(n * w_k)`` times, returned in random order. Independent draws, by chance, pick
    some training codes of a kernel density prior twice and others never: a batch of samples
    then holds near-copies and misses kinds of call that the group has.

    Parameters
    ----------
    weights : Tensor [shape=(K,), >= 0, not all 0]
    n : int
    generator : torch.Generator
        A CPU generator.

    Returns
    -------
    Tensor [shape=(n,), int64]

    Raises
    ------
    ValueError
        When the weights do not add up to a finite positive total.

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(0)
    >>> sorted(spread_components(torch.tensor([0.5, 0.25, 0.25]), 8, generator=gen).tolist())
    [0, 0, 0, 0, 1, 1, 2, 2]
    """
    cdf = weights.double().cumsum(0)
    if not (torch.isfinite(cdf[-1]) and cdf[-1] > 0):
        raise ValueError(f"mixture weights must add up to a finite positive total, not "
                         f"{float(cdf[-1])}")
    offset = torch.rand(1, generator=generator, dtype=torch.float64)
    points = (torch.arange(n, dtype=torch.float64) + offset) / n * cdf[-1]
    picked = torch.searchsorted(cdf, points, right=True).clamp(max=len(weights) - 1)
    return picked[torch.randperm(n, generator=generator)]


def mixture_centres(prior: dict[str, Tensor]) -> Tensor:
    """Each group's mixture mean, the weighted mean of its components: (G, L).

    Examples
    --------
    >>> prior = fit_kde(np.array([[0.0], [2.0], [9.0]]), np.array([0, 0, 1]), n_groups=2,
    ...                 bandwidth=0.5)
    >>> mixture_centres(prior).tolist()
    [[1.0], [9.0]]
    """
    weights = prior["weights"] / prior["weights"].sum(dim=1, keepdim=True)     # (G, K)
    return (weights[:, :, None] * prior["means"]).sum(dim=1)


def per_label(spread: float | Tensor, labels: Tensor) -> float | Tensor:
    """A spread as a factor for ``(B, L)`` draws: a number stays one; a per-group ``(G,)``
    tensor becomes each label's own, ``(B, 1)`` on the CPU."""
    if isinstance(spread, Tensor):
        return spread.float().cpu()[labels, None]
    return spread


def sample_prior(prior: dict[str, Tensor], labels: Tensor, *, generator: torch.Generator,
                 temperature: float = 1.0, spread: float | Tensor = 1.0) -> Tensor:
    """Draw one z per label from its group's mixture.

    The components of each group's draws are spread evenly over its weights
    (:func:`spread_components`); each draw is then its component's mean plus Gaussian noise,
    and its distance from the group's centre (:func:`mixture_centres`) is scaled by
    ``spread``: the truncation trick (Brock et al. 2019; Karras et al. 2019, StyleGAN's psi)
    run the other way. A decoder trained on a reconstruction loss pulls every code towards the
    group's typical sound, so its samples vary less than real clips do; ``spread > 1`` moves
    them out again, ``< 1`` trades variety for typical sounds.

    Parameters
    ----------
    prior : dict of Tensor
        As :func:`fit_prior` returns.
    labels : Tensor [shape=(B,), int64, on the CPU]
    generator : torch.Generator
        A CPU generator: the same draws on every device.
    temperature : float
        Scales each component's standard deviation (1 = the fit).
    spread : float or Tensor [shape=(G,)]
        Scales each draw's distance from its group's centre (1 = the mixture as fit); a
        tensor gives each group its own.

    Returns
    -------
    Tensor [shape=(B, L), float32, on the CPU]
    """
    k = torch.zeros(len(labels), dtype=torch.long)                           # (B,)
    for group in labels.unique().tolist():
        mine = labels == group
        k[mine] = spread_components(prior["weights"][group], int(mine.sum()),
                                    generator=generator)
    mean = prior["means"][labels, k]                                         # (B, L)
    std = prior["variances"][labels, k].sqrt()                               # (B, L)
    z = mean + temperature * std * torch.randn(mean.shape, generator=generator)
    centre = mixture_centres(prior)[labels]                                   # (B, L)
    return z + (per_label(spread, labels) - 1.0) * (z - centre)     # spread 1: z exactly
