"""Using a trained sound <-> image model: sound -> image, image -> sound, group samples, metrics.

The model lives in ``<run>/images/`` (:mod:`animalvae.image.train`). Every command writes
under ``<run>/images/samples/`` and rebuilds ``<run>/images/index.html``
(:mod:`animalvae.evaluation.image_gallery`); one folder per entry::

    samples/val/<group>/<id>/        a held-out pair: sound.wav + sound.png (its spectrogram
                                     through Griffin-Lim), frame.png (the true frame),
                                     generated_<k>.png
    samples/files/<name>/            a recording: sound.wav (the loudest window of it, as
                                     heard), sound.png, generated_<k>.png
    samples/from_images/<name>/      a picture: image.png (as the model sees it), sound.wav,
                                     sound.png (the sound drawn from it)
    samples/prior/<group>_<k>/       a sample of a group: image.png, sound.wav, sound.png

Images come from the sound alone: z is drawn around q(z | sound)'s mean ``mu_s`` and decoded
by the image half. With ``sound_image.draw: residual`` (the default) ``z = mu_s + t x r``, ``r``
a residual of a training pair of the sound's nearest group (what the sound left open there:
:func:`animalvae.image.model.draw_residuals`); with ``posterior``,
``z = mu_s + t x std x noise``, q(z | sound)'s own spread (nearly none, so the images of one
sound are nearly one image). ``t`` is ``sound_image.draw_temperature``. No group label is given
anywhere. ``metrics.json`` is described at :func:`evaluate_images`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..audio import FRAMES_PER_S, best_window, energy_scores, window_samples
from ..config import Config
from ..device import device_of, pick_device
from ..errors import ConfigError, ItemFailed
from ..evaluation.image_gallery import write_image_gallery
from ..evaluation.image_quality import (
    accuracy,
    candidate_sets,
    edge_strength,
    fit_group_classifier,
    frechet_distance,
    group_only_recall,
    image_features,
    retrieval_recall,
    variety,
)
from ..images import load_image, square_resize, write_png
from ..sound.generate import safe_name, write_sample
from ..spectrogram import Spectrogram, to_audio
from ..stage import StageOptions, atomic_write_text
from ..training.dataset import iter_batches
from ..training.run_folder import EVALUATION, MODEL, SAMPLES
from .model import TrainedPairs, draw_residuals, load_pairs_model
from .pairs import ImageSet, PairSet, read_pair_split

__all__ = ["sound_to_image", "image_to_sound", "sample_images", "evaluate_images",
           "images_from_sounds", "read_recording"]

log = logging.getLogger(__name__)

_BATCH = 16
#: Retrieval ranks each held-out sound's own frame among this many (fewer when there are fewer
#: held-out pairs): fixed, so that the figures of different runs compare.
CANDIDATES = 100


def _load(config: Config, run_dir: Path) -> TrainedPairs:
    device = pick_device(config.train.device, key="train.device")
    trained = load_pairs_model(Path(run_dir) / MODEL, device=device)
    log.info("%s: groups %s, spectrograms %s, images %d px, epoch %s", Path(run_dir) / MODEL,
             ", ".join(trained.groups), trained.spec.shape, trained.model.image_size,
             trained.info.get("epoch", "?"))
    return trained



@torch.no_grad()
def images_from_sounds(trained: TrainedPairs, sounds: Tensor, *, count: int,
                       temperature: float, seed: int, draw: str = "residual") -> Tensor:
    """``count`` images per spectrogram, from q(z | sound) alone.

    Parameters
    ----------
    sounds : Tensor [shape=(B, 1, H, W), values in [0, 1]]
    count : int
        Images per sound, each from its own draw (module docstring).
    draw : str
        ``residual`` or ``posterior`` (``sound_image.draw``, module docstring).
    seed : int
        Seeds the noise (on the CPU: the same images on any device).

    Returns
    -------
    Tensor [shape=(B, count, 3, S, S), values in [0, 1], on the CPU]
    """
    model, device = trained.model, device_of(trained.model)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for idx in iter_batches(len(sounds), _BATCH):
        mu, logvar = model.posterior(sound=sounds[idx].to(device))              # (b, L)
        if draw == "residual":
            offset = draw_residuals(trained.residuals, mu, count, generator=gen)
        else:
            noise = torch.randn(len(idx), count, mu.shape[1], generator=gen).to(device)
            offset = torch.exp(0.5 * logvar)[:, None] * noise
        z = mu[:, None] + temperature * offset                                  # (b, c, L)
        images = model.decode_image(z.flatten(0, 1))                            # (b*c, 3, S, S)
        out.append(images.view(len(idx), count, *images.shape[1:]).cpu())
    return torch.cat(out)


def _write_png(path: Path, image: Tensor | np.ndarray) -> None:
    """One image (3, S, S) in [0, 1] (or (S, S, 3) uint8) as an RGB PNG, atomically."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    write_png(path, array)


