"""Typed, validated settings: ``config.yaml`` loaded once into frozen dataclasses.

Every stage receives a :class:`Config`, never the raw dict. Loading reports *all* problems at
once (unknown keys with a "did you mean", wrong types, impossible values), each by its dotted
key, by raising :class:`~animalvae.errors.ConfigError`. Relative paths in the file are resolved
against the file's folder, so a config works from any working directory.

Each section's defaults here equal the values in the repository's ``config.yaml`` (a test
checks it); ``config.yaml`` documents every key, once, so the fields here carry no comments.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .vggsound import ALL_ANIMALS, ANIMAL_LABELS

log = logging.getLogger(__name__)

__all__ = [
    "Config", "PathsConfig", "DownloadConfig", "ExtractConfig", "DetectConfig",
    "FeaturesConfig", "ModelConfig", "TrainConfig", "GenerateConfig", "SoundImageConfig",
    "load_config", "apply_overrides", "config_to_dict", "current_keys", "DEFAULT_CONFIG",
    "REMOVED_KEYS", "RENAMED_KEYS",
]

#: The repository's documented config, used when a script gets no ``--config``.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


def _positive(problems: list[str], key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        rule = "must be >= 0" if allow_zero else "must be > 0"
        problems.append(f"{key}={value} {rule}")


def _power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


# --------------------------------------------------------------------------------------------
# Sections. Each has ``_check() -> list[str]`` giving problems with keys relative to it.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PathsConfig:
    """Where each stage reads and writes (relative paths: relative to the config file)."""

    vggsound_csv: Path = Path("data/vggsound.csv")
    clips: Path = Path("data/clips")
    audio: Path = Path("data/audio")
    detections: Path = Path("data/detections")
    spectrograms: Path = Path("data/spectrograms")
    runs: Path = Path("runs")

    def _check(self) -> list[str]:
        return []


DEFAULT_CLASSES: dict[str, list[str]] = {
    "dogs": ["dog barking", "dog bow-wow", "dog growling", "dog howling", "dog whimpering",
             "dog baying"],
    "cats": ["cat meowing", "cat purring", "cat growling", "cat hissing", "cat caterwauling"],
    "birds": ["bird chirping, tweeting", "bird squawking", "pigeon, dove cooing", "crow cawing",
              "mynah bird singing", "owl hooting", "canary calling", "wood thrush calling",
              "francolin calling", "black capped chickadee calling", "magpie calling",
              "barn swallow calling", "warbler chirping", "eagle screaming",
              "cuckoo bird calling", "baltimore oriole calling", "pheasant crowing",
              "parrot talking"],
}


@dataclass(frozen=True)
class DownloadConfig:
    """Stage 1: which VGGSound rows to fetch and how politely."""

    classes: dict[str, list[str]] = field(default_factory=lambda: {
        k: list(v) for k, v in DEFAULT_CLASSES.items()})
    splits: list[Literal["train", "test"]] = field(default_factory=lambda: ["train", "test"])
    max_per_class: int = 0
    seed: int = 0
    url_template: str = "https://www.youtube.com/watch?v={ytid}"
    clip_seconds: float = 10.0
    max_height: int = 360
    workers: int = 4
    retries: int = 3
    backoff_s: float = 2.0
    pause_s: float = 0.0
    socket_timeout_s: float = 30.0
    cookies_file: Path | None = None
    max_consecutive_rate_limits: int = 10

    def _check(self) -> list[str]:
        problems: list[str] = []
        if not self.classes:
            problems.append("download.classes is empty: name at least one group of labels")
        known = set(ANIMAL_LABELS) | {ALL_ANIMALS}
        for group, labels in self.classes.items():
            if not group or "/" in group or group.startswith("."):
                problems.append(f"download.classes.{group!r} is not a usable folder name")
            if not labels:
                problems.append(f"download.classes.{group}: empty list of labels")
            for label in labels:
                if label not in known:
                    close = difflib.get_close_matches(label, ANIMAL_LABELS, n=3, cutoff=0.5)
                    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                    problems.append(
                        f"download.classes.{group}: unknown VGGSound animal label {label!r}{hint}")
        # A clip has one folder and one class for the VAE, so a label names one group.
        owner: dict[str, str] = {}
        shared: dict[tuple[str, str], list[str]] = {}
        for group, labels in self.classes.items():
            for label in dict.fromkeys(ANIMAL_LABELS if ALL_ANIMALS in labels else labels):
                first = owner.setdefault(label, group)
                if first != group:
                    shared.setdefault((first, group), []).append(label)
        for (first, group), labels in shared.items():
            problems.append(f"download.classes: groups {first} and {group} share {len(labels)} "
                            f"label(s) (e.g. {labels[0]!r}); give each label one group")
        if not self.splits:
            problems.append("download.splits is empty: use [train], [test] or [train, test]")
        if "{ytid}" not in self.url_template:
            problems.append(f"download.url_template={self.url_template!r} must contain {{ytid}}")
        _positive(problems, "download.max_per_class", self.max_per_class, allow_zero=True)
        _positive(problems, "download.clip_seconds", self.clip_seconds)
        _positive(problems, "download.max_height", self.max_height)
        _positive(problems, "download.workers", self.workers, allow_zero=True)
        _positive(problems, "download.retries", self.retries, allow_zero=True)
        _positive(problems, "download.backoff_s", self.backoff_s, allow_zero=True)
        _positive(problems, "download.pause_s", self.pause_s, allow_zero=True)
        _positive(problems, "download.socket_timeout_s", self.socket_timeout_s)
        _positive(problems, "download.max_consecutive_rate_limits",
                  self.max_consecutive_rate_limits)
        return problems


@dataclass(frozen=True)
class ExtractConfig:
    """Stage 2: how clips become mono WAV files."""

    sample_rate: int = 32000
    min_seconds: float = 1.0
    silence_dbfs: float = -60.0
    extra_audio_dirs: list[Path] = field(default_factory=list)
    workers: int = 0

    def _check(self) -> list[str]:
        problems: list[str] = []
        _positive(problems, "extract.sample_rate", self.sample_rate)
        _positive(problems, "extract.min_seconds", self.min_seconds, allow_zero=True)
        if self.silence_dbfs >= 0:
            problems.append(f"extract.silence_dbfs={self.silence_dbfs} must be < 0 (dBFS)")
        _positive(problems, "extract.workers", self.workers, allow_zero=True)
        for i, folder in enumerate(self.extra_audio_dirs):
            if not folder.is_dir():
                problems.append(f"extract.extra_audio_dirs[{i}]={folder} is not a folder")
        return problems


@dataclass(frozen=True)
class DetectConfig:
    """Stage 3: which 3 s window is the animal, and which frame shows it."""

    backend: Literal["panns", "energy"] = "panns"
    checkpoint: Path = Path("~/panns_data/Cnn14_DecisionLevelMax_mAP=0.385.pth")
    device: str = "auto"
    batch_size: int = 8
    segment_seconds: float = 3.0
    max_seconds: float = 60.0
    pad: Literal["zeros", "repeat"] = "zeros"
    min_score: float = 0.1
    audioset_classes: dict[str, list[str | int]] = field(default_factory=lambda: {
        "dogs": ["Dog", "Bark", "Yip", "Howl", "Bow-wow", "Growling", "Whimper (dog)",
                 "Canidae, dogs, wolves"],
        "cats": ["Cat", "Purr", "Meow", "Hiss", "Caterwaul"],
        "birds": ["Bird", "Bird vocalization, bird call, bird song", "Chirp, tweet", "Squawk",
                  "Pigeon, dove", "Coo", "Crow", "Caw", "Owl", "Hoot"],
        "*": list(range(72, 137)),
    })
    frame_min_mean: float = 12.0
    frame_min_std: float = 4.0
    jpeg_quality: int = 92
    workers: int = 0

    def _check(self) -> list[str]:
        problems: list[str] = []
        _positive(problems, "detect.batch_size", self.batch_size)
        _positive(problems, "detect.segment_seconds", self.segment_seconds)
        if self.max_seconds < self.segment_seconds:
            problems.append(f"detect.max_seconds={self.max_seconds} must be >= "
                            f"detect.segment_seconds={self.segment_seconds} (the window is "
                            "chosen inside the first max_seconds)")
        _positive(problems, "detect.workers", self.workers, allow_zero=True)
        if not 0 <= self.min_score <= 1:  # both backends score in [0, 1]
            problems.append(f"detect.min_score={self.min_score} must be in [0, 1]")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"detect.jpeg_quality={self.jpeg_quality} must be in [1, 100]")
        _positive(problems, "detect.frame_min_mean", self.frame_min_mean, allow_zero=True)
        _positive(problems, "detect.frame_min_std", self.frame_min_std, allow_zero=True)
        from .panns import resolve_classes  # lazy: the label list is only read when checked

        for group, classes in self.audioset_classes.items():
            if not classes:
                problems.append(f"detect.audioset_classes.{group}: empty list; name at least "
                                "one AudioSet class (e.g. Animal, or index 72)")
            problems += [f"detect.audioset_classes.{group}: {p}"
                         for p in resolve_classes(classes)[1]]
        return problems


@dataclass(frozen=True)
class FeaturesConfig:
    """Stage 4: the invertible spectrogram representation (sample rate comes from extract)."""

    kind: Literal["stft", "mel"] = "stft"
    n_fft: int = 1024
    hop_length: int = 375
    n_mels: int = 128
    n_frames: int = 256
    top_db: float = 80.0
    dtype: Literal["float16", "float32"] = "float16"
    pad: Literal["zeros", "repeat"] = "zeros"
    batch_size: int = 32
    workers: int = 0
    device: str = "auto"
    image_size: int = 64
    extra_image_dirs: list[Path] = field(default_factory=list)

    def _check(self) -> list[str]:
        problems: list[str] = []
        if not _power_of_two(self.image_size) or self.image_size < 16:
            problems.append(f"features.image_size={self.image_size} must be a power of two "
                            ">= 16 (pixels)")
        for i, folder in enumerate(self.extra_image_dirs):
            if not folder.is_dir():
                problems.append(f"features.extra_image_dirs[{i}]={folder} is not a folder")
        if not _power_of_two(self.n_fft):
            problems.append(f"features.n_fft={self.n_fft} must be a power of two")
        if self.kind == "mel" and self.n_mels > self.n_fft // 2:
            problems.append(f"features.n_mels={self.n_mels} must be <= n_fft // 2 = "
                            f"{self.n_fft // 2} (more mel bands than STFT bins leave some empty)")
        _positive(problems, "features.hop_length", self.hop_length)
        if self.hop_length > self.n_fft:
            problems.append(f"features.hop_length={self.hop_length} must be <= n_fft")
        if not _power_of_two(self.n_frames):
            problems.append(f"features.n_frames={self.n_frames} must be a power of two")
        if self.kind == "mel" and not _power_of_two(self.n_mels):
            problems.append(f"features.n_mels={self.n_mels} must be a power of two")
        _positive(problems, "features.top_db", self.top_db)
        _positive(problems, "features.batch_size", self.batch_size)
        _positive(problems, "features.workers", self.workers, allow_zero=True)
        return problems


@dataclass(frozen=True)
class ModelConfig:
    """Stage 5: the convolutional VAE."""

    latent_dim: int = 512
    channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256])
    conditional: bool = True
    embed_dim: int = 16
    decoder_norm: Literal["group", "channel"] = "group"
    latent_frames: int = 32
    repeat_edges: bool = True
    pitch_candidates: int = 240
    pitch_temperature: float = 0.5

    def _check(self) -> list[str]:
        problems: list[str] = []
        _positive(problems, "model.latent_dim", self.latent_dim)
        if not self.channels or any(c <= 0 for c in self.channels):
            problems.append(f"model.channels={self.channels} must be a non-empty list of ints > 0")
        _positive(problems, "model.embed_dim", self.embed_dim)
        _positive(problems, "model.latent_frames", self.latent_frames, allow_zero=True)
        _positive(problems, "model.pitch_candidates", self.pitch_candidates, allow_zero=True)
        _positive(problems, "model.pitch_temperature", self.pitch_temperature)
        frames = self.latent_frames
        if frames > 0 and self.latent_dim > 0 and (not _power_of_two(frames)
                                                   or self.latent_dim % frames):
            problems.append(f"model.latent_frames={frames} must be a power of two that divides "
                            f"model.latent_dim={self.latent_dim}")
        return problems


@dataclass(frozen=True)
class TrainConfig:
    """Stage 5: the training run (written to ``paths.runs/<name>``)."""

    name: str = "default"
    epochs: int = 25
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    recon_loss: Literal["l1", "mse"] = "l1"
    beta: float = 0.25
    kl_warmup_epochs: int = 5
    spectral_weight: float = 1.0
    modulation_weight: float = 0.5
    modulation_taper: bool = False
    pitch_weight: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    max_steps: int = 0
    prior_fit: Literal["kde", "gmm", "none"] = "kde"
    kde_bandwidth: float = 0.25
    gmm_components: int = 16

    def _check(self) -> list[str]:
        problems: list[str] = []
        if not self.name or "/" in self.name or self.name.startswith("."):
            problems.append(f"train.name={self.name!r} must be a plain folder name")
        _positive(problems, "train.epochs", self.epochs)
        _positive(problems, "train.batch_size", self.batch_size)
        _positive(problems, "train.lr", self.lr)
        _positive(problems, "train.weight_decay", self.weight_decay, allow_zero=True)
        _positive(problems, "train.warmup_steps", self.warmup_steps, allow_zero=True)
        _positive(problems, "train.grad_clip", self.grad_clip, allow_zero=True)
        _positive(problems, "train.beta", self.beta, allow_zero=True)
        _positive(problems, "train.kl_warmup_epochs", self.kl_warmup_epochs, allow_zero=True)
        _positive(problems, "train.spectral_weight", self.spectral_weight, allow_zero=True)
        _positive(problems, "train.modulation_weight", self.modulation_weight, allow_zero=True)
        _positive(problems, "train.pitch_weight", self.pitch_weight, allow_zero=True)
        if not 0 < self.val_fraction < 1:
            problems.append(f"train.val_fraction={self.val_fraction} must be in (0, 1)")
        _positive(problems, "train.max_steps", self.max_steps, allow_zero=True)
        _positive(problems, "train.kde_bandwidth", self.kde_bandwidth)
        if self.gmm_components < 1:
            problems.append(f"train.gmm_components={self.gmm_components} must be > 0 "
                            "(train.prior_fit: none stores no prior)")
        return problems


@dataclass(frozen=True)
class GenerateConfig:
    """Stage 5: sampling new sounds from a trained run."""

    count: int = 4
    sample_temperature: float = 1.0
    spread: float | Literal["fit"] = "fit"
    sample_prior: Literal["mixture", "normal"] = "mixture"
    restore_peak: bool = True
    sample_pitch_temperature: float = 1.0
    texture: float = 1.0
    griffin_lim_iters: int = 64
    seed: int = 0
    eval_samples: int = 50

    def _check(self) -> list[str]:
        problems: list[str] = []
        _positive(problems, "generate.count", self.count)
        _positive(problems, "generate.sample_temperature", self.sample_temperature)
        if self.spread != "fit":
            _positive(problems, "generate.spread", self.spread)
        _positive(problems, "generate.sample_pitch_temperature", self.sample_pitch_temperature)
        _positive(problems, "generate.texture", self.texture, allow_zero=True)
        _positive(problems, "generate.griffin_lim_iters", self.griffin_lim_iters)
        _positive(problems, "generate.eval_samples", self.eval_samples)
        return problems


#: How images from a sound spread around its code (``sound_image.draw``).
DRAWS = ("residual", "posterior")


@dataclass(frozen=True)
class SoundImageConfig:
    """Stage 5: the sound <-> image model (one latent space; ``vae.py train-images``)."""

    latent_dim: int = 64
    sound_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256])
    image_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    beta: float = 1.0
    kl_warmup_epochs: int = 5
    image_weight: float = 1.0
    edge_weight: float = 1.0
    count: int = 4
    draw_temperature: float = 1.0
    draw: str = "residual"
    threads: int = 0

    def _check(self) -> list[str]:
        problems: list[str] = []
        _positive(problems, "sound_image.latent_dim", self.latent_dim)
        for key in ("sound_channels", "image_channels"):
            channels = getattr(self, key)
            if not channels or any(c <= 0 for c in channels):
                problems.append(f"sound_image.{key}={channels} must be a non-empty list of "
                                "ints > 0")
        for key in ("epochs", "batch_size", "lr", "count", "draw_temperature"):
            _positive(problems, f"sound_image.{key}", getattr(self, key))
        for key in ("beta", "kl_warmup_epochs", "image_weight", "edge_weight", "threads"):
            _positive(problems, f"sound_image.{key}", getattr(self, key), allow_zero=True)
        if self.draw not in DRAWS:
            problems.append(f"sound_image.draw={self.draw!r} must be one of {', '.join(DRAWS)}")
        return problems


@dataclass(frozen=True)
class Config:
    """All settings, one section per stage; ``source`` is the file they came from."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    sound_image: SoundImageConfig = field(default_factory=SoundImageConfig)
    source: Path | None = field(default=None, compare=False)

    def _check(self, skip: frozenset[str] = frozenset()) -> list[str]:
        """Value checks of every section not in ``skip`` (sections whose types were wrong)."""
        problems: list[str] = []
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section) and f.name not in skip:
                problems += section._check()
        if not skip & {"detect", "download"} and \
                self.detect.segment_seconds > self.download.clip_seconds:
            problems.append(
                f"detect.segment_seconds={self.detect.segment_seconds} must be <= "
                f"download.clip_seconds={self.download.clip_seconds}")
        if not skip & {"detect", "extract", "features", "model"} and \
                not any(p.startswith(("features.", "model.")) for p in problems):
            problems += self._check_shapes()
        if not skip & {"features", "sound_image"} and \
                not any(p.startswith(("features.", "sound_image.")) for p in problems):
            problems += self._check_sound_image_shapes()
        return problems

    def _check_shapes(self) -> list[str]:
        """Cross-section rules, checked at load so that no stage runs with settings a later
        stage will refuse: the spectrogram must span the segment, and fit the VAE's strides."""
        problems: list[str] = []
        f, sr, seconds = self.features, self.extract.sample_rate, self.detect.segment_seconds
        segment = round(seconds * sr)
        if abs(f.hop_length * f.n_frames - segment) > f.hop_length:
            fit = max(1, round(segment / f.n_frames))
            hint = f"set features.hop_length={fit}"
            if fit > f.n_fft:
                hint += f" and features.n_fft >= {1 << (fit - 1).bit_length()}"
            problems.append(
                f"features.hop_length={f.hop_length} x features.n_frames={f.n_frames} = "
                f"{f.hop_length * f.n_frames} samples, but detect.segment_seconds={seconds} at "
                f"extract.sample_rate={sr} is {segment} samples; they must match within one "
                f"hop: {hint} (or change features.n_frames)")
        if f.kind == "mel" and self.model.pitch_candidates:
            problems.append(
                f"model.pitch_candidates={self.model.pitch_candidates} draws harmonic combs, "
                "evenly spaced in frequency rows, but features.kind is mel, whose rows are not: "
                "set model.pitch_candidates: 0 with mel features")
        n_bins = f.n_mels if f.kind == "mel" else f.n_fft // 2
        stride = 2 ** len(self.model.channels)
        bins_key = "features.n_mels" if f.kind == "mel" else "features.n_fft // 2"
        for key, size in (("features.n_frames", f.n_frames), (bins_key, n_bins)):
            if size % stride:
                problems.append(
                    f"{key}={size} must be divisible by 2**len(model.channels)={stride} "
                    "(each conv block halves it): use fewer model.channels or a larger size")
        return problems


    def _check_sound_image_shapes(self) -> list[str]:
        """The sound <-> image model's strides must fit the spectrogram and the image."""
        f, si = self.features, self.sound_image
        n_bins = f.n_mels if f.kind == "mel" else f.n_fft // 2
        problems = []
        stride = 2 ** len(si.sound_channels)
        if n_bins % stride or f.n_frames % stride:
            problems.append(f"sound_image.sound_channels has {len(si.sound_channels)} stride-2 "
                            f"blocks, so the spectrogram's {n_bins} x {f.n_frames} must divide "
                            f"by {stride}: use fewer entries")
        if f.image_size % 2 ** len(si.image_channels) or \
                f.image_size < 2 ** len(si.image_channels):
            problems.append(f"sound_image.image_channels has {len(si.image_channels)} stride-2 "
                            f"blocks, so features.image_size={f.image_size} must divide by "
                            f"{2 ** len(si.image_channels)}: use fewer entries")
        return problems


