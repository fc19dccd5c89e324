"""The adversarial second phase: the decoder fine-tuned against a spectrogram discriminator.

A VAE trained on a per-pixel loss decodes the average of what a code could mean: smooth blobs
instead of harmonic stacks and sharp onsets. As RAVE does (Caillon & Esling 2021), after the
VAE epochs the encoder is frozen (its codes, and so the prior fit on them, stay as they are)
and the decoder alone goes on training against a small patch discriminator that tells real
spectrograms from reconstructions, with three terms per step::

    d_loss = mean relu(1 - D(x, y)) + mean relu(1 + D(x_hat, y))             (hinge)
    g_loss = recon(x_hat, x) + adversarial_weight * (- mean D(x_hat, y))
             + feature_matching_weight * mean over layers of mean |D_l(x) - D_l(x_hat)|

``x_hat`` is the decoder's reconstruction of ``x`` through ``z = mu + sigma * eps`` of the
frozen encoder; ``recon`` is the VAE's reconstruction loss
(:class:`animalvae.vae.losses.ReconstructionLoss` of the ``train.*`` settings), which keeps
the decoder on the data while the other two sharpen it. The discriminator is conditional on the
group (a projection discriminator: Miyato & Koyama 2018) so that it judges whether a
spectrogram sounds like *its* group, and spectrally normalised so the hinge game stays stable.

The epochs of the phase (``train.adversarial_epochs``) are driven by
:func:`animalvae.vae.train.train`; this module holds the discriminator, the losses and one
step, and the phase's state for ``last.pth`` (:class:`AdversarialPhase`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import ConfigError
from .dataset import SpectrogramSet, epoch_order, iter_batches
from .losses import ReconstructionLoss
from .model import VAE, kl_divergence, reparameterize

__all__ = ["PatchDiscriminator", "AdversarialPhase", "discriminator_loss", "generator_loss",
           "adversarial_step", "run_phase"]

_ADAM_BETAS = (0.5, 0.9)    # the usual GAN setting (RAVE, HiFi-GAN): a short momentum memory


class PatchDiscriminator(nn.Module):
    """Spectrogram and group -> a map of real/fake logits, one per patch, and its features.

    Stride-2 4x4 spectrally normalised convolutions with LeakyReLU; each logit sees a patch of
    about ``4 * 2 ** len(channels)`` pixels on a side, so it judges local texture (harmonics,
    onsets) rather than the whole clip. The group enters as a projection: the last features'
    inner product with a learnt group embedding is added to each patch's logit.

    Parameters
    ----------
    channels : list of int
        Output channels of each stride-2 layer (``train.discriminator_channels``).
    n_groups : int
        Number of groups (>= 1).

    Examples
    --------
    >>> d = PatchDiscriminator([8, 16], n_groups=2)
    >>> logits, features = d(torch.rand(3, 1, 64, 32), torch.tensor([0, 1, 0]))
    >>> tuple(logits.shape), [tuple(f.shape) for f in features]
    ((3, 1, 16, 8), [(3, 8, 32, 16), (3, 16, 16, 8)])
    """

    def __init__(self, channels: list[int], n_groups: int):
        super().__init__()
        widths = [1, *channels]
        self.blocks = nn.ModuleList(
            nn.Sequential(spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)),
                          nn.LeakyReLU(0.2))
            for a, b in zip(widths[:-1], widths[1:]))
        self.to_logit = spectral_norm(nn.Conv2d(widths[-1], 1, 3, padding=1))
        self.embed = spectral_norm(nn.Embedding(n_groups, widths[-1]))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, H, W) spectrograms, (B,) group indices -> logits (B, 1, h, w), features.

        ``features`` holds each layer's output, (B, channels[i], H / 2**(i+1), W / 2**(i+1)).
        """
        features = []
        h = x
        for block in self.blocks:
            h = block(h)
            features.append(h)
        projection = (self.embed(y)[:, :, None, None] * h).sum(dim=1, keepdim=True)
        return self.to_logit(h) + projection, features


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge loss of the discriminator: mean relu(1 - real) + mean relu(1 + fake) (0-d)."""
    return torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()


def generator_loss(fake_logits: Tensor, real_features: list[Tensor],
                   fake_features: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The decoder's hinge term ``-mean D(x_hat)`` and feature matching (both 0-d).

    Feature matching is the mean absolute difference of the discriminator's features of the
    real spectrogram and of its reconstruction, averaged over layers: it asks for the same
    local texture at the same place, a denser signal than the logit alone.
    """
    adversarial = -fake_logits.mean()
    matching = torch.stack([(r.detach() - f).abs().mean()
                            for r, f in zip(real_features, fake_features)]).mean()
    return adversarial, matching


