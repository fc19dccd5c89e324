"""The spectrogram representation the VAE learns, and its inverse: one module owns both.

Stage 4 (``preprocess_audio_vae.py``) turns 3 s segments into arrays with :class:`Spectrogram`;
stage 5 (``vae.py``) decodes generated arrays back to sound with :class:`InverseSpectrogram`.
Both are built from the same :class:`SpectrogramSpec`, which stage 4 saves as
``normalizer.json`` beside its output and stage 5 stores inside ``model.pth``, so what is
trained on is exactly what is decoded.

Representation (defaults: ``kind="stft"``, 32 kHz, ``n_fft=1024``, ``hop_length=375``)
-------------------------------------------------------------------------------------
1. ``y`` [shape=(..., n_samples)], ``n_samples = n_frames * hop_length`` (3 s at the defaults).
2. Magnitude STFT, Hann window, ``center=True`` with reflect padding. That gives
   ``n_frames + 1`` frames; the last one (centred on the sample after the end) is dropped, and
   so is the top (Nyquist) bin: ``(n_fft // 2, n_frames)`` = (512, 256). Magnitudes are scaled
   by ``2 / window.sum()`` so that a full-scale sine's peak bin is 1 (0 dB).
   With ``kind="mel"``: a ``torchaudio`` :class:`~torchaudio.transforms.MelScale` (HTK scale,
   0 Hz to Nyquist, no normalisation) of that magnitude (top bin kept): ``(n_mels, n_frames)``.
3. Decibels ``S_db = 20 log10(max(S, 1e-10))``; the clip's peak ``peak_db = max(S_db)``.
4. **Normalisation by a fixed range below the clip's own peak**::

       x = clip((S_db - peak_db + top_db) / top_db, 0, 1)

   so the loudest bin is 1 and everything ``top_db`` (80 dB) or more below it is 0. Undoing it
   needs no per-file statistic: ``S = 10 ** ((x - 1) * top_db / 20)``, i.e. the clip comes back
   with its peak bin at 0 dB (a full-scale sine's level). Only the absolute level is lost, and
   generated audio is peak-normalised after Griffin-Lim anyway. A randomly sampled ``x`` from
   the VAE therefore decodes exactly as a training array would. (Peaks below -100 dB are
   treated as -100 dB, so digital silence maps to 0 rather than to a full-scale 1.)

Inverse: ``x`` -> ``S`` as above -> (mel: the minimum-norm least-squares solution of
``fb.T @ S_lin = S``, as :class:`~torchaudio.transforms.InverseMelScale` defines it, then ReLU;
computed with a pseudo-inverse that cuts singular values below 1e-6 of the largest, because
this filterbank is rank-deficient at low frequencies and the lstsq drivers then fail or blow
up) -> the Nyquist bin re-added as 0 and the dropped last frame re-added as a copy of the
frame before it -> :func:`torchaudio.functional.griffinlim` (fast Griffin-Lim, momentum
:data:`MOMENTUM`, ``n_fft`` passed explicitly) -> ``n_samples`` samples.

Round trip (stored float16 array -> Griffin-Lim -> STFT vs the original's, both with the peak
at 0 dB): ``tests/test_spectrogram.py`` bounds its spectral convergence, and
``preprocess_audio_vae.py --check`` reports it on the user's data (docs/quality.md, "Why the
defaults are what they are", gives the figures). ``kind="mel"`` comes back less close: the mel
bands above ~1 kHz merge many STFT bins, and that detail does not come back.

Use in stage 5::

    spec = load_spec(paths.spectrograms)        # or SpectrogramSpec.from_dict(saved dict)
    inverse = InverseSpectrogram(spec, n_iter=64, momentum=0.99).to(device)
    y = inverse(x)                               # (B, n_bins, n_frames) -> (B, n_samples)
    y = y / y.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) * 0.9   # before writing
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchaudio
from torch import Tensor

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import FeaturesConfig

__all__ = ["SpectrogramSpec", "Spectrogram", "InverseSpectrogram", "to_audio",
           "spectral_convergence", "unit_to_magnitude", "describe_differences", "save_spec",
           "load_spec", "NORMALIZER", "AMIN", "PEAK_FLOOR_DB", "PEAK_DBFS", "MOMENTUM"]

#: Fast Griffin-Lim's momentum: torchaudio's and librosa's default, which converges in far
#: fewer iterations than plain Griffin-Lim (0).
MOMENTUM = 0.99

#: Audio made from spectrograms (:func:`to_audio`) is scaled so its peak sits here.
PEAK_DBFS = -1.0
# Spectrograms per Griffin-Lim call. On a CPU small batches are as fast per item as large ones
# (larger ones fall out of cache); on a GPU large batches fill the device.
_GL_BATCH = {"cpu": 4, "cuda": 64, "mps": 16}
#: File name of the saved spec, beside the arrays.
NORMALIZER = "normalizer.json"
#: Smallest magnitude taken into the log (-200 dB): keeps log10 finite on exact zeros.
AMIN = 1e-10
#: Clip peaks below this are treated as this level, so silence maps to 0, not to 1.
PEAK_FLOOR_DB = -100.0
_MEL_RTOL = 1e-6
_FORMAT = "animalvae.spectrogram/1"
_NORMALIZATION = ("x = clip((20*log10(max(S, 1e-10)) - peak_db + top_db) / top_db, 0, 1), "
                  "peak_db = max(-100, max over the clip of 20*log10(S)); inverse: "
                  "S = 10**((x - 1) * top_db / 20), i.e. peak at 0 dB re a full-scale sine. "
                  "S = |STFT| * 2 / sum(hann window), center=True, reflect padding, last frame "
                  "dropped; stft: top (Nyquist) bin dropped; mel: torchaudio MelScale (htk, "
                  "f_min 0, f_max sr/2, norm None) of the full magnitude")


@dataclass(frozen=True)
class SpectrogramSpec:
    """Everything that defines the representation; saved as ``normalizer.json``.

    Parameters
    ----------
    kind : {"stft", "mel"}
        Log-magnitude STFT (top bin dropped) or log-mel.
    sample_rate : int
        Hz, > 0 (from ``extract.sample_rate``).
    n_fft : int
        FFT size and Hann window length, a power of two.
    hop_length : int
        Samples between frames, in (0, n_fft].
    n_mels : int
        Mel bands (used when ``kind="mel"``).
    n_frames : int
        Frames per spectrogram.
    top_db : float
        dB range kept below the clip's peak, > 0; mapped onto [0, 1].
    """

    kind: str = "stft"
    sample_rate: int = 32000
    n_fft: int = 1024
    hop_length: int = 375
    n_mels: int = 128
    n_frames: int = 256
    top_db: float = 80.0

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError(problems)

    def _problems(self) -> list[str]:
        problems = []
        if self.kind not in ("stft", "mel"):
            problems.append(f"kind={self.kind!r} must be 'stft' or 'mel'")
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "n_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name}={value!r} must be an integer > 0")
        if not problems:
            if self.n_fft & (self.n_fft - 1):
                problems.append(f"n_fft={self.n_fft} must be a power of two")
            if self.hop_length > self.n_fft:
                problems.append(f"hop_length={self.hop_length} must be <= n_fft={self.n_fft}")
        if (isinstance(self.top_db, bool) or not isinstance(self.top_db, (int, float))
                or not math.isfinite(self.top_db) or self.top_db <= 0):
            problems.append(f"top_db={self.top_db!r} must be a number > 0")
        return problems

    @classmethod
    def from_config(cls, features: FeaturesConfig, sample_rate: int) -> SpectrogramSpec:
        """The spec given by a ``FeaturesConfig`` and ``extract.sample_rate``."""
        return cls(kind=features.kind, sample_rate=sample_rate, n_fft=features.n_fft,
                   hop_length=features.hop_length, n_mels=features.n_mels,
                   n_frames=features.n_frames, top_db=float(features.top_db))

    def to_dict(self, *, defining_only: bool = False) -> dict[str, Any]:
        """A JSON-able dict: the fields plus the format tag, shape and normalisation formula.

        ``defining_only`` leaves out the fields the kind does not use
        (:meth:`defining_fields`), for a fingerprint of the representation.
        """
        fields = self.defining_fields() if defining_only else dataclasses.asdict(self)
        return {"format": _FORMAT, **fields, "shape": list(self.shape),
                "n_samples": self.n_samples, "normalization": _NORMALIZATION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpectrogramSpec:
        """Rebuild a spec from :meth:`to_dict`'s output.

        Raises
        ------
        ConfigError
            When ``d`` is not a mapping, has another format tag, lacks a field, holds a bad
            value, or its recorded shape does not match the fields.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"spectrogram spec must be a mapping, got {type(d).__name__}")
        if d.get("format", _FORMAT) != _FORMAT:
            raise ConfigError(f"spectrogram spec format={d.get('format')!r} is not {_FORMAT!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ConfigError(f"spectrogram spec lacks {', '.join(missing)}")
        top_db = d["top_db"]
        if isinstance(top_db, int) and not isinstance(top_db, bool):
            top_db = float(top_db)
        spec = cls(**{**{n: d[n] for n in names}, "top_db": top_db})
        if "shape" in d and list(d["shape"]) != list(spec.shape):
            raise ConfigError(f"spectrogram spec shape={d['shape']} does not match its fields "
                              f"(expected {list(spec.shape)})")
        return spec

    def defining_fields(self) -> dict[str, Any]:
        """The settings that shape the arrays: every field, less ``n_mels`` for an stft."""
        fields = dataclasses.asdict(self)
        if self.kind == "stft":
            del fields["n_mels"]
        return fields

    def differences(self, other: SpectrogramSpec) -> dict[str, tuple[Any, Any]]:
        """``{setting: (self's, other's)}`` for each setting in which the two make different
        arrays; empty when they are the same representation. The one comparison of specs
        (stage 4's folder check and stage 5's data checks both use it).

        Examples
        --------
        >>> SpectrogramSpec(n_mels=64).differences(SpectrogramSpec(n_mels=128))  # stft
        {}
        >>> SpectrogramSpec(hop_length=250).differences(SpectrogramSpec())
        {'hop_length': (250, 375)}
        """
        mine, theirs = self.defining_fields(), other.defining_fields()
        return {k: (mine.get(k), theirs.get(k)) for k in dict.fromkeys([*mine, *theirs])
                if mine.get(k) != theirs.get(k)}

    @property
    def n_bins(self) -> int:
        """Rows of an array: ``n_fft // 2`` for stft (top bin dropped), ``n_mels`` for mel."""
        return self.n_fft // 2 if self.kind == "stft" else self.n_mels

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_bins, n_frames)``, the shape of one stored array."""
        return (self.n_bins, self.n_frames)

    @property
    def n_samples(self) -> int:
        """Audio length in samples that maps to exactly ``n_frames`` frames."""
        return self.n_frames * self.hop_length

    @property
    def seconds(self) -> float:
        """Audio length in seconds (``n_samples / sample_rate``)."""
        return self.n_samples / self.sample_rate


def _mel_kwargs(spec: SpectrogramSpec) -> dict[str, Any]:
    # One place for the filterbank settings, so the forward and the inverse always agree.
    return {"n_mels": spec.n_mels, "sample_rate": spec.sample_rate,
            "n_stft": spec.n_fft // 2 + 1, "f_min": 0.0, "f_max": None, "norm": None,
            "mel_scale": "htk"}


def _mel_fbanks(spec: SpectrogramSpec) -> Tensor:
    kw = _mel_kwargs(spec)
    return torchaudio.functional.melscale_fbanks(
        kw["n_stft"], kw["f_min"], float(spec.sample_rate // 2), kw["n_mels"],
        kw["sample_rate"], kw["norm"], kw["mel_scale"])


class Spectrogram(torch.nn.Module):
    """Waveforms -> normalised log spectrograms in [0, 1], batched, on any device.

    Parameters
    ----------
    spec : SpectrogramSpec

    Examples
    --------
    >>> spec = SpectrogramSpec()
    >>> Spectrogram(spec)(torch.zeros(2, spec.n_samples)).shape
    torch.Size([2, 512, 256])
    """

    def __init__(self, spec: SpectrogramSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("window", torch.hann_window(spec.n_fft), persistent=False)
        self.mel = torchaudio.transforms.MelScale(**_mel_kwargs(spec)) \
            if spec.kind == "mel" else None

    def magnitude(self, y: Tensor) -> Tensor:
        """Linear STFT magnitude, full bins: (..., n_samples) -> (..., n_fft//2 + 1, n_frames).

        Scaled so that a full-scale sine's peak bin is 1. Input shorter or longer than
        ``n_samples`` gives fewer or more frames.
        """
        shape = y.shape
        y = y.reshape(-1, shape[-1]).to(self.window.dtype)
        D = torch.stft(y, self.spec.n_fft, self.spec.hop_length, window=self.window,
                       center=True, pad_mode="reflect", return_complex=True)
        S = D.abs()[..., :-1] * (2.0 / self.window.sum())  # last frame: past the end
        return S.reshape(shape[:-1] + S.shape[-2:])

    def _bins(self, S: Tensor) -> Tensor:
        # (..., n_fft//2 + 1, t) linear magnitude -> (..., n_bins, t) representation bins
        return self.mel(S) if self.mel is not None else S[..., :-1, :]

    def peak_db(self, y: Tensor) -> Tensor:
        """The level of the clip's loudest bin: (..., n_samples) -> (...,) dB, >= -100."""
        return _peak_db(_to_db(self._bins(self.magnitude(y))))

    def forward(self, y: Tensor) -> Tensor:
        """Normalised spectrogram: (..., n_samples) float -> (..., n_bins, n_frames) in [0, 1].

        Raises
        ------
        ValueError
            When ``y``'s last dimension is not ``spec.n_samples``.
        """
        return self.forward_with_peak(y)[0]

    def forward_with_peak(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` and :meth:`peak_db` from one STFT: ``(x, peak_db)``.

        Works from ``|D|^2`` and in place on its intermediates (on CPU, memory traffic
        costs more than the FFT here), so it does not propagate gradients.
        """
        if y.shape[-1] != self.spec.n_samples:
            raise ValueError(f"expected {self.spec.n_samples} samples in the last dimension, "
                             f"got shape {tuple(y.shape)}")
        shape = y.shape
        D = torch.stft(y.reshape(-1, shape[-1]).to(self.window.dtype), self.spec.n_fft,
                       self.spec.hop_length, window=self.window, center=True,
                       pad_mode="reflect", return_complex=True)  # (B, n_fft//2 + 1, n_frames + 1)
        scale = 2.0 / float(self.window.sum())
        # |D|^2 as re^2 + im^2: three times cheaper than abs() (hypot) on CPU.
        parts = torch.view_as_real(D[..., :-1])                # last frame dropped
        P = parts[..., 0].square().addcmul_(parts[..., 1], parts[..., 1])  # |D|^2, unscaled
        if self.mel is not None:
            P = self.mel(P.sqrt_()).square_()                   # mel of the magnitude
        else:
            P = P[..., :-1, :]                                  # top (Nyquist) bin dropped
        # 20 log10(scale * |D|) = 10 log10(|D|^2) + scale_db: the scale folds into constants.
        scale_db = 20.0 * math.log10(scale)
        L = P.clamp_(min=(AMIN / scale) ** 2).log10_()         # (B, n_bins, n_frames)
        peak = L.amax(dim=(-2, -1)).mul_(10.0).add_(scale_db).clamp_(min=PEAK_FLOOR_DB)  # (B,)
        top = self.spec.top_db
        offset = (scale_db - peak + top) / top                  # x = (S_db - peak + top) / top
        x = L.mul_(10.0 / top).add_(offset[:, None, None]).clamp_(0.0, 1.0)
        return x.reshape(shape[:-1] + x.shape[-2:]), peak.reshape(shape[:-1])


def _to_db(S: Tensor) -> Tensor:
    return 20.0 * torch.log10(S.clamp(min=AMIN))


def _peak_db(S_db: Tensor) -> Tensor:
    return S_db.amax(dim=(-2, -1)).clamp(min=PEAK_FLOOR_DB)


class InverseSpectrogram(torch.nn.Module):
    """Normalised spectrograms -> waveforms: undo the scaling, then fast Griffin-Lim, batched.

    Parameters
    ----------
    spec : SpectrogramSpec
        The spec the arrays were made with (``load_spec`` or the one in ``model.pth``).
    n_iter : int
        Griffin-Lim iterations, > 0 (default 32).
    momentum : float
        Fast Griffin-Lim momentum in [0, 1) (default :data:`MOMENTUM`).

    Examples
    --------
    >>> spec = SpectrogramSpec()
    >>> InverseSpectrogram(spec, n_iter=1)(torch.zeros(1, *spec.shape)).shape
    torch.Size([1, 96000])
    """

    def __init__(self, spec: SpectrogramSpec, *, n_iter: int = 32, momentum: float = MOMENTUM):
        super().__init__()
        if n_iter < 1:
            raise ValueError(f"n_iter={n_iter} must be >= 1")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum} must be in [0, 1)")
        self.spec = spec
        self.n_iter = n_iter
        self.momentum = momentum
        self.register_buffer("window", torch.hann_window(spec.n_fft), persistent=False)
        if spec.kind == "mel":
            # InverseMelScale solves fb.T @ S = M by least squares. Its default driver ("gels",
            # the only one on CUDA) fails here: below ~500 Hz neighbouring mel bands see the
            # same single STFT bin, so fb is rank-deficient, and "gelsd" at machine precision
            # inverts singular values of 1e-15 (outputs ~1e11). The minimum-norm solution over
            # the well-conditioned part, pinv(fb.T) with singular values below 1e-6 of the
            # largest cut, computed once, is one matmul on any device.
            fb = _mel_fbanks(spec).double()                            # (n_freqs, n_mels)
            pinv = torch.linalg.pinv(fb.T, rtol=_MEL_RTOL).float()     # (n_freqs, n_mels)
            self.register_buffer("mel_pinv", pinv, persistent=False)
        else:
            self.mel_pinv = None

    def magnitude(self, x: Tensor) -> Tensor:
        """Linear magnitude: (..., n_bins, n_frames) in [0, 1] -> (..., n_fft//2 + 1, n_frames).

        The peak of ``x`` (1) becomes 0 dB, a full-scale sine's level, on the scale of
        :meth:`Spectrogram.magnitude`.
        """
        if tuple(x.shape[-2:]) != self.spec.shape:
            raise ValueError(f"expected (..., {self.spec.n_bins}, {self.spec.n_frames}), "
                             f"got shape {tuple(x.shape)}")
        S = unit_to_magnitude(x.float(), top_db=self.spec.top_db)
        if self.mel_pinv is not None:
            return torch.relu(self.mel_pinv @ S)  # (..., n_freqs, n_frames)
        return torch.nn.functional.pad(S, (0, 0, 0, 1))  # Nyquist bin re-added as 0

    def forward(self, x: Tensor) -> Tensor:
        """Waveform: (..., n_bins, n_frames) in [0, 1] -> (..., n_samples) float32.

        Phases start random (``torch.rand``: seed torch's RNG for repeatable output). The
        result is not peak-normalised: its loudest bin sits near a full-scale sine's level,
        and broadband sounds can exceed +-1, so scale before writing a file.
        """
        S = self.magnitude(x) * (self.window.sum() / 2.0)       # back to torch.stft's scale
        S = torch.cat([S, S[..., -1:]], dim=-1)                 # the dropped last frame
        return torchaudio.functional.griffinlim(
            S, self.window, n_fft=self.spec.n_fft, hop_length=self.spec.hop_length,
            win_length=self.spec.n_fft, power=1.0, n_iter=self.n_iter,
            momentum=self.momentum, length=self.spec.n_samples, rand_init=True)


@torch.no_grad()
def to_audio(x: Tensor, spec: SpectrogramSpec, *, n_iter: int, momentum: float = MOMENTUM,
             seed: int = 0, peak_normalise: bool = True) -> Tensor:
    """Spectrograms to peak-normalised waveforms with batched Griffin-Lim on ``x``'s device.

    Parameters
    ----------
    x : Tensor [shape=(B, n_bins, n_frames), values in [0, 1]]
    spec : SpectrogramSpec
    n_iter : int
        Griffin-Lim iterations.
    momentum : float
        Fast Griffin-Lim momentum in [0, 1) (default :data:`MOMENTUM`).
    seed : int
        Seeds torch's RNG, which draws the initial phases: the same call gives the same audio.
    peak_normalise : bool
        Scale each row's peak to :data:`PEAK_DBFS` (an all-zero row stays zero); False keeps
        the level the inverse gives (``x = 1`` is a full-scale sine's level).

    Returns
    -------
    Tensor [shape=(B, n_samples), float32, on the CPU]
    """
    inverse = InverseSpectrogram(spec, n_iter=n_iter, momentum=momentum).to(x.device)
    torch.manual_seed(seed)
    out = []
    batch = _GL_BATCH.get(x.device.type, 4)
    for start in range(0, len(x), batch):
        y = inverse(x[start:start + batch]).float()                   # (b, n_samples)
        if peak_normalise:
            peak = y.abs().amax(dim=-1, keepdim=True)                 # (b, 1)
            y = y * torch.where(peak > 0, 10 ** (PEAK_DBFS / 20) / peak.clamp(min=1e-12), 0.0)
        out.append(y.cpu())
    return torch.cat(out) if out else torch.empty(0, spec.n_samples)


def unit_to_magnitude(x: Tensor, *, top_db: float) -> Tensor:
    """Undo the normalisation: ``x`` in [0, 1] -> linear magnitude in the array's own bins.

    ``S = 10 ** ((x - 1) * top_db / 20)``: ``x = 1`` is 0 dB (a full-scale sine's peak bin),
    ``x = 0`` is ``top_db`` below it; values outside [0, 1] are clipped first.

    Parameters
    ----------
    x : Tensor [shape=(..., n_bins, n_frames)]
    top_db : float
        The spec's ``top_db``.

    Returns
    -------
    Tensor [shape=(..., n_bins, n_frames), in [10 ** (-top_db / 20), 1]]
    """
    return torch.pow(10.0, (x.clamp(0.0, 1.0) - 1.0) * (top_db / 20.0))


def describe_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    """``"n_fft: 1024 -> 2048, hop_length: 375 -> 250"`` for :meth:`SpectrogramSpec.differences`
    (a setting one side does not use reads ``-``)."""
    def show(value: Any) -> str:
        return "-" if value is None else str(value)
    return ", ".join(f"{k}: {show(a)} -> {show(b)}" for k, (a, b) in differences.items())


def spectral_convergence(reference: Tensor, estimate: Tensor) -> Tensor:
    """``||reference - estimate||_F / ||reference||_F`` over the last two dims.

    Parameters
    ----------
    reference, estimate : Tensor [shape=(..., freq, time), non-negative]
        Linear magnitudes on the same scale (e.g. :meth:`Spectrogram.magnitude`).

    Returns
    -------
    Tensor [shape=(...,)]
        0 is a perfect match; lower is better.
    """
    diff = torch.linalg.matrix_norm(reference - estimate)
    return diff / torch.linalg.matrix_norm(reference).clamp(min=1e-12)


def save_spec(folder: Path, spec: SpectrogramSpec) -> Path:
    """Write ``folder/normalizer.json`` atomically; returns its path."""
    from .stage import atomic_write_text  # stage pulls in tqdm/yaml; only needed here

    path = Path(folder) / NORMALIZER
    atomic_write_text(path, json.dumps(spec.to_dict(), indent=2) + "\n")
    return path


def load_spec(folder: Path) -> SpectrogramSpec:
    """Read the spec saved by :func:`save_spec` in ``folder``.

    Raises
    ------
    ConfigError
        Naming the file, when it is missing, not JSON, or not a valid spec.
    """
    path = Path(folder) / NORMALIZER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run preprocess_audio_vae.py on this data "
                          "first (it writes the spectrograms and this file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as JSON ({exc}); rerun "
                          "preprocess_audio_vae.py with --force") from None
    try:
        return SpectrogramSpec.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}; rerun preprocess_audio_vae.py with --force") \
            from None
