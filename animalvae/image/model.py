"""The sound <-> image model: one latent space for spectrograms and video frames, and its file.

A multimodal VAE with a product of experts (MVAE, Wu & Goodman 2018). Each half has its own
encoder, a Gaussian "expert" over the shared ``z``; the posterior given whatever is observed is
the product of those experts and the prior expert N(0, I)::

    spectrogram (B, 1, H, W) --sound encoder--> mu_s, logvar_s (B, L)
    image (B, 3, S, S) in [0, 1] --image encoder--> mu_i, logvar_i (B, L)
    q(z | sound, image) ∝ N(0, I) · N(mu_s, var_s) · N(mu_i, var_i)    (either may be absent)
    z --sound decoder--> (B, 1, H, W);  z --image decoder--> (B, 3, S, S)

So the same model encodes a sound alone (``q(z | sound)``, no group label anywhere) and decodes
an image from it: the group in the picture is what the model heard. The spectrogram halves are
:class:`~animalvae.sound.model.Encoder` and :class:`~animalvae.sound.model.Decoder` (unconditional);
the image halves mirror them with three input channels.

The file (``runs/<name>/images/model.pth``; ``images/last.pth`` adds what resuming needs) holds
plain data only, loadable with ``torch.load(weights_only=True)`` and tagged ``format:
animalvae.sound_image/<version>`` (:mod:`animalvae.training.file_format`). Version 3, written
now: ``model`` (the weights), ``model_config`` (the ``sound_image`` settings), ``spec``,
``shape``, ``image_size``, ``groups``, ``group_codes`` (per group, mean and standard deviation
of the training pairs' posterior means, for sampling a group: Ghosh et al. 2020's fitted prior,
diagonal), ``residuals`` (per group, the mean sound code and what each pair's code adds to it),
``config`` (the whole config of the run), ``versions`` and ``epoch``, ``step``, ``val_loss``.
Version 2 held the same under the ``sound_image`` keys' earlier names; 3 marks the files
written since stage 5 moved into rooms and the keys were renamed, so that an older animalvae
refuses them rather than misreads them. Version 1 (no residuals) is too old to
upgrade. :func:`upgrade_pairs_checkpoint` is the one function that knows this.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, SoundImageConfig, current_keys
from ..errors import ConfigError
from ..sound.model import Decoder, DownBlock, Encoder, UpBlock
from ..spectrogram import SpectrogramSpec
from ..training.file_format import (
    format_tag,
    library_versions,
    read_payload,
    require_keys,
    upgrade,
)

__all__ = ["ARCHITECTURE", "ImageEncoder", "ImageDecoder", "SoundImageVAE", "TrainedPairs",
           "FORMAT", "VERSION", "product_of_experts", "pairs_payload", "upgrade_pairs_checkpoint",
           "read_pairs_checkpoint", "load_pairs_model", "draw_residuals"]

#: The version of a sound <-> image checkpoint this module writes (module docstring).
VERSION = 3
FORMAT = format_tag("sound_image", VERSION)
#: What every such file holds (``last.pth`` adds the optimiser and the RNG states).
PAIRS_KEYS = ("model", "model_config", "spec", "shape", "image_size", "groups", "group_codes",
              "residuals", "config")
#: The ``sound_image`` settings that shape the weights (the others only steer training).
ARCHITECTURE = ("latent_dim", "sound_channels", "image_channels")


def product_of_experts(experts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The Gaussian product of N(0, I) and the given experts: (mu, logvar), each (B, L).

    Precisions add; the mean is the precision-weighted mean of the experts' means.

    Parameters
    ----------
    experts : list of (mu, logvar), each Tensor [shape=(B, L)]
        May be empty (the result is then the prior).
    """
    if not experts:
        raise ValueError("product_of_experts needs at least one expert to know the shape")
    mu0 = experts[0][0]
    precision = torch.ones_like(mu0)                       # the prior expert N(0, I)
    weighted = torch.zeros_like(mu0)
    for mu, logvar in experts:
        p = torch.exp(-logvar.clamp(-12.0, 12.0))          # bounded: no Inf precision
        precision = precision + p
        weighted = weighted + mu * p
    return weighted / precision, -torch.log(precision)


