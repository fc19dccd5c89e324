"""A prior that matches the codes: a Gaussian mixture per group, fit after training.

A VAE's posterior codes drift away from N(0, I) as the reconstruction improves, so z ~ N(0, I)
lands where the decoder has seen little data (Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders"; Dai & Wipf 2019). After training, the posterior means of the
training clips are fit, group by group, with a diagonal Gaussian mixture of
``train.prior_components`` components; ``generate`` samples from it by default
(``generate.prior: mixture``) and from N(0, I) on request (``normal``) or when a ``model.pth``
has no mixture (trained before it existed).

The mixture is plain tensors in ``model.pth`` under ``"prior"`` (still loadable with
``torch.load(weights_only=True)``)::

    weights   (G, K)     mixture weights per group; unused components have weight 0
    means     (G, K, L)
    variances (G, K, L)  diagonal covariances
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checkpoint import save_checkpoint
from .dataset import SpectrogramSet, iter_batches
from .model import VAE, read_checkpoint

__all__ = ["fit_prior", "sample_prior", "encode_means", "add_prior_to_checkpoint", "PRIOR"]

log = logging.getLogger(__name__)

#: The key of the mixture in ``model.pth``.
PRIOR = "prior"
_REG_COVAR = 1e-3   # added to each variance: keeps a component of near-identical codes sane


def fit_prior(codes: np.ndarray, labels: np.ndarray, *, n_groups: int, components: int,
              seed: int) -> dict[str, Tensor]:
    """Fit a diagonal Gaussian mixture to each group's codes.

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
    return {"weights": torch.tensor(weights, dtype=torch.float32),
            "means": torch.tensor(means, dtype=torch.float32),
            "variances": torch.tensor(variances, dtype=torch.float32)}


def sample_prior(prior: dict[str, Tensor], labels: Tensor, *, generator: torch.Generator,
                 temperature: float = 1.0) -> Tensor:
    """Draw one z per label from its group's mixture.

    Parameters
    ----------
    prior : dict of Tensor
        As :func:`fit_prior` returns.
    labels : Tensor [shape=(B,), int64, on the CPU]
    generator : torch.Generator
        A CPU generator: the same draws on every device.
    temperature : float
        Scales each component's standard deviation (1 = the fit).

    Returns
    -------
    Tensor [shape=(B, L), float32, on the CPU]
    """
    weights = prior["weights"][labels]                                       # (B, K)
    k = torch.multinomial(weights, 1, generator=generator)[:, 0]             # (B,)
    mean = prior["means"][labels, k]                                         # (B, L)
    std = prior["variances"][labels, k].sqrt()                               # (B, L)
    return mean + temperature * std * torch.randn(mean.shape, generator=generator)


@torch.no_grad()
def encode_means(model: VAE, data: SpectrogramSet, *, device: torch.device,
                 batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of every clip in ``data``: ``(N, L)`` codes and ``(N,)`` labels."""
    model.eval()
    codes, labels = [], []
    for idx in iter_batches(len(data), batch_size):
        x, y = data.batch(idx, device)
        mu, _ = model.encode(x, y)
        codes.append(mu.float().cpu().numpy())
        labels.append(y.cpu().numpy())
    return np.concatenate(codes), np.concatenate(labels)


def add_prior_to_checkpoint(path: Path, model: VAE, data: SpectrogramSet, *, components: int,
                            seed: int, device: torch.device) -> None:
    """Fit the mixture on ``data`` with the weights in ``path`` and store it there.

    ``model`` is only a vessel of the right architecture: the weights of ``path`` (the best
    epoch) are loaded into it first. The file is rewritten atomically.
    """
    payload = read_checkpoint(path)
    model.load_state_dict(payload["model"])
    codes, labels = encode_means(model, data, device=device)
    payload[PRIOR] = fit_prior(codes, labels, n_groups=model.n_groups, components=components,
                               seed=seed)
    save_checkpoint(path, payload)
    log.info("prior: a %d-component Gaussian mixture per group fit on %d training codes -> %s",
             components, len(codes), path)
