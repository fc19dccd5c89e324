"""The conditional convolutional VAE over spectrograms, and its ``model.pth`` file.

Shapes (B: batch, H x W = n_bins x n_frames, N = len(model.channels), L = latent_dim)::

    x (B, 1, H, W) in [0, 1] --Encoder--> mu, logvar (B, L)
    z = mu + exp(logvar / 2) * eps                        eps ~ N(0, I)
    z (B, L) --Decoder--> x_hat (B, 1, H, W) in [0, 1]

The encoder is N stride-2 3x3 convolutions (GroupNorm, LeakyReLU), flattened, then one linear
layer to (mu, logvar); the decoder mirrors it with one linear layer and N stride-2 transposed
convolutions (normalised by ``model.decoder_norm``: GroupNorm, or per position over channels,
:class:`ChannelNorm`, see there why), the last one to one channel and a sigmoid. With
``model.conditional`` each half has its own embedding of the group, concatenated to the
flattened features (encoder) and to ``z`` (decoder), so the decoder can be asked for a given
group. Layer sizes are derived with a dummy forward pass; H and W must be divisible by ``2 ** N``.

With ``model.latent_frames`` T > 0 the code has a time axis (:class:`Encoder`): the blocks
stop halving time at T positions, and a convolution over the remaining frequency rows replaces
the linear layer on each side, so ``z`` is T codes of ``L / T`` values (still flat, (B, L), to
everything outside this module). With ``model.repeat_edges`` the decoder repeats the first
and last of them as far as its layers read and, after each layer, crops what the next ones do
not read (:func:`_edge_margins`): its convolutions pad each map's ends with zeros, which a
clip's edge frames would otherwise see (as stripes there: a frame one tap short of every
other, with weights tuned for the interior).

With ``model.pitch_candidates`` K > 0 the decoder also draws harmonics at a pitch it names
(:mod:`animalvae.sound.harmonic`): a pitch head reads the first feature map's time positions and
gives a distribution over K harmonic spacings, the last layer gives a second channel (the
comb's gain), and the output is ``sigmoid(logits + softplus(gain) * comb)``. The encoder is
then also handed, per time position, how well each comb fits its input.

The encoder stands alone (:meth:`Encoder.features` needs no group): the sound -> image work
can reuse it. GroupNorm rather than BatchNorm: it behaves the same in training and
evaluation, whatever the batch size, so a short run already generates sensibly.

``model.pth`` holds plain data only (loadable with ``torch.load(weights_only=True)``), tagged
``format: animalvae.vae/<version>`` (:mod:`animalvae.training.file_format`); ``last.pth`` is the
same plus what resuming needs (optimiser, scheduler, RNG states). Version 3, written now::

    model          the weights (state_dict, CPU tensors)
    model_config   every ``model.*`` setting (:class:`~animalvae.config.ModelConfig`)
    spec           the spectrogram spec (:meth:`SpectrogramSpec.to_dict`)
    shape          [H, W] of one spectrogram
    groups         the group names, in label order
    config         the whole config of the training run, as plain data
    versions       torch, torchaudio, animalvae
    epoch, step, val_loss    where training was
    sampler        only in a file upgraded from version 1 that held a prior or a texture:
                   that sampler, as a ``sampler.pth`` payload of version 1

What is fit after training to sample and finish sounds lives beside it, in ``sampler.pth``
(:mod:`animalvae.sound.sampler`). Version 2 was the same, from before
``model.repeat_edges`` existed: its decoders saw the zero padding at a clip's ends, so its
``model_config`` upgrades with ``repeat_edges`` false. Version 1 (``animalvae.vae/1``) was the same
as 2 except that its
``model_config`` may lack ``decoder_norm``, ``latent_frames`` and ``pitch_candidates`` (files
from before they existed: GroupNorm, one latent vector, no comb) and that it may hold the prior
(with each group's spread inside it) and the texture itself, from before ``sampler.pth``.
:func:`upgrade_checkpoint` is the one function that knows this: every loader reads through it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..errors import ConfigError
from ..spectrogram import SpectrogramSpec
from ..training.file_format import (
    format_tag,
    library_versions,
    read_payload,
    require_keys,
    upgrade,
)
from .harmonic import PitchHead, add_comb, comb_correlation, expected_comb, harmonic_combs

__all__ = ["Encoder", "Decoder", "VAE", "DownBlock", "UpBlock", "Reconstruction", "TrainedModel",
           "FORMAT", "VERSION", "build_model", "reparameterize", "kl_divergence",
           "checkpoint_payload", "upgrade_checkpoint", "read_checkpoint", "load_model"]

#: The version of ``model.pth``/``last.pth`` this module writes (module docstring).
VERSION = 3
FORMAT = format_tag("vae", VERSION)


def _norm(channels: int) -> nn.GroupNorm:
    # 8 channels per group (at most 32 groups), one group for very narrow layers.
    return nn.GroupNorm(max(1, min(32, channels // 8)), channels)


class DownBlock(nn.Sequential):
    """3x3 conv, GroupNorm, LeakyReLU: (B, c_in, H, W) -> (B, c_out, H/2, W/2).

    With ``halve_time=False`` only the frequency axis is halved: (B, c_out, H/2, W).
    """

    def __init__(self, c_in: int, c_out: int, halve_time: bool = True):
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride=(2, 2 if halve_time else 1), padding=1),
                         _norm(c_out), nn.LeakyReLU(0.2))


def _halves_time(config: ModelConfig, n_frames: int) -> list[bool]:
    """Per stride-2 block, whether it also halves time: all of them for a single latent vector
    (``model.latent_frames`` 0), else only until ``latent_frames`` time positions are left."""
    flags, width = [], n_frames
    for _ in config.channels:
        flags.append(config.latent_frames == 0 or width > config.latent_frames)
        width //= 2 if flags[-1] else 1
    return flags


class ChannelNorm(nn.Module):
    """Normalise each position over its channels, with a learned gain and bias per channel.

    (B, C, H, W) -> same shape. Unlike GroupNorm, no statistic spans positions: a decoder
    with GroupNorm learns to put one strong, localised spike in every output to steer the
    per-sample mean and variance, which shows as a dark patch at the same place in every
    sample (the "droplet" artifact of Karras et al. 2020, StyleGAN2); this norm gives it
    nothing to steer.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class UpBlock(nn.Sequential):
    """Stride-2 4x4 transposed conv, norm, LeakyReLU: (B, c_in, H, W) -> (B, c_out, 2H, 2W)
    (with ``double_time=False``: (B, c_out, 2H, W)).

    ``norm`` is ``model.decoder_norm``: ``channel`` (:class:`ChannelNorm`) or ``group``
    (GroupNorm, as models trained before ``decoder_norm`` existed).
    """

    def __init__(self, c_in: int, c_out: int, norm: str = "group", double_time: bool = True):
        super().__init__(_up_conv(c_in, c_out, double_time),
                         ChannelNorm(c_out) if norm == "channel" else _norm(c_out),
                         nn.LeakyReLU(0.2))