@dataclass
class AdversarialPhase:
    """The discriminator and the two optimisers of the phase, and how far it has come.

    Parameters
    ----------
    model : VAE
        Its decoder is trained; its encoder is left as it is (see :func:`adversarial_step`).
    channels : list of int
        ``train.discriminator_channels``.
    lr : float
        Adam learning rate of both the decoder and the discriminator.
    """

    model: VAE
    discriminator: PatchDiscriminator
    g_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer
    epoch: int = 0          # adversarial epochs done
    step: int = 0           # adversarial steps done

    @classmethod
    def create(cls, model: VAE, *, channels: list[int], lr: float, seed: int,
               device: torch.device) -> AdversarialPhase:
        """A fresh phase: a new discriminator on ``device``, new Adam optimisers.

        The discriminator's initial weights come from ``seed`` alone, not from the global
        RNG, whose state a resumed run restores from ``last.pth`` and must not consume.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            discriminator = PatchDiscriminator(list(channels), model.n_groups).to(device)
        g_optimizer = torch.optim.Adam(model.decoder.parameters(), lr=lr, betas=_ADAM_BETAS)
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=_ADAM_BETAS)
        return cls(model, discriminator, g_optimizer, d_optimizer)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for ``last.pth``: discriminator weights, optimiser states, progress."""
        return {"epoch": self.epoch, "step": self.step,
                "discriminator": {k: v.detach().cpu()
                                  for k, v in self.discriminator.state_dict().items()},
                "g_optimizer": self.g_optimizer.state_dict(),
                "d_optimizer": self.d_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], *, source: str) -> None:
        """Restore :meth:`state_dict`'s data (ConfigError naming ``source`` if it does not fit)."""
        try:
            self.discriminator.load_state_dict(state["discriminator"])
        except RuntimeError:
            raise ConfigError(f"--resume: the discriminator in {source} does not fit "
                              "train.discriminator_channels; resume with the same value, or "
                              "start over with --force") from None
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def adversarial_step(phase: AdversarialPhase, x: Tensor, y: Tensor, noise: Tensor, *,
                     reconstruction: ReconstructionLoss, adversarial_weight: float,
                     feature_matching_weight: float,
                     grad_clip: float = 0.0) -> dict[str, Tensor]:
    """One discriminator update, then one decoder update, on the batch ``x``.

    The encoder runs without gradients and in evaluation mode, so its weights and buffers are
    left exactly as they are.

    Parameters
    ----------
    phase : AdversarialPhase
    x : Tensor [shape=(B, 1, H, W), values in [0, 1]]
    y : Tensor [shape=(B,), int64]
    noise : Tensor [shape=(B, L)]
        The reparameterisation's ``eps``.
    reconstruction : ReconstructionLoss
        The VAE epochs' reconstruction term, here the decoder's anchor to the data.
    adversarial_weight, feature_matching_weight : float
        Weights of the hinge term and of feature matching against the reconstruction's 1.
    grad_clip : float
        Max gradient norm of the decoder's update; 0 = off.

    Returns
    -------
    dict of str to Tensor
        0-d detached ``d_loss``, ``g_loss``, ``recon_loss`` (the whole reconstruction term,
        spectral and modulation terms included), ``recon`` (its per-pixel part),
        ``adversarial``, ``matching``, ``kl`` (nats per sample, of the frozen encoder).
    """
    model, disc = phase.model, phase.discriminator
    model.encoder.eval()
    with torch.no_grad():
        mu, logvar = model.encoder(x, y)                           # (B, L), (B, L)
        z = reparameterize(mu, logvar, noise.to(mu))
    x_hat = model.decode(z, y)                                     # (B, 1, H, W)

    # the discriminator: real spectrograms vs the reconstructions as they are now
    disc.requires_grad_(True)
    real_logits, _ = disc(x, y)
    fake_logits, _ = disc(x_hat.detach(), y)
    d_loss = discriminator_loss(real_logits, fake_logits)
    phase.d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    phase.d_optimizer.step()

    # the decoder, against the updated discriminator (frozen for this half)
    disc.requires_grad_(False)
    with torch.no_grad():
        _, real_features = disc(x, y)
    fake_logits, fake_features = disc(x_hat, y)
    adversarial, matching = generator_loss(fake_logits, real_features, fake_features)
    rec_loss, recon = reconstruction(x_hat, x)
    g_loss = rec_loss + adversarial_weight * adversarial + feature_matching_weight * matching
    phase.g_optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), grad_clip)
    phase.g_optimizer.step()
    disc.requires_grad_(True)
    phase.step += 1
    kl = kl_divergence(mu, logvar).sum(dim=1).mean()
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
            "recon_loss": rec_loss.detach(), "recon": recon.detach(),
            "adversarial": adversarial.detach(), "matching": matching.detach(), "kl": kl}