# --------------------------------------------------------------------------------------------
# Loading: raw YAML dict -> typed dataclasses, collecting every problem.
# --------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if tp is Path:
        return "path"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, base: Path, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (paths resolved against base)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, base, problems)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(value, arg, key, base, trial)
            if not trial:
                return out
        problems.append(f"{key}={value!r} must be {_type_name(tp)}")
        return None
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{key}={value!r} must be one of {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}={value!r} must be a {_type_name(tp)}")
            return []
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", base, problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}={value!r} must be a {_type_name(tp)}")
            return {}
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{key}.{k}", base, problems)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}={value!r} must be a number")
            return value
        if not math.isfinite(value):
            problems.append(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}={value!r} must be a string")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            problems.append(f"{key}={value!r} must be a path")
            return value
        return _resolve_path(value, base)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _resolve_path(value: str | Path, base: Path) -> Path:
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else (base / path).resolve()


#: Keys of earlier releases that no longer exist, and why: a config that still sets one is told
#: so instead of "unknown key".
REMOVED_KEYS = {
    **{f"train.{key}": "the adversarial phase was removed: it measured no better than the "
                       "spectral loss alone (docs/benchmarks.md); delete the key"
       for key in ("adversarial_epochs", "adversarial_lr", "adversarial_weight",
                   "feature_matching_weight", "discriminator_channels")},
    "features.momentum": "Griffin-Lim's momentum is fixed at 0.99 "
                         "(animalvae.spectrogram.MOMENTUM); delete the key",
    "generate.momentum": "Griffin-Lim's momentum is fixed at 0.99 "
                         "(animalvae.spectrogram.MOMENTUM); delete the key",
    "train.free_bits": "free bits were never used (0 = off was the only value run); delete "
                       "the key",
    "features.griffin_lim_iters": "--check runs a fixed 32 iterations, the count its expected "
                                  "spectral convergence is measured at; delete the key",
    "generate.eval_real_per_group": "vae.py evaluate fits its judge on a fixed 200 real clips "
                                    "per group, so runs' figures compare; delete the key",
    "sound_image.candidates": "retrieval ranks a fixed 100 candidate frames, so runs' figures "
                              "compare; delete the key",
}