def _up_conv(c_in: int, c_out: int, double_time: bool, *,
             sub_pixel: bool = False) -> nn.ConvTranspose2d:
    """The transposed conv that doubles frequency, and time too unless ``double_time`` is
    False (then a 4x3 kernel with stride (2, 1), for a latent with a time axis); computed as
    :class:`SubPixelConvTranspose2d` when ``sub_pixel``."""
    kernel, stride = ((4, 4), (2, 2)) if double_time else ((4, 3), (2, 1))
    kind = SubPixelConvTranspose2d if sub_pixel else nn.ConvTranspose2d
    return kind(c_in, c_out, kernel, stride=stride, padding=1)


class SubPixelConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution computed as a 3x3 convolution and a pixel shuffle.

    The same layer as :class:`torch.nn.ConvTranspose2d` (its weights, initialisation,
    state-dict keys and outputs, to float rounding), for kernels of at most ``stride + 2``
    with padding 1. Each output phase (row ``2i + a``) reads a 3x3 neighbourhood of the input
    through its own slice of the kernel, so one convolution with ``stride`` x more output
    channels computes all phases at once (Shi et al. 2016). On the CPU this is faster where
    the layer has few output channels and large maps: a decoder's last layer
    (docs/benchmarks.md, "the decoder's last layer as a sub-pixel convolution").

    Examples
    --------
    >>> layer = SubPixelConvTranspose2d(4, 2, (4, 3), stride=(2, 1), padding=1)
    >>> plain = nn.ConvTranspose2d(4, 2, (4, 3), stride=(2, 1), padding=1)
    >>> _ = plain.load_state_dict(layer.state_dict())
    >>> x = torch.randn(1, 4, 5, 6)
    >>> bool(torch.allclose(layer(x), plain(x), atol=1e-5))
    True
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: tuple[int, int], *,
                 stride: tuple[int, int], padding: int = 1):
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=padding)
        taps = [_sub_pixel_taps(s, padding, k) for s, k in zip(self.stride, self.kernel_size)]
        self.register_buffer("taps_rows", taps[0], persistent=False)
        self.register_buffer("taps_cols", taps[1], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        sh, sw = self.stride
        c_out = self.out_channels
        padded = F.pad(self.weight, (0, 1, 0, 1))            # index kernel_size reads a zero
        w = padded[:, :, self.taps_rows[:, :, None, None], self.taps_cols[None, None]]
        w = w.permute(1, 2, 4, 0, 3, 5).reshape(c_out * sh * sw, self.in_channels, 3, 3)
        bias = None if self.bias is None else self.bias.repeat_interleave(sh * sw)
        y = F.conv2d(x, w, bias, padding=1)                  # (B, c_out * sh * sw, H, W)
        b, _, h, width = y.shape
        y = y.view(b, c_out, sh, sw, h, width).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(b, c_out, h * sh, width * sw)


def _sub_pixel_taps(stride: int, padding: int, kernel: int) -> Tensor:
    """(stride, 3): the kernel index through which output phase ``a`` reads input offset
    ``d`` = -1, 0, 1 (``kernel``: none, a zero weight).

    Output ``stride * q + a`` of a transposed convolution reads input ``q + d`` through
    kernel index ``a + padding - stride * d``.
    """
    taps = torch.full((stride, 3), kernel, dtype=torch.long)
    for a in range(stride):
        for d in (-1, 0, 1):
            k = a + padding - stride * d
            if 0 <= k < kernel:
                taps[a, d + 1] = k
    if not set(range(kernel)) <= set(taps.flatten().tolist()):
        raise ValueError(f"kernel {kernel} with stride {stride} and padding {padding} reads "
                         "beyond a 3-tap neighbourhood")
    return taps


class Encoder(nn.Module):
    """Spectrogram (and group) -> the posterior's ``mu`` and ``logvar``.

    With ``model.latent_frames`` 0, the last feature map is flattened and one linear layer
    gives the whole clip's code. With ``latent_frames`` T > 0, the blocks stop halving time at
    T positions and a convolution spanning the remaining frequency rows gives one code of
    ``latent_dim / T`` values per position: the code has a time axis, so *when* a bark or a
    chirp happens is kept where it happens instead of being squeezed through one vector.
    Either way ``mu`` and ``logvar`` are flat ``(B, latent_dim)`` (time-major within a code).

    Parameters
    ----------
    config : ModelConfig
    shape : tuple of int
        ``(n_bins, n_frames)`` of the input, each divisible by ``2 ** len(config.channels)``.
    n_groups : int
        Number of groups (classes); used when ``config.conditional``.
    """

    def __init__(self, config: ModelConfig, shape: tuple[int, int], n_groups: int):
        super().__init__()
        widths = [1, *config.channels]
        self.halves_time = _halves_time(config, shape[1])   # per block: halves time too?
        self.convs = nn.Sequential(*[DownBlock(a, b, t) for a, b, t
                                     in zip(widths[:-1], widths[1:], self.halves_time)])
        with torch.no_grad():  # the flattened size, from a dummy input rather than by hand
            self.feature_shape = tuple(self.convs(torch.zeros(1, 1, *shape)).shape[1:])
        self.n_features = math.prod(self.feature_shape)
        self.embed = nn.Embedding(n_groups, config.embed_dim) if config.conditional else None
        cond = config.embed_dim if config.conditional else 0
        self.latent_frames = config.latent_frames
        # with the pitch comb, how well each comb fits the input at each of the last map's time
        # positions is handed to the code too: strided 3x3 convolutions do not measure a
        # harmonic spacing to a fraction of a row, and the decoder's comb needs it
        pitch = config.pitch_candidates
        self.register_buffer("combs", harmonic_combs(pitch, shape[0]) if pitch else None,
                             persistent=False)
        c, h, w = self.feature_shape
        if self.latent_frames:
            per_frame = config.latent_dim // self.latent_frames
            self.to_stats = nn.Conv2d(c + cond + pitch, 2 * per_frame, (h, 1))
        else:
            self.to_stats = nn.Linear(self.n_features + cond + pitch * w, 2 * config.latent_dim)

    def features(self, x: Tensor) -> Tensor:
        """Label-free features: (B, 1, H, W) -> (B, n_features)."""
        return self.convs(x).flatten(1)  # (B, C, H/2^N, W/2^N) -> (B, n_features)

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, 1, H, W) spectrograms, (B,) group indices -> mu, logvar, each (B, L)."""
        h = self.convs(x)                                     # (B, C, h, w)
        cond = None
        if self.embed is not None:
            if y is None:
                raise ValueError("this encoder is conditional: pass the group indices y")
            cond = self.embed(y)                              # (B, embed_dim)
        fit = None
        if self.combs is not None:                            # (B, K, w): comb fit per position
            fit = F.avg_pool1d(comb_correlation(x, self.combs), x.shape[3] // h.shape[3])
        if not self.latent_frames:
            h = h.flatten(1)                                  # (B, n_features)
            extra = [t for t in (cond, None if fit is None else fit.flatten(1)) if t is not None]
            h = torch.cat([h, *extra], dim=1)                 # (B, n_features [+ ...])
            mu, logvar = self.to_stats(h).chunk(2, dim=1)     # (B, L), (B, L)
            return mu, logvar
        rows = h.shape[2]
        if cond is not None:                                  # the group at every position
            h = torch.cat([h, cond[:, :, None, None].expand(-1, -1, *h.shape[2:])], dim=1)
        if fit is not None:                                   # the comb fit at every row
            h = torch.cat([h, fit[:, :, None].expand(-1, -1, rows, -1)], dim=1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)         # (B, L/T, 1, T) each
        return mu.flatten(1), logvar.flatten(1)               # (B, L), (B, L)


def _edge_margins(doubles: list[bool], *, pitch_head: bool) -> list[int]:
    """Frames each decoder layer needs beyond a clip's ends so that no kept frame meets a
    zero padding: ``[positions repeated in z, kept after each up-block, ..., after the last
    layer (0)]``.

    Walks back from the output: output frame ``j`` of a 4-tap stride-2 transposed convolution
    (padding 1) reads input frames ``floor((j - 1) / 2)`` to ``floor((j + 1) / 2)``, so ``m``
    frames beyond an end need ``m // 2 + 1`` of its input; a 3-tap stride-1 one reads one
    frame either side, ``m + 1``; the comb reads three positions of the first map beyond an
    end (the pitch head's two 3-tap convolutions, then the linear interpolation between
    positions).

    >>> _edge_margins([False, False, False, True, True, True], pitch_head=True)
    [4, 3, 2, 1, 1, 1, 0]
    """
    margins = [0]
    for double in reversed(doubles):
        margins.insert(0, margins[0] // 2 + 1 if double else margins[0] + 1)
    margins[0] = max(margins[0], 3 if pitch_head else 0)
    return margins


def _crop_time(x: Tensor, frames: int) -> Tensor:
    """``x`` (..., W) without ``frames`` frames at each end."""
    return x[..., frames:x.shape[-1] - frames] if frames else x


class Decoder(nn.Module):
    """Latent vector (and group) -> spectrogram in [0, 1].

    Mirrors :class:`Encoder`: a linear layer (``model.latent_frames`` 0) or a transposed
    convolution over the frequency rows at each of the T time positions, then the blocks.

    Parameters
    ----------
    config : ModelConfig
    feature_shape : tuple of int
        ``(C, h, w)``: the encoder's last feature map, which the decoder starts from.
    n_groups : int
    halves_time : list of bool or None
        The encoder's :attr:`Encoder.halves_time` (None: every block halves time).
    """

    def __init__(self, config: ModelConfig, feature_shape: tuple[int, ...], n_groups: int,
                 halves_time: list[bool] | None = None):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        self.embed = nn.Embedding(n_groups, config.embed_dim) if config.conditional else None
        cond = config.embed_dim if config.conditional else 0
        self.latent_frames = config.latent_frames
        c, h, _ = self.feature_shape
        if self.latent_frames:
            self.from_z = nn.ConvTranspose2d(config.latent_dim // self.latent_frames + cond, c,
                                             (h, 1))
        else:
            self.from_z = nn.Linear(config.latent_dim + cond, math.prod(self.feature_shape))
        widths = list(reversed(config.channels))
        # the encoder's time halvings, undone in reverse order (the last one by to_image)
        doubles = list(reversed(halves_time or [True] * len(config.channels)))
        self.ups = nn.Sequential(*[UpBlock(a, b, config.decoder_norm, t) for a, b, t
                                   in zip(widths[:-1], widths[1:], doubles)])
        self.doubles = doubles                                # per layer: doubles time?
        pitch = config.pitch_candidates
        # with the pitch comb: a second output channel (the comb's gain), and the pitch head,
        # which reads the first feature map's time positions (all its rows as channels)
        self.to_image = _up_conv(widths[-1], 2 if pitch else 1, doubles[-1], sub_pixel=True)
        self.pitch = PitchHead(c * h, pitch) if pitch else None
        self.pitch_temperature = config.pitch_temperature
        # frames beyond the clip at each end: repeated code positions, then kept after each
        # layer (all 0: the edge frames meet the zero padding)
        self.margins = (_edge_margins(doubles, pitch_head=self.pitch is not None)
                        if config.latent_frames and config.repeat_edges
                        else [0] * (len(doubles) + 1))
        n_bins = h * 2 ** len(config.channels)
        self.register_buffer("combs", harmonic_combs(pitch, n_bins) if pitch else None,
                             persistent=False)

    def condition(self, y: Tensor | None) -> Tensor | None:
        """The decoder's group embedding: (B,) indices -> (B, embed_dim) (None: unconditional)."""
        if self.embed is None:
            return None
        if y is None:
            raise ValueError("this decoder is conditional: pass the group indices y")
        return self.embed(y)

    def forward(self, z: Tensor, cond: Tensor | None = None, *,
                pitch_temperature: float | None = None) -> Tensor:
        """(B, L) latent, (B, embed_dim) group embedding -> (B, 1, H, W) in [0, 1].

        Takes the embedding, not the index, so that interpolation can blend two groups. With
        the comb, its pitch is drawn at ``pitch_temperature`` (None: ``model.pitch_temperature``).
        """
        return self.draw(z, cond, pitch_temperature=pitch_temperature)[0]

    def draw(self, z: Tensor, cond: Tensor | None = None, *,
             pitch_temperature: float | None = None) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward`, and the pitch head's logits over the K spacings (B, K, T) that the
        comb was drawn from (None without the comb): training reads them at temperature 1
        (:func:`animalvae.sound.harmonic.pitch_loss`)."""
        if self.latent_frames:
            z = z.view(len(z), -1, 1, self.latent_frames)     # (B, L/T, 1, T)
            z = F.pad(z, (self.margins[0],) * 2 + (0, 0), mode="replicate")  # edges repeated
            if cond is not None:
                z = torch.cat([z, cond[:, :, None, None].expand(-1, -1, 1, z.shape[3])], dim=1)
            h = self.from_z(z)                                # (B, C, h, T + 2 margins[0])
        else:
            if cond is not None:
                z = torch.cat([z, cond], dim=1)               # (B, L + embed_dim)
            h = self.from_z(z).view(-1, *self.feature_shape)  # (B, C, H/2^N, W/2^N)
        x = h
        for layer, double, (have, keep) in zip([*self.ups, self.to_image], self.doubles,
                                               zip(self.margins, self.margins[1:])):
            x = _crop_time(layer(x), have * (2 if double else 1) - keep)  # what is read next
        out, logits = x, None                                 # (B, 1 or 2, H, W)
        if self.pitch is not None:
            logits = self.pitch(h.flatten(1, 2))              # (B, K, T + 2 margins[0])
            temperature = (self.pitch_temperature if pitch_temperature is None
                           else pitch_temperature)
            margin = self.margins[0]
            frames = out.shape[3] // (logits.shape[2] - 2 * margin)     # per position
            comb = expected_comb(logits, self.combs, logits.shape[2] * frames,
                                 temperature=temperature)
            logits = _crop_time(logits, margin)
            return add_comb(out[:, :1], out[:, 1:], _crop_time(comb, margin * frames)), logits
        return torch.sigmoid(out), None


class Reconstruction(NamedTuple):
    """What :meth:`VAE.forward` returns: one shape whatever the model (a tuple, so DDP and
    unpacking see its tensors)."""

    x_hat: Tensor                   # (B, 1, H, W) in [0, 1]
    mu: Tensor                      # (B, L)
    logvar: Tensor                  # (B, L)
    pitch_logits: Tensor | None     # (B, K, T) of the pitch head (Decoder.draw); None: no comb


class VAE(nn.Module):
    """Encoder + reparameterisation + decoder.

    Parameters
    ----------
    config : ModelConfig
    shape : tuple of int
        ``(n_bins, n_frames)`` of one spectrogram.
    n_groups : int
        Number of groups (>= 1).

    Raises
    ------
    ConfigError
        When ``shape`` cannot go down and back up through ``len(config.channels)`` stride-2
        layers unchanged.

    Examples
    --------
    >>> from animalvae.config import ModelConfig
    >>> vae = VAE(ModelConfig(latent_dim=8, channels=[4, 8], latent_frames=0), (64, 32),
    ...           n_groups=2)
    >>> x_hat, mu, logvar, _ = vae(torch.rand(3, 1, 64, 32), torch.tensor([0, 1, 0]))
    >>> tuple(x_hat.shape), tuple(mu.shape)
    ((3, 1, 64, 32), (3, 8))
    """

    def __init__(self, config: ModelConfig, shape: tuple[int, int], n_groups: int):
        super().__init__()
        self.config = config
        self.shape = (int(shape[0]), int(shape[1]))
        self.n_groups = n_groups
        self.encoder = Encoder(config, self.shape, n_groups)
        frames = config.latent_frames
        if frames and self.encoder.feature_shape[2] != frames:
            raise ConfigError(
                f"model.latent_frames={frames} does not fit {self.shape[1]} spectrogram frames "
                f"and {len(config.channels)} stride-2 blocks (they leave "
                f"{self.encoder.feature_shape[2]} time positions); use a power of two between "
                f"{self.shape[1] // 2 ** len(config.channels)} and {self.shape[1]}")
        self.decoder = Decoder(config, self.encoder.feature_shape, n_groups,
                               self.encoder.halves_time)
        with torch.no_grad():
            z = torch.zeros(1, config.latent_dim)
            y = torch.zeros(1, dtype=torch.long)
            out = tuple(self.decoder(z, self.decoder.condition(y)).shape[2:])
        if out != self.shape:
            n = len(config.channels)
            raise ConfigError(
                f"model.channels={config.channels} has {n} stride-2 layers, so both sides of "
                f"the spectrogram shape {self.shape} must be divisible by 2**{n}={2 ** n} "
                f"(it would come back as {out}); use fewer channels entries")

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, 1, H, W), (B,) -> mu, logvar (B, L)."""
        return self.encoder(x, y)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, L), (B,) -> (B, 1, H, W) in [0, 1]."""
        return self.decoder(z, self.decoder.condition(y))

    def forward(self, x: Tensor, y: Tensor | None = None, *,
                noise: Tensor | None = None) -> Reconstruction:
        """Reconstruct ``x`` through a sampled ``z``.

        Parameters
        ----------
        x : Tensor [shape=(B, 1, H, W), values in [0, 1]]
        y : Tensor [shape=(B,), int64] or None
            Group indices (required when conditional).
        noise : Tensor [shape=(B, L)] or None
            The ``eps`` of the reparameterisation; None draws it from torch's RNG.

        Returns
        -------
        Reconstruction
            ``x_hat``, ``mu``, ``logvar`` and the pitch head's ``pitch_logits`` (None without
            the comb).
        """
        mu, logvar = self.encoder(x, y)                       # (B, L), (B, L)
        eps = torch.randn_like(mu) if noise is None else noise.to(mu)
        z = reparameterize(mu, logvar, eps)
        x_hat, logits = self.decoder.draw(z, self.decoder.condition(y))
        return Reconstruction(x_hat, mu, logvar, logits)


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """The code ``z = mu + exp(logvar / 2) * eps`` of the posterior's noise ``eps``: (B, L)."""
    return mu + torch.exp(0.5 * logvar) * eps


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension: (B, L) -> (B, L), in nats.

    ``-0.5 * (1 + logvar - mu**2 - exp(logvar))``; sum over the last axis for per-sample KL.
    """
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())


def build_model(config: ModelConfig, spec: SpectrogramSpec, groups: list[str]) -> VAE:
    """The VAE for spectrograms of ``spec`` and the given groups (ConfigError if they clash)."""
    return VAE(config, spec.shape, max(1, len(groups)))


# --------------------------------------------------------------------------------------------
# model.pth: plain data only, so torch.load(weights_only=True) can read it.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainedModel:
    """A VAE loaded from ``model.pth`` with what is needed to use it."""

    model: VAE
    spec: SpectrogramSpec
    groups: list[str]
    config: dict[str, Any]        # the whole config of the training run, as plain data
    info: dict[str, Any]          # epoch, step, val_loss, versions

    def group_index(self, name: str) -> int:
        """The index of group ``name`` (ConfigError listing the known groups)."""
        if name not in self.groups:
            raise ConfigError(f"group {name!r} is not one this model was trained on "
                              f"({', '.join(self.groups)})")
        return self.groups.index(name)


def checkpoint_payload(model: VAE, *, spec: SpectrogramSpec, groups: list[str],
                       config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dict ``model.pth`` holds: weights (on the CPU), configs, spec, groups, versions.

    ``extra`` adds plain entries (epoch, step, val_loss, and for ``last.pth`` the optimiser,
    scheduler and RNG states).
    """
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "model": weights,
            "model_config": dataclasses.asdict(model.config), "spec": spec.to_dict(),
            "groups": list(groups), "shape": list(model.shape), "config": config,
            "versions": library_versions(), **extra}


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: the model settings that version 1 files may lack get the values they
    had before they existed, and a prior and texture inside the file become its ``sampler``."""
    # before model.decoder_norm / latent_frames / pitch_candidates existed, a decoder had
    # GroupNorm, one latent vector per clip and no pitch comb
    data["model_config"] = {"decoder_norm": "group", "latent_frames": 0,
                            "pitch_candidates": 0, **data.get("model_config", {})}
    prior, texture = data.pop("prior", None), data.pop("texture", None)
    if prior is not None or texture is not None:
        prior = dict(prior) if isinstance(prior, dict) else prior
        spread = prior.pop("spread", None) if isinstance(prior, dict) else None
        # the settings it was fit under are not in the file: "legacy" says so (see
        # animalvae.sound.sampler.load_sampler)
        data["sampler"] = {"format": format_tag("sampler", 1), "settings": {"legacy": True},
                           "prior": prior, "spread": spread, "texture": texture}
    return data


def _from_version_2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: a decoder trained before ``model.repeat_edges`` decodes without it."""
    data["model_config"] = {"repeat_edges": False, **data.get("model_config", {})}
    return data


def upgrade_checkpoint(data: Any, path: Path, *, what: str = "model.pth") -> dict[str, Any]:
    """A ``model.pth``/``last.pth`` payload of any version brought to the current one.

    The one place that knows the older versions (module docstring): each step takes one
    version to the next. Raises a one-line ConfigError naming ``path`` for something that is
    not such a payload, a version newer than this code's, or one too old to upgrade.
    """
    return upgrade(data, kind="vae", current=VERSION,
                   steps={1: _from_version_1, 2: _from_version_2}, path=path, what=what)


def read_checkpoint(path: Path, *, what: str = "model.pth") -> dict[str, Any]:
    """The payload of ``model.pth`` or ``last.pth`` at the current version.

    Raises
    ------
    ConfigError
        When the file is missing, not a torch file, holds something other than plain data,
        is of another kind or of a version this code cannot upgrade, or lacks an entry.
    """
    data = upgrade_checkpoint(read_payload(path, what=what), path, what=what)
    require_keys(data, ("model", "model_config", "spec", "groups", "shape", "config"),
                 path=path, what=what)
    return data


def load_model(path: Path, *, device: torch.device | str = "cpu") -> TrainedModel:
    """Load ``model.pth`` (or ``last.pth``) into an evaluation-mode VAE on ``device``.

    Raises
    ------
    ConfigError
        When the file is not a usable checkpoint, its model config is unknown to this version,
        or its weights do not fit the model its config describes.
    """
    data = read_checkpoint(path, what=Path(path).name)
    try:
        config = ModelConfig(**data["model_config"])
        spec = SpectrogramSpec.from_dict(data["spec"])
        if problems := config._check():
            raise ConfigError("; ".join(problems))
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{path}: its model or spectrogram settings are not valid for this "
                          f"version ({' '.join(str(exc).split())}); retrain") from None
    groups = [str(g) for g in data["groups"]]
    if list(data["shape"]) != list(spec.shape):
        raise ConfigError(f"{path}: shape {data['shape']} does not match its spectrogram spec "
                          f"{list(spec.shape)}; retrain")
    model = build_model(config, spec, groups)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:2]
        raise ConfigError(f"{path}: weights do not fit its model config ({' '.join(first)})") \
            from None
    model.to(device).eval()
    info = {k: data[k] for k in ("epoch", "step", "val_loss", "versions") if k in data}
    return TrainedModel(model, spec, groups, data["config"], info)