def run_phase(phase: AdversarialPhase, data: SpectrogramSet, *, epochs: int, batch_size: int,
              seed: int, epoch_offset: int, reconstruction: ReconstructionLoss,
              adversarial_weight: float, feature_matching_weight: float, grad_clip: float,
              device: torch.device, on_epoch: Callable[[dict[str, float]], None],
              progress: bool = True) -> None:
    """Train ``phase`` from its ``epoch`` up to ``epochs`` adversarial epochs over ``data``.

    Batches follow :func:`animalvae.vae.dataset.epoch_order` of epoch ``epoch_offset +
    phase.epoch`` (so they go on from the VAE epochs' sequence), the noise comes from torch's
    global RNG: a resumed phase draws what an uninterrupted one would.

    Parameters
    ----------
    on_epoch : callable
        Called after each epoch (``phase.epoch`` already counts it) with the epoch's means
        of :func:`adversarial_step`'s figures; validates and saves.
    Other parameters are ``train.*`` values, passed on to :func:`adversarial_step`.

    Raises
    ------
    TrainingDiverged
        When a loss becomes NaN or Inf (the message names the adversarial epoch and step).
    """
    from tqdm.auto import tqdm

    from .train import TrainingDiverged  # here: train imports this module

    steps_per_epoch = math.ceil(len(data) / batch_size)
    bar = tqdm(total=epochs * steps_per_epoch, initial=phase.epoch * steps_per_epoch,
               desc="adversarial", unit="step", disable=not progress, dynamic_ncols=True)
    with bar:
        while phase.epoch < epochs:
            order = epoch_order(len(data), seed=seed, epoch=epoch_offset + phase.epoch)
            sums: dict[str, float] = {}
            for idx in iter_batches(len(data), batch_size):
                x, y = data.batch(order[idx], device)
                noise = torch.randn(len(idx), phase.model.config.latent_dim)     # (B, L)
                figures = adversarial_step(phase, x, y, noise, reconstruction=reconstruction,
                                           adversarial_weight=adversarial_weight,
                                           feature_matching_weight=feature_matching_weight,
                                           grad_clip=grad_clip)
                values = {k: float(v) for k, v in figures.items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingDiverged(
                        f"the adversarial phase diverged at its epoch {phase.epoch + 1}, step "
                        f"{phase.step}: {values}; lower train.adversarial_lr")
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                bar.update()
                bar.set_postfix(d=f"{values['d_loss']:.3f}", recon=f"{values['recon']:.4f}",
                                refresh=False)
            phase.epoch += 1
            on_epoch({k: v / len(data) for k, v in sums.items()})