class ImageEncoder(nn.Module):
    """Image (B, 3, S, S) in [0, 1] -> the image expert's ``mu``, ``logvar`` (B, L)."""

    def __init__(self, channels: list[int], size: int, latent_dim: int):
        super().__init__()
        widths = [3, *channels]
        self.convs = nn.Sequential(*[DownBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        with torch.no_grad():
            self.feature_shape = tuple(self.convs(torch.zeros(1, 3, size, size)).shape[1:])
        self.to_stats = nn.Linear(math.prod(self.feature_shape), 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_stats(self.convs(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class ImageDecoder(nn.Module):
    """Latent (B, L) -> image (B, 3, S, S) in [0, 1]."""

    def __init__(self, channels: list[int], feature_shape: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        self.from_z = nn.Linear(latent_dim, math.prod(self.feature_shape))
        widths = list(reversed(channels))
        self.ups = nn.Sequential(*[UpBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.to_image = nn.ConvTranspose2d(widths[-1], 3, 4, stride=2, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.from_z(z).view(-1, *self.feature_shape)
        return torch.sigmoid(self.to_image(self.ups(h)))


class SoundImageVAE(nn.Module):
    """Spectrogram and image halves over one latent space.

    Parameters
    ----------
    config : SoundImageConfig
    shape : tuple of int
        ``(n_bins, n_frames)`` of a spectrogram.
    image_size : int
        Side of the square images, pixels.

    Raises
    ------
    ConfigError
        When the spectrogram or the image does not come back at its own size through the
        stride-2 blocks.

    Examples
    --------
    >>> from animalvae.config import SoundImageConfig
    >>> m = SoundImageVAE(SoundImageConfig(latent_dim=4, sound_channels=[4, 8],
    ...                                    image_channels=[4, 8]), (16, 8), 16)
    >>> mu, logvar = m.posterior(sound=torch.rand(2, 1, 16, 8))
    >>> tuple(m.decode_image(mu).shape)
    (2, 3, 16, 16)
    """

    def __init__(self, config: SoundImageConfig, shape: tuple[int, int], image_size: int):
        super().__init__()
        self.config = config
        self.shape = (int(shape[0]), int(shape[1]))
        self.image_size = int(image_size)
        sound = ModelConfig(latent_dim=config.latent_dim, channels=list(config.sound_channels),
                            conditional=False, latent_frames=0, pitch_candidates=0)
        self.sound_encoder = Encoder(sound, self.shape, 1)
        self.sound_decoder = Decoder(sound, self.sound_encoder.feature_shape, 1)
        self.image_encoder = ImageEncoder(config.image_channels, self.image_size,
                                          config.latent_dim)
        self.image_decoder = ImageDecoder(config.image_channels, self.image_encoder.feature_shape,
                                          config.latent_dim)
        with torch.no_grad():
            z = torch.zeros(1, config.latent_dim)
            sound_out = tuple(self.sound_decoder(z).shape[2:])
            image_out = tuple(self.image_decoder(z).shape[2:])
        if sound_out != self.shape or image_out != (self.image_size,) * 2:
            raise ConfigError(f"sound_image.sound_channels={config.sound_channels} / "
                              f"image_channels={config.image_channels} do not fit spectrograms "
                              f"{self.shape} and {self.image_size} px images (they come back "
                              f"as {sound_out} and {image_out}); use fewer entries")

    def experts(self, sound: Tensor | None = None,
                image: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """The encoders' Gaussians for what is given (sound (B, 1, H, W), image (B, 3, S, S))."""
        out = []
        if sound is not None:
            out.append(self.sound_encoder(sound))
        if image is not None:
            out.append(self.image_encoder(image))
        if not out:
            raise ValueError("give a sound, an image or both")
        return out

    def posterior(self, sound: Tensor | None = None,
                  image: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | what is given) as (mu, logvar), each (B, L)."""
        return product_of_experts(self.experts(sound, image))

    def decode_sound(self, z: Tensor) -> Tensor:
        """(B, L) -> spectrograms (B, 1, H, W) in [0, 1]."""
        return self.sound_decoder(z)

    def decode_image(self, z: Tensor) -> Tensor:
        """(B, L) -> images (B, 3, S, S) in [0, 1]."""
        return self.image_decoder(z)


# --------------------------------------------------------------------------------------------
# The file: plain data only
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainedPairs:
    """A sound <-> image model loaded from its file, with what is needed to use it."""

    model: SoundImageVAE
    spec: SpectrogramSpec
    groups: list[str]
    group_codes: dict[str, tuple[Tensor, Tensor]]    # group -> (mean, std) of codes, (L,) each
    residuals: dict[str, tuple[Tensor, Tensor]]      # group -> (mean sound code (L,),
    #                                                  residuals of its pairs (N, L))
    config: dict[str, Any]                           # the whole config of the training run
    info: dict[str, Any]                             # epoch, step, val_loss, versions


def _nearest(residuals: dict[str, tuple[Tensor, Tensor]], mu_sound: Tensor) -> Tensor:
    """(B,) index into ``residuals`` of the group whose mean sound code is nearest each row."""
    centres = torch.stack([c for c, _ in residuals.values()]).to(mu_sound)    # (G, L)
    return torch.cdist(mu_sound, centres).argmin(dim=1)


def draw_residuals(residuals: dict[str, tuple[Tensor, Tensor]], mu_sound: Tensor, count: int,
                   *, generator: torch.Generator) -> Tensor:
    """``count`` residuals per sound code, drawn with replacement from its nearest group's.

    Parameters
    ----------
    mu_sound : Tensor [shape=(B, L)]
    generator : torch.Generator
        A CPU generator (the same draws on any device).

    Returns
    -------
    Tensor [shape=(B, count, L)]
    """
    nearest = _nearest(residuals, mu_sound).cpu()
    rows = [r for _, r in residuals.values()]
    out = [rows[g][torch.randint(len(rows[g]), (count,), generator=generator)]
           for g in nearest.tolist()]
    return torch.stack(out).to(mu_sound)


def pairs_payload(model: SoundImageVAE, *, spec: SpectrogramSpec, groups: list[str],
                  group_codes: dict[str, tuple[Tensor, Tensor]],
                  residuals: dict[str, tuple[Tensor, Tensor]], config: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """The dict the file holds: weights (CPU), settings, spec, groups, codes, residuals,
    versions."""
    return {"format": FORMAT, "model": {k: v.detach().cpu() for k, v in
                                        model.state_dict().items()},
            "model_config": dataclasses.asdict(model.config), "spec": spec.to_dict(),
            "shape": list(model.shape), "image_size": model.image_size,
            "groups": list(groups),
            "group_codes": {g: {"mean": m.detach().cpu(), "std": s.detach().cpu()}
                            for g, (m, s) in group_codes.items()},
            "residuals": {g: {"centre": c.detach().cpu(), "rows": r.detach().cpu()}
                          for g, (c, r) in residuals.items()},
            "config": config, "versions": library_versions(), **extra}


def _from_version_2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: the ``sound_image`` settings under today's names (renamed keys take
    their new name, removed ones are dropped)."""
    data["model_config"] = current_keys("sound_image", data.get("model_config") or {})
    return data


def upgrade_pairs_checkpoint(data: Any, path: Path, *, what: str = "model.pth"
                             ) -> dict[str, Any]:
    """A sound <-> image checkpoint's payload of any version brought to the current one.

    Version 2 -> 3 renames the settings' keys (module docstring). Raises a one-line ConfigError
    naming ``path`` for something that is not such a payload, a version newer than this
    code's, or one too old to upgrade.
    """
    return upgrade(data, kind="sound_image", current=VERSION, steps={2: _from_version_2},
                   path=path, what=what)


def read_pairs_checkpoint(path: Path, *, what: str = "model.pth",
                          keys: tuple[str, ...] = PAIRS_KEYS) -> dict[str, Any]:
    """The payload of a sound <-> image ``model.pth`` or ``last.pth`` at the current version,
    with ``keys`` in it (one-line ConfigError naming ``path`` otherwise)."""
    data = upgrade_pairs_checkpoint(read_payload(path, what=what), path, what=what)
    require_keys(data, keys, path=path, what=what)
    return data


def load_pairs_model(path: Path, *, device: torch.device | str = "cpu") -> TrainedPairs:
    """Load a sound <-> image model (evaluation mode, on ``device``).

    Raises
    ------
    ConfigError
        When the file is missing, not plain data, not this format, or its weights do not fit
        the settings it records.
    """
    data = read_pairs_checkpoint(path, what=Path(path).name)
    try:
        config = SoundImageConfig(**data["model_config"])
        spec = SpectrogramSpec.from_dict(data["spec"])
        model = SoundImageVAE(config, tuple(data["shape"]), int(data["image_size"]))
        model.load_state_dict(data["model"])
    except (TypeError, ConfigError, RuntimeError) as exc:
        raise ConfigError(f"{path}: its settings or weights do not fit this version "
                          f"({' '.join(str(exc).split())[:300]}); retrain with vae.py "
                          "train-images --force") from None
    model.to(device).eval()
    codes = {str(g): (c["mean"].to(device), c["std"].to(device))
             for g, c in data["group_codes"].items()}
    residuals = {str(g): (r["centre"].to(device), r["rows"].to(device))
                 for g, r in data["residuals"].items()}
    info = {k: data[k] for k in ("epoch", "step", "val_loss", "versions") if k in data}
    return TrainedPairs(model, spec, [str(g) for g in data["groups"]], codes, residuals,
                        data["config"], info)