#: Keys of earlier releases under their present names, which say whose each setting is: a
#: config that still uses an old name is read under the new one, with a warning naming it.
RENAMED_KEYS = {
    "train.prior": "train.prior_fit",
    "train.prior_bandwidth": "train.kde_bandwidth",
    "train.prior_components": "train.gmm_components",
    "generate.prior": "generate.sample_prior",
    "generate.temperature": "generate.sample_temperature",
    "generate.pitch_temperature": "generate.sample_pitch_temperature",
    "sound_image.temperature": "sound_image.draw_temperature",
}


def current_keys(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A section's ``values`` as an earlier release saved them (a checkpoint's settings) under
    today's names: renamed keys take their new name, removed keys are dropped."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = RENAMED_KEYS.get(f"{section}.{key}", f"{section}.{key}")
        if dotted not in REMOVED_KEYS:
            out[dotted.split(".", 1)[1]] = value
    return out


def _build(cls: type, raw: Any, prefix: str, base: Path, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``; unknown keys and bad values go to problems."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'config'} must be a mapping of keys, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if dotted in REMOVED_KEYS:
            problems.append(f"{dotted}: unknown key: {REMOVED_KEYS[dotted]}")
            continue
        if dotted in RENAMED_KEYS:
            new = RENAMED_KEYS[dotted]
            key = new.rsplit(".", 1)[1]
            if key in raw:
                problems.append(f"{dotted}: the old name of {new}, which is set too: keep "
                                f"{new} only")
                continue
            log.warning("config key %s is now called %s: rename it (read as %s this time)",
                        dotted, new, new)
            dotted = new
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            problems.append(f"{dotted}: unknown key{hint}")
            continue
        kwargs[key] = _convert(value, hints[key], dotted, base, problems)
    defaults = cls()
    for name in names:
        if name not in kwargs and dataclasses.is_dataclass(hints[name]):
            # a section left out: its defaults, with their paths resolved like a file's
            kwargs[name] = _build(hints[name], {}, name, base, problems)
        elif name not in kwargs:
            default = getattr(defaults, name)
            # Default relative paths are relative to the config file too.
            if isinstance(default, Path):
                default = _resolve_path(default, base)
            kwargs[name] = default
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a value so wrong the dataclass cannot hold it
        problems.append(f"{prefix}: {exc}")
        return defaults


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key.sub=value`` overrides to a raw config dict (values parsed as YAML).

    >>> apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5"])
    {'train': {'epochs': 5}}
    """
    problems: list[str] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected key.sub=value")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {item!r}: value is not valid YAML ({exc.problem})")
            continue
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return raw


def load_config(path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a config file, with ``key.sub=value`` overrides applied on top.

    Parameters
    ----------
    path : path-like or None
        The YAML file; ``None`` loads the repository's ``config.yaml``.
    overrides : list of str
        ``key.sub=value`` strings, as given to ``--set``; values are parsed as YAML and
        checked like values in the file.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        With every problem found, one line each, naming the key.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (pass --config PATH)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides)
    problems: list[str] = []
    config = _build(Config, raw, "", path.resolve().parent, problems)
    # A section with a wrongly typed value is not value-checked (its checks would misfire);
    # unknown keys do not stop the checks, so a typo and a bad number are reported together.
    mistyped = frozenset(p.split(".", 1)[0].split("=", 1)[0] for p in problems
                         if "unknown key" not in p)
    problems += config._check(mistyped)
    if problems:
        set_keys = [o.split("=", 1)[0].strip() for o in overrides]
        raise ConfigError([f"--set {p}" if _from_overrides(p, set_keys) else f"{path}: {p}"
                           for p in problems])
    return dataclasses.replace(config, source=path.resolve())


def _from_overrides(problem: str, set_keys: list[str]) -> bool:
    """Whether a problem names a key given by ``--set`` (itself, a key inside it, or the
    section holding it): cross-section checks name every key they involve."""
    named = re.findall(r"[A-Za-z_][\w-]*(?:\.[\w-]+)+", problem)
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".")
               for key in named for k in set_keys)


def config_to_dict(config: Any) -> dict:
    """The settings as plain YAML/JSON-able data (paths as strings), for snapshots."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if f.name != "source"}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(config)
