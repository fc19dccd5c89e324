"""The sampler: everything between a trained VAE and a spectrogram to listen to.

One object, fit once after training from the training clips under the trained weights
(:func:`fit_sampler`: ``vae.py train`` ends with it, ``vae.py fit-sampler`` does it again) and
saved beside ``model.pth`` as ``sampler.pth`` (plain tensors and the settings it was fit
under). Every command that decodes goes through it, so generate, reconstruct, interpolate
and evaluate finish the decoder's output the same way:

- **codes** (:meth:`Sampler.latents`): each group's prior over its training codes
  (:mod:`animalvae.sound.prior`, ``train.prior_fit``), scaled by ``generate.sample_temperature`` and
  moved from the group's centre by its spread (:mod:`animalvae.sound.spread`,
  ``generate.spread``); N(0, I) with ``generate.sample_prior: normal`` or ``train.prior_fit: none``;
- **the decoder's output, finished** (:meth:`Sampler.decode`): the comb drawn at
  ``generate.sample_pitch_temperature`` for sampled codes, the peak restored
  (``generate.restore_peak``), and the texture noise (:mod:`animalvae.sound.texture`) added at
  ``generate.texture``.

The fit depends on the settings :func:`fit_settings` lists; when the config in effect
differs from those in ``sampler.pth``, :func:`load_sampler` fits it again (one line says
so) and saves it, or refuses when the training clips it needs are gone.

``sampler.pth`` is plain data tagged ``format: animalvae.sampler/<version>``
(:mod:`animalvae.training.file_format`). Version 2, written now: ``settings`` (exactly
:func:`fit_settings` of the config it was fit under; ``{"legacy": True}`` for a sampler carried
over from a version-1 ``model.pth``, whose settings were not kept), ``prior``, ``spread`` and
``texture`` (the :class:`Sampler` attributes). Version 1 was the same, except that its settings
used some keys' earlier names and always held ``generate.spread``, a number included, which a
fit does not depend on.
:func:`upgrade_sampler` is the one function that knows this; a run folder without
``sampler.pth`` whose ``model.pth`` held the sampler (version 1) uses the one that
:func:`animalvae.sound.model.upgrade_checkpoint` carried over, as it is.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import RENAMED_KEYS, Config
from ..device import device_of
from ..errors import ConfigError
from ..training.checkpoint import save_checkpoint
from ..training.dataset import (
    SpectrogramSet,
    first_per_group,
    iter_batches,
    read_split,
    require_sources,
)
from ..training.file_format import format_tag, read_payload, require_keys, upgrade
from ..training.run_folder import MODEL, SAMPLER
from .model import VAE, TrainedModel, read_checkpoint
from .prior import fit_prior, per_label, sample_prior
from .texture import TextureFit, add_texture, texture_tables

__all__ = ["Sampler", "fit_settings", "fit_sampler", "save_sampler", "load_sampler",
           "refit_sampler", "upgrade_sampler", "restore_peak", "FORMAT", "VERSION", "MAX_CLIPS"]

log = logging.getLogger(__name__)

#: The version of ``sampler.pth`` this module writes (module docstring).
VERSION = 2
FORMAT = format_tag("sampler", VERSION)
#: Training clips per group the texture and the spread are fit on: a 16 x 16 table per group
#: needs far fewer pixels than that many clips hold, and a large dataset should not wait on
#: the decoding.
MAX_CLIPS = 256


def restore_peak(x: Tensor) -> Tensor:
    """Divide each decoded spectrogram by its maximum: (..., H, W) -> the same, peak 1.

    Every stage-4 spectrogram has its loudest value at exactly 1 (0 dB re the clip's peak),
    and the inverse maps ``x`` to dB linearly (``(x - 1) * top_db``), so dividing by the peak
    stretches the dB range below it. A decoder trained on a per-pixel loss compresses that
    range (peaks low, quiet parts too loud next to them, which is how a blurred spectrogram
    sounds); this undoes the compression (``generate.restore_peak``). An all-zero
    spectrogram stays zero.
    """
    return x / x.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-6)


def fit_settings(config: Config) -> dict[str, Any]:
    """The settings a sampler's fit depends on, by their config keys.

    The prior depends on ``train.prior_fit`` with its ``kde_bandwidth`` or ``gmm_components``
    (and ``train.seed``, which picks the kernels of a large group), the texture on how an
    encoded clip is decoded (``generate.restore_peak``), and a fitted spread (``generate.spread:
    fit``) on how samples are drawn and decoded; a number for ``generate.spread`` is applied as
    it is and needs no fit.
    """
    tc, gc = config.train, config.generate
    settings: dict[str, Any] = {"train.prior_fit": tc.prior_fit, "train.seed": tc.seed,
                                "generate.restore_peak": gc.restore_peak}
    if tc.prior_fit == "kde":
        settings["train.kde_bandwidth"] = tc.kde_bandwidth
    elif tc.prior_fit == "gmm":
        settings["train.gmm_components"] = tc.gmm_components
    if gc.spread == "fit" and tc.prior_fit != "none":
        settings.update({"generate.spread": "fit",
                         "generate.sample_temperature": gc.sample_temperature,
                         "generate.sample_pitch_temperature": gc.sample_pitch_temperature,
                         "generate.texture": gc.texture, "generate.seed": gc.seed})
    return settings


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A run's prior over codes and the finishing of its decoder's output.

    Attributes
    ----------
    settings : dict
        :func:`fit_settings` of the config it was fit under.
    prior : dict of Tensor or None
        ``weights (G, K)``, ``means (G, K, L)``, ``variances (G, K, L)``
        (:func:`animalvae.sound.prior.fit_prior`); None: codes are drawn from N(0, I).
    spread : Tensor [shape=(G,)] or None
        Each group's fitted spread (:func:`animalvae.sound.spread.fit_spread`); None: 1.
    texture : Tensor [shape=(G, bands, levels)] or None
        The texture noise's standard deviations (:mod:`animalvae.sound.texture`); None: none.
    """

    settings: dict[str, Any]
    prior: dict[str, Tensor] | None = None
    spread: Tensor | None = None
    texture: Tensor | None = None

    def latents(self, labels: Tensor, config: Config, *, latent_dim: int,
                spread: float | Tensor | None = None) -> Tensor:
        """One code per label: (B,) CPU group indices -> (B, L) on the CPU.

        Drawn from the prior (``generate.sample_prior: mixture``) or N(0, I), at
        ``generate.sample_temperature``, seeded by ``generate.seed`` (the same codes on every
        device). ``spread`` replaces ``generate.spread`` (``fit``: the fitted one, 1 where
        there is none).
        """
        gc = config.generate
        if spread is None:
            spread = gc.spread if gc.spread != "fit" else (
                self.spread if self.spread is not None else 1.0)
        gen = torch.Generator().manual_seed(gc.seed)
        if gc.sample_prior == "mixture" and self.prior is not None:
            return sample_prior(self.prior, labels, generator=gen,
                                temperature=gc.sample_temperature, spread=spread)
        if gc.sample_prior == "mixture":
            log.info("this run's sampler has no prior (train.prior_fit: none): "
                     "sampling z ~ N(0, I)")
        scale = gc.sample_temperature * per_label(spread, labels)
        return torch.randn(len(labels), latent_dim, generator=gen) * scale

    def decode(self, model: VAE, z: Tensor, groups: Tensor | None, config: Config, *,
               sampled: bool = False) -> Tensor:
        """The spectrograms to listen to: (B, L) codes -> (B, H, W) on the model's device.

        ``groups`` is (B,) group indices or (B, G) blends of groups (an interpolation between
        two groups blends their embeddings and textures alike); None for an unconditional
        model. ``sampled``: the codes came from :meth:`latents`, so the comb is drawn at
        ``generate.sample_pitch_temperature`` (an unseen code's pitch is less sure than an encoded
        clip's).
        """
        gc, device = config.generate, device_of(model)
        cond = None
        if groups is not None and model.decoder.embed is not None:
            groups = groups.to(device)
            cond = (model.decoder.condition(groups) if groups.dim() == 1
                    else groups.float() @ model.decoder.embed.weight)          # (B, E)
        with torch.no_grad():
            temperature = gc.sample_pitch_temperature if sampled else None
            x = model.decoder(z.to(device), cond, pitch_temperature=temperature)[:, 0]
        x = restore_peak(x) if gc.restore_peak else x
        if self.texture is not None:
            x = add_texture(x, self._tables(groups, len(x), model.config.conditional),
                            scale=gc.texture, seed=gc.seed)
        return x                                                                # (B, H, W)

    def draw(self, model: VAE, labels: Tensor, config: Config, *,
             spread: float | Tensor | None = None) -> Tensor:
        """Sample a code per label and decode it: (B,) CPU labels -> (B, H, W)."""
        z = self.latents(labels, config, latent_dim=model.config.latent_dim, spread=spread)
        return self.decode(model, z, labels if model.config.conditional else None, config,
                           sampled=True)

    def _tables(self, groups: Tensor | None, n: int, conditional: bool) -> Tensor:
        """Each output's texture table; an unconditional model's outputs share its one."""
        if not conditional or groups is None:
            return self.texture[0].expand(n, *self.texture.shape[1:])
        return texture_tables(self.texture, groups)

    def to_payload(self) -> dict[str, Any]:
        """``sampler.pth``'s contents: plain tensors and values."""
        return {"format": FORMAT, "settings": dict(self.settings), "prior": self.prior,
                "spread": self.spread, "texture": self.texture}

    @classmethod
    def from_payload(cls, data: dict[str, Any], model: VAE, path: Path) -> Sampler:
        """A sampler from ``data``, its tensors checked against ``model`` (ConfigError naming
        ``path`` and ``vae.py fit-sampler`` when they do not fit)."""
        g, latent = model.n_groups, model.config.latent_dim
        problem = _shape_problem(data, g, latent)
        if problem:
            raise ConfigError(f"{path}: {problem}; fit it again with vae.py fit-sampler")
        return cls(dict(data.get("settings") or {}), data.get("prior"), data.get("spread"),
                   data.get("texture"))


def _shape_problem(data: dict[str, Any], n_groups: int, latent_dim: int) -> str:
    """Why a sampler payload does not fit a model of ``n_groups`` and ``latent_dim`` ('')."""
    prior, spread, texture = data.get("prior"), data.get("spread"), data.get("texture")
    if prior is not None:
        shapes = [tuple(prior[k].shape) for k in ("weights", "means", "variances")
                  if isinstance(prior, dict) and isinstance(prior.get(k), Tensor)]
        if len(shapes) != 3 or shapes[0][0] != n_groups \
                or shapes[1] != (n_groups, shapes[0][1], latent_dim) or shapes[2] != shapes[1]:
            return f"its prior does not fit the model ({shapes})"
    if spread is not None and (not isinstance(spread, Tensor) or spread.shape != (n_groups,)
                               or not bool((spread > 0).all())):
        return "its spread is not one positive value per group"
    if texture is not None and (not isinstance(texture, Tensor) or texture.dim() != 3
                                or texture.shape[0] != n_groups):
        return "its texture does not fit the model"
    return ""


@torch.no_grad()
def fit_sampler(trained: TrainedModel, data: SpectrogramSet, config: Config, *,
                batch_size: int = 32) -> Sampler:
    """Fit the prior (on every training code), the texture (on the first :data:`MAX_CLIPS`
    clips of each group) and, with ``generate.spread: fit``, each group's spread.

    One pass encodes each clip once: its posterior mean feeds the prior and, decoded as an
    encoded clip is decoded for listening, the texture. The spread is fit last, on samples
    drawn with both. An unconditional model pools its clips into one texture table.
    """
    from .spread import fit_spread

    model = trained.model.eval()
    device, tc = device_of(model), config.train
    chosen = torch.zeros(len(data), dtype=torch.bool)                           # (N,)
    chosen[first_per_group([it.group for it in data.items], MAX_CLIPS)] = True
    plain = Sampler(fit_settings(config))                       # finishes without a texture
    texture_fit, codes = TextureFit(model.n_groups), []
    for idx in iter_batches(len(data), batch_size):
        x, y = data.batch(idx, device)
        mu, _ = model.encode(x, y)
        codes.append(mu.float().cpu().numpy())
        keep = chosen[idx].to(device)
        if keep.any():
            x_hat = plain.decode(model, mu[keep], y[keep], config)
            texture_fit.add(x[keep, 0], x_hat,
                            y[keep] if model.config.conditional else torch.zeros_like(y[keep]))
    prior = None
    if tc.prior_fit != "none":
        prior = fit_prior(np.concatenate(codes), data.y.numpy(), n_groups=model.n_groups,
                          train=tc)
    table = texture_fit.table()
    if not model.config.conditional:
        table = table[:1].expand_as(table).clone()
    log.info("sampler: %s prior per group, fit on %d training codes; texture on %d clips "
             "(mean noise %.3f of the [0, 1] range)", tc.prior_fit, len(data), int(chosen.sum()),
             table.mean().item())
    sampler = dataclasses.replace(plain, prior=prior, texture=table)
    if prior is not None and config.generate.spread == "fit":
        spread = fit_spread(lambda labels, s: sampler.draw(model, labels, _mixture(config),
                                                           spread=s),
                            data, chosen, groups=trained.groups, spec=trained.spec,
                            config=config, device=device)
        sampler = dataclasses.replace(sampler, spread=spread)
    return sampler


def _mixture(config: Config) -> Config:
    """``config`` with ``generate.sample_prior: mixture``: the spread is fit on the prior's
    draws."""
    return dataclasses.replace(config, generate=dataclasses.replace(config.generate,
                                                                    sample_prior="mixture"))


def save_sampler(run_dir: Path, sampler: Sampler) -> Path:
    """Write ``run_dir/sampler.pth`` atomically."""
    path = Path(run_dir) / SAMPLER
    save_checkpoint(path, sampler.to_payload())
    return path


def refit_sampler(config: Config, run_dir: Path, trained: TrainedModel) -> Sampler:
    """Fit the run's sampler on its training clips (``split.csv``) and save it."""
    train_items, _ = read_split(run_dir)
    require_sources(train_items, run_dir, role="a training file",
                    why="the sampler is fit on the training spectrograms")
    data = SpectrogramSet(train_items, trained.groups, trained.spec.shape)
    sampler = fit_sampler(trained, data, config)
    log.info("sampler saved: %s", save_sampler(run_dir, sampler))
    return sampler


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: the settings under today's key names, and ``generate.spread`` among
    them only when it was ``fit``."""
    settings = {RENAMED_KEYS.get(k, k): v for k, v in (data.get("settings") or {}).items()}
    if settings.get("generate.spread", "fit") != "fit":
        del settings["generate.spread"]
    data["settings"] = settings
    return data


def upgrade_sampler(data: Any, path: Path) -> dict[str, Any]:
    """A ``sampler.pth`` payload of any version brought to the current one (module docstring).

    Raises a one-line ConfigError naming ``path`` for something that is not such a payload, a
    version newer than this code's, or one too old to upgrade.
    """
    data = upgrade(data, kind="sampler", current=VERSION, steps={1: _from_version_1},
                   path=path, what=SAMPLER)
    require_keys(data, ("settings",), path=path, what=SAMPLER)
    return data


def load_sampler(config: Config, run_dir: Path, trained: TrainedModel) -> Sampler:
    """The run's sampler, fit again first when the settings in effect differ from its own.

    Raises
    ------
    ConfigError
        When ``sampler.pth`` is damaged, or a refit is needed and the training clips are
        gone.
    """
    path = Path(run_dir) / SAMPLER
    if path.is_file():
        data = upgrade_sampler(read_payload(path, what=SAMPLER), path)
    else:
        model_path = Path(run_dir) / MODEL
        data = read_checkpoint(model_path).get("sampler")
        if data is not None:
            data = upgrade_sampler(data, model_path)
            log.info("%s holds the sampler of an earlier version (prior and texture inside "
                     "model.pth): using it as it is", model_path)
    sampler = Sampler.from_payload(data, trained.model, path) if data is not None else None
    wanted = fit_settings(config)
    # a sampler fit with more (a spread fit) serves a request that needs less (a number)
    if sampler is not None and (sampler.settings.get("legacy") or all(
            sampler.settings.get(k) == v for k, v in wanted.items())):
        return sampler
    changed = (", ".join(f"{k} {sampler.settings.get(k)!r} -> {v!r}" for k, v in wanted.items()
                         if sampler.settings.get(k) != v)
               if sampler is not None else "")
    log.info("sampler: %s; fitting it again (vae.py fit-sampler does this alone)",
             f"fit with other settings ({changed})" if changed else f"no {path.name} yet")
    try:
        return refit_sampler(config, run_dir, trained)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {('its settings differ: ' + changed) if changed else 'missing'}"
                          f", and it cannot be fit again here ({exc}); set those values back "
                          "or restore the training spectrograms") from None