def _reset(folder: Path) -> None:
    """Remove an earlier run's entries of one kind, so the gallery shows only this run's."""
    if folder.is_dir():
        shutil.rmtree(folder)


def read_recording(path: Path, sample_rate: int, n_samples: int) -> np.ndarray:
    """The loudest ``n_samples`` of any recording ffmpeg reads (wav, mp3, an mp4's audio).

    Mono at ``sample_rate``; a shorter recording is padded with silence.

    Raises
    ------
    ConfigError
        When the file is missing, or ffmpeg cannot read audio from it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path.resolve()), "-vn", "-ac", "1",
           "-ar", str(sample_rate), "-f", "f32le", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    y = np.frombuffer(proc.stdout, dtype=np.float32)
    if proc.returncode or not y.size:
        reason = " ".join(proc.stderr.decode(errors="replace").split())[-200:] or "no audio"
        raise ConfigError(f"{path}: ffmpeg cannot read audio from it ({reason})")
    if not np.isfinite(y).all():
        raise ConfigError(f"{path} holds NaN or Inf samples: not usable audio")
    if y.size <= n_samples:
        return np.pad(y, (0, n_samples - y.size))
    start_frame, _ = best_window(energy_scores(y, sample_rate),
                                 window_frames=round(n_samples * FRAMES_PER_S / sample_rate))
    start = window_samples(start_frame, segment_samples=n_samples, n_samples=y.size,
                           sr=sample_rate)
    return y[start:start + n_samples].copy()


def _write_sound(folder: Path, x: Tensor, trained: TrainedPairs, config: Config,
                 audio: Tensor | None = None) -> None:
    """``sound.wav`` + ``sound.png``: ``audio`` as given, or ``x`` through Griffin-Lim."""
    gc = config.generate
    if audio is None:
        audio = to_audio(x[None], trained.spec, n_iter=gc.griffin_lim_iters, seed=gc.seed)[0]
    write_sample(folder / "sound.wav", audio, x, spec=trained.spec)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

def sound_to_image(config: Config, run_dir: Path, files: Sequence[Path] = (), *,
                   count: int | None = None,
                   options: StageOptions | None = None) -> list[Path]:
    """``count`` images for each recording in ``files``, or for each held-out pair.

    A recording (anything ffmpeg reads: wav, mp3, an mp4's audio) is cut to its loudest
    segment-long window, turned into the model's spectrogram and encoded alone. Without
    files, every held-out pair of the run's ``split.csv`` is drawn (``options.limit``: at
    most N).

    Returns
    -------
    list of Path
        The entry folders written.

    Raises
    ------
    ConfigError
        No usable model, an unreadable recording, or a missing held-out file.
    """
    si = config.sound_image
    count = count if count is not None else si.count
    if count < 1:
        raise ConfigError(f"--count={count} must be >= 1")
    trained = _load(config, run_dir)
    spec = trained.spec
    samples = Path(run_dir) / SAMPLES
    written = []
    if files:
        waves = torch.from_numpy(np.stack([read_recording(Path(f), spec.sample_rate,
                                                          spec.n_samples) for f in files]))
        with torch.no_grad():
            x = Spectrogram(spec)(waves)[:, None].clamp(0, 1)                 # (N, 1, H, W)
        images = images_from_sounds(trained, x, count=count, temperature=si.draw_temperature,
                                    seed=config.generate.seed, draw=si.draw)
        _reset(samples / "files")
        names: dict[str, int] = {}
        for f, wave, xi, generated in zip(files, waves, x, images):
            name = safe_name(Path(f).stem)
            names[name] = names.get(name, 0) + 1
            folder = samples / "files" / (name if names[name] == 1 else f"{name}_{names[name]}")
            _write_sound(folder, xi[0], trained, config, audio=wave)
            for k, image in enumerate(generated):
                _write_png(folder / f"generated_{k}.png", image)
            written.append(folder)
    else:
        items = read_pair_split(run_dir).val
        limit = (options or StageOptions()).limit
        items = items[:limit] if limit is not None else items
        data = PairSet(items, trained.groups, spec.shape, trained.model.image_size)
        sounds, frames, _ = data.batch(torch.arange(len(data)), torch.device("cpu"))
        images = images_from_sounds(trained, sounds, count=count, temperature=si.draw_temperature,
                                    seed=config.generate.seed, draw=si.draw)
        gc = config.generate
        audio = to_audio(sounds[:, 0], spec, n_iter=gc.griffin_lim_iters, seed=gc.seed)
        _reset(samples / "val")
        for item, xi, wave, frame, generated in zip(items, sounds, audio, frames, images):
            folder = samples / "val" / safe_name(item.group) / safe_name(item.id)
            _write_sound(folder, xi[0], trained, config, audio=wave)
            _write_png(folder / "frame.png", frame)
            for k, image in enumerate(generated):
                _write_png(folder / f"generated_{k}.png", image)
            written.append(folder)
    page = write_image_gallery(run_dir)
    log.info("sound-to-image: %d image(s) for each of %d sound(s) in %s; gallery: %s", count,
             len(written), samples, page)
    return written


def image_to_sound(config: Config, run_dir: Path, files: Sequence[Path], *,
                   options: StageOptions | None = None) -> list[Path]:
    """A sound for each picture: q(z | image) -> spectrogram -> Griffin-Lim.

    Raises
    ------
    ConfigError
        No usable model, or a picture that is missing or refused (the reason of
        :func:`animalvae.images.load_image`).
    """
    if not files:
        raise ConfigError("image-to-sound: name at least one picture (jpg, png, ...)")
    trained = _load(config, run_dir)
    size = trained.model.image_size
    pictures = []
    for f in files:
        if not Path(f).is_file():
            raise ConfigError(f"{f} not found")
        try:
            pictures.append(square_resize(load_image(Path(f)), size))
        except ItemFailed as exc:
            raise ConfigError(f"{f}: {exc}") from None
    x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        mu, _ = trained.model.posterior(image=x.to(device_of(trained.model)))
        sounds = trained.model.decode_sound(mu)[:, 0]
    samples = Path(run_dir) / SAMPLES / "from_images"
    _reset(samples)
    written = []
    for f, picture, spectrogram in zip(files, pictures, sounds):
        folder = samples / safe_name(Path(f).stem)
        _write_png(folder / "image.png", picture)
        _write_sound(folder, spectrogram, trained, config)
        written.append(folder)
    page = write_image_gallery(run_dir)
    log.info("image-to-sound: %d sound(s) in %s; gallery: %s", len(written), samples, page)
    return written


def sample_images(config: Config, run_dir: Path, *, count: int | None = None,
                  options: StageOptions | None = None) -> list[Path]:
    """``count`` samples per group, both halves from one z.

    z is drawn from the group's fitted code distribution (mean and std of the training pairs'
    codes, stored in the model), so each sample is a sound and its picture of that group.
    """
    si = config.sound_image
    count = count if count is not None else si.count
    if count < 1:
        raise ConfigError(f"--count={count} must be >= 1")
    trained = _load(config, run_dir)
    gen = torch.Generator().manual_seed(config.generate.seed)
    folder = Path(run_dir) / SAMPLES / "prior"
    _reset(folder)
    written = []
    for group, (mean, std) in trained.group_codes.items():
        noise = torch.randn(count, mean.shape[0], generator=gen).to(mean.device)
        z = mean + si.draw_temperature * std * noise                        # (count, L)
        with torch.no_grad():
            images = trained.model.decode_image(z).cpu()
            sounds = trained.model.decode_sound(z)[:, 0].cpu()
        for k in range(count):
            entry = folder / f"{safe_name(group)}_{k}"
            _write_png(entry / "image.png", images[k])
            _write_sound(entry, sounds[k], trained, config)
            written.append(entry)
    page = write_image_gallery(run_dir)
    log.info("sample-images: %d sample(s) of %s in %s; gallery: %s", len(written),
             ", ".join(trained.group_codes), folder, page)
    return written


def evaluate_images(config: Config, run_dir: Path, *,
                    options: StageOptions | None = None) -> dict[str, Any]:
    """Metrics of the model on its held-out pairs -> ``run_dir/metrics.json``.

    - ``retrieval_r1``, ``retrieval_r5`` among ``retrieval_candidates`` frames (min of
      :data:`CANDIDATES` and the held-out pairs), with ``chance_r1``/``chance_r5`` and
      ``group_only_r1`` (what knowing only the sound's group gives): each held-out sound's
      q(z | sound) mean against the frames' q(z | image) means (Euclidean distance);
    - ``group_accuracy_generated``: a classifier fit on real training frames
      (:func:`~animalvae.evaluation.image_quality.fit_group_classifier`) labels the
      ``sound_image.count`` images generated from each held-out sound; beside it
      ``group_accuracy_real_frames`` (the same classifier on the real held-out frames: the
      ceiling) and ``chance_group_accuracy`` (the largest group's share of them);
    - ``variety_within_sound`` and ``variety_across_sounds``: mean absolute pixel difference
      (0-255) between the images of one sound, and between images of different sounds, with
      ``variety_ratio`` (within / across; 0: every sound gives one image);
    - ``edge_strength_generated`` against ``edge_strength_real_frames`` (mean neighbour pixel
      difference, 0-255) and their ratio ``sharpness_ratio`` (below 1: blur);
    - ``frechet_generated`` between the generated images' features and the real held-out
      frames', and ``frechet_train_frames``, real training frames against the same (the
      floor real images reach).

    Raises
    ------
    ConfigError
        No usable model or split.
    """
    si, seed = config.sound_image, config.generate.seed
    trained = _load(config, run_dir)
    items = read_pair_split(run_dir)
    size = trained.model.image_size
    val = PairSet(items.val, trained.groups, trained.spec.shape, size)
    train_frames = ImageSet([Path(it.upstream["image"]) for it in items.train]
                            + [Path(it.source) for it in items.images],
                            [trained.groups.index(it.group) for it in items.train + items.images],
                            size)
    sounds, frames, labels = val.batch(torch.arange(len(val)), torch.device("cpu"))
    metrics: dict[str, Any] = {"pairs": len(val), "images_per_sound": si.count,
                               **_retrieval(trained, sounds, frames, labels.numpy(),
                                            k=CANDIDATES, seed=seed)}
    generated = images_from_sounds(trained, sounds, count=si.count, temperature=si.draw_temperature,
                                   seed=seed, draw=si.draw)                  # (N, c, 3, S, S)
    generated = generated.permute(0, 1, 3, 4, 2).numpy()                     # (N, c, S, S, 3)
    real = frames.permute(0, 2, 3, 1).numpy()
    metrics.update(_image_metrics(generated, real, labels.numpy(), train_frames, seed=seed))
    metrics["epoch"] = trained.info.get("epoch")
    path = Path(run_dir) / EVALUATION
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    write_image_gallery(run_dir)
    log.info("evaluate-images on %d held-out pair(s): sound -> image retrieval R@1 %.2f "
             "(chance %.2f, the group alone %.2f), R@5 %.2f (chance %.2f) among %d; group "
             "accuracy of generated images %s (real frames %s, chance %s); variety within one "
             "sound %s, across sounds %s (ratio %s); sharpness %s of real frames'; Fréchet %s "
             "(real training frames %s) -> %s",
             len(val), metrics["retrieval_r1"], metrics["chance_r1"], metrics["group_only_r1"],
             metrics["retrieval_r5"], metrics["chance_r5"], metrics["retrieval_candidates"],
             *(_fmt(metrics.get(k)) for k in (
                 "group_accuracy_generated", "group_accuracy_real_frames",
                 "chance_group_accuracy", "variety_within_sound", "variety_across_sounds",
                 "variety_ratio", "sharpness_ratio", "frechet_generated",
                 "frechet_train_frames")), path)
    return metrics


@torch.no_grad()
def _retrieval(trained: TrainedPairs, sounds: Tensor, frames: Tensor, labels: np.ndarray, *,
               k: int, seed: int) -> dict[str, Any]:
    """Sound -> image retrieval among ``k`` candidates (:func:`evaluate_images`)."""
    device, model = device_of(trained.model), trained.model
    sound_mu, frame_mu = [], []
    for i in iter_batches(len(sounds), _BATCH):
        sound_mu.append(model.posterior(sound=sounds[i].to(device))[0].cpu())
        frame_mu.append(model.posterior(image=frames[i].to(device))[0].cpu())
    candidates = candidate_sets(len(sounds), k, seed=seed)
    k = candidates.shape[1]
    recall = retrieval_recall(torch.cat(sound_mu).numpy(), torch.cat(frame_mu).numpy(),
                              candidates)
    return {"retrieval_candidates": k, "retrieval_r1": recall[1], "chance_r1": 1 / k,
            "group_only_r1": group_only_recall(labels, candidates),
            "retrieval_r5": recall[5], "chance_r5": min(5, k) / k}


def _image_metrics(generated: np.ndarray, real: np.ndarray, labels: np.ndarray,
                   train_frames: ImageSet, *, seed: int) -> dict[str, Any]:
    """Group accuracy, variety, sharpness and Fréchet distance of generated images.

    ``generated`` (N, c, S, S, 3) and ``real`` (N, S, S, 3) in [0, 1]: the images of each
    held-out sound and its true frame.
    """
    count = generated.shape[1]
    gen_features = image_features(generated.reshape(-1, *generated.shape[2:]))
    real_features = image_features(real)
    train_features = image_features(train_frames.x.permute(0, 2, 3, 1).numpy())
    within, across = variety(generated)
    metrics: dict[str, Any] = {
        "variety_within_sound": within, "variety_across_sounds": across,
        "variety_ratio": within / across if across > 0 else math.nan,
        "edge_strength_generated": edge_strength(generated.reshape(-1, *generated.shape[2:])),
        "edge_strength_real_frames": edge_strength(real)}
    metrics["sharpness_ratio"] = (metrics["edge_strength_generated"]
                                  / max(metrics["edge_strength_real_frames"], 1e-9))
    if len(np.unique(train_frames.y.numpy())) > 1:
        classifier = fit_group_classifier(train_features, train_frames.y.numpy(), seed=seed)
        metrics["group_accuracy_generated"] = accuracy(classifier, gen_features,
                                                       np.repeat(labels, count))
        metrics["group_accuracy_real_frames"] = accuracy(classifier, real_features, labels)
        metrics["chance_group_accuracy"] = float(np.bincount(labels).max() / len(labels))
    else:
        log.warning("evaluate-images: the training frames are of one group; no group accuracy")
    if len(real) > 1:
        metrics["frechet_generated"] = frechet_distance(gen_features, real_features)
        metrics["frechet_train_frames"] = frechet_distance(train_features, real_features)
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
