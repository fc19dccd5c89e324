"""Stage 4: 3 s segments -> normalised, invertible spectrograms for the VAE.

Reads the segments stage 3 listed in ``paths.detections/manifest.csv`` (or any folder of
``<group>/<id>.wav``), and writes ``paths.spectrograms/<group>/<id>.npy``: one array of shape
``(n_bins, n_frames)`` (512 x 256 at the defaults), values in [0, 1], ``features.dtype``. The
representation and its inverse live in :mod:`animalvae.spectrogram`; the spec is saved as
``normalizer.json`` beside the arrays, and stage 5 reads it from there.

How it runs (executor "stream"): a pool of ``features.workers`` threads reads each WAV
(soundfile), mixes it to mono, resamples it to ``extract.sample_rate`` when it is at another
rate (torchaudio), and pads (zeros) or cuts it to ``n_frames * hop_length`` samples; the main
thread stacks ``features.batch_size`` of them and runs one batched torch transform (on CPU in
chunks of 8, which stay in cache), and the pool writes each array atomically while the next
batch is transformed. On CPU torch runs single-threaded meanwhile: the pool already fills the
cores. Per item: unreadable -> failed, NaN/Inf samples -> failed ("non-finite samples", never
written), RMS below ``extract.silence_dbfs`` -> skipped ("silent").

Manifest columns besides the base ones: ``shape`` (``512x256``), ``peak_db`` (the level of the
loudest bin, dB re a full-scale sine: what the normalisation maps to 1), ``rms_dbfs`` (0 dBFS =
a full-scale square wave), ``padded_s`` (seconds of zeros appended to a short segment) and
``source_rate`` (Hz of the file as read). After the run: ``preview.png`` (a few spectrograms per
group), and with ``check=N`` a Griffin-Lim round trip of N arrays (:func:`round_trip_check`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio

from . import cli
from .config import Config, config_to_dict
from .device import pick_device
from .errors import ConfigError, ItemFailed, ItemSkipped
from .spectrogram import (
    NORMALIZER,
    InverseSpectrogram,
    Spectrogram,
    SpectrogramSpec,
    load_spec,
    save_spec,
    spectral_convergence,
)
from .stage import (
    Item,
    Outcome,
    Stage,
    Summary,
    atomic_path,
    list_items,
    read_manifest,
    run_stage,
    write_settings,
)

__all__ = ["FeaturesStage", "FeaturesSummary", "run", "spec_from_config", "load_segment",
           "round_trip_check", "render_preview", "PREVIEW"]

log = logging.getLogger(__name__)

PREVIEW = "preview.png"
_CPU_CHUNK = 8  # segments per transform call on CPU (see FeaturesStage._write_batch)
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def spec_from_config(config: Config) -> SpectrogramSpec:
    """The spectrogram spec of ``config``, checked against the segment length.

    Raises
    ------
    ConfigError
        When ``features.hop_length * features.n_frames`` is more than one hop away from
        ``detect.segment_seconds`` at ``extract.sample_rate`` (the message suggests the hop
        that fits).
    """
    f, sr, seconds = config.features, config.extract.sample_rate, config.detect.segment_seconds
    spec = SpectrogramSpec.from_config(f, sr)
    segment = round(seconds * sr)
    if abs(spec.n_samples - segment) > f.hop_length:
        fit = max(1, round(segment / f.n_frames))
        hint = f"set features.hop_length={fit}"
        if fit > f.n_fft:
            hint += f" and features.n_fft >= {1 << (fit - 1).bit_length()}"
        raise ConfigError(
            f"features.hop_length={f.hop_length} x features.n_frames={f.n_frames} = "
            f"{spec.n_samples} samples, but detect.segment_seconds={seconds} at "
            f"extract.sample_rate={sr} is {segment} samples; they must match within one hop: "
            f"{hint} (or change features.n_frames)")
    return spec


# --------------------------------------------------------------------------------------------
# Reading one segment (runs in reader threads)
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _resampler(orig_hz: int, new_hz: int) -> torchaudio.transforms.Resample:
    # The windowed-sinc kernel is built once per rate pair and shared by the reader threads.
    return torchaudio.transforms.Resample(orig_hz, new_hz)


def _rms_dbfs(y: np.ndarray) -> float:
    """RMS in dBFS (0 dBFS = a full-scale square wave); NaN or +inf if a sample is NaN/Inf."""
    # float64: float32 squares cannot overflow it. Not np.dot: a BLAS call wakes OpenBLAS's
    # own threads, which then spin on the cores that the reader threads need.
    power = float(np.mean(np.square(y, dtype=np.float64))) if y.size else 0.0
    if not math.isfinite(power):
        return power
    return 10 * math.log10(power) if power > 0 else -math.inf


def load_segment(path: Path, spec: SpectrogramSpec, *,
                 silence_dbfs: float = -60.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one segment as the transform needs it: mono, ``spec.sample_rate``, fixed length.

    Parameters
    ----------
    path : Path
        Any file soundfile reads (WAV, FLAC, ...).
    spec : SpectrogramSpec
    silence_dbfs : float
        RMS level (dBFS) below which the segment counts as silent.

    Returns
    -------
    y : np.ndarray [shape=(spec.n_samples,), float32]
        Zero-padded or cut to ``spec.n_samples``.
    info : dict
        ``rms_dbfs``, ``padded_s``, ``source_rate`` for the manifest.

    Raises
    ------
    ItemFailed
        Unreadable, empty, or NaN/Inf samples.
    ItemSkipped
        Silent (RMS below ``silence_dbfs``, or all zeros).
    """
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)   # (n, channels)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ItemFailed(f"cannot read audio: {' '.join(str(exc).split())}") from None
    if data.size == 0:
        raise ItemFailed("no samples")
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != spec.sample_rate:
        log.debug("%s: resampling %d Hz -> %d Hz", path, rate, spec.sample_rate)
        with torch.inference_mode():
            y = _resampler(rate, spec.sample_rate)(torch.from_numpy(y)).numpy()
    y = y[:spec.n_samples]
    rms = _rms_dbfs(y)    # of what is kept, before any padding; NaN if a sample is NaN/Inf
    if math.isnan(rms) or rms == math.inf:
        raise ItemFailed("non-finite samples (NaN or Inf)")
    if rms < silence_dbfs:
        raise ItemSkipped("silent (all zeros)" if rms == -math.inf
                          else f"silent ({rms:.1f} dBFS < {silence_dbfs:g} dBFS)")
    missing = spec.n_samples - y.shape[0]
    if missing > 0:
        y = np.pad(y, (0, missing))
    info = {"rms_dbfs": round(rms, 2), "padded_s": round(max(missing, 0) / spec.sample_rate, 4),
            "source_rate": rate}
    return np.ascontiguousarray(y, dtype=np.float32), info


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

class FeaturesStage(Stage):
    """Segments -> ``<group>/<id>.npy`` spectrograms, read in threads, transformed in batches.

    Parameters
    ----------
    spec : SpectrogramSpec
    dtype : {"float16", "float32"}
        Storage type of the arrays.
    batch_size : int
        Segments per transform.
    workers : int
        Threads that read (and resample) segments and write arrays.
    silence_dbfs : float
        RMS below this is skipped as silent.
    device : torch.device
        Where the transform runs.
    """

    name = "features"
    unit = "segment"
    suffix = ".npy"
    columns = ("shape", "peak_db", "rms_dbfs", "padded_s", "source_rate")
    executor = "stream"

    def __init__(self, spec: SpectrogramSpec, *, dtype: str = "float16", batch_size: int = 32,
                 workers: int = 1, silence_dbfs: float = -60.0,
                 device: torch.device | None = None):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.batch_size = batch_size
        self.workers = workers
        self.silence_dbfs = silence_dbfs
        self.device = device or torch.device("cpu")
        self.transform = Spectrogram(spec).to(self.device)

    def is_done(self, output: Path, row: Mapping[str, str] | None) -> bool:
        """An existing ``.npy`` whose header has this spec's shape and the storage dtype."""
        try:
            with open(output, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(fh)
        except (OSError, ValueError):
            return False
        return tuple(shape) == self.spec.shape and dtype == self.dtype

    def _load(self, item: Item) -> tuple[np.ndarray | None, Outcome]:
        try:
            y, info = load_segment(Path(item.source), self.spec, silence_dbfs=self.silence_dbfs)
        except ItemSkipped as exc:
            return None, Outcome("skipped", str(exc))
        except ItemFailed as exc:
            return None, Outcome("failed", str(exc))
        except (OSError, ValueError, RuntimeError, EOFError) as exc:  # as run_stage records them
            log.debug("item %s failed", item.id, exc_info=True)
            return None, Outcome("failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        return y, Outcome("ok", "", info)

    def process_stream(self, work: list[tuple[Item, Path]]) -> Iterator[tuple[Item, Outcome]]:
        """Read ``work`` in threads, transform it in batches here, write it in threads."""
        batch: list[tuple[Item, Path, np.ndarray, Outcome]] = []
        writing: list[tuple[Item, cf.Future]] = []   # the previous batch's writes
        pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="features-io")
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            # The pool threads and this one already keep the cores busy; torch's own
            # OpenMP teams on top of them would wait at barriers for descheduled threads.
            torch.set_num_threads(1)
        try:
            for (item, output), (y, outcome) in _prefetch(pool, self._load, work,
                                                           ahead=2 * self.batch_size):
                if y is None:
                    yield item, outcome
                    continue
                batch.append((item, output, y, outcome))
                if len(batch) == self.batch_size:
                    # Transform this batch while the pool still writes the previous one.
                    submitted = self._transform_and_submit(batch, pool)
                    yield from ((it, f.result()) for it, f in writing)
                    writing, batch = submitted, []
            if batch:
                yield from ((it, f.result()) for it, f in self._transform_and_submit(batch, pool))
            yield from ((it, f.result()) for it, f in writing)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)

    def _transform_and_submit(self, batch: list[tuple[Item, Path, np.ndarray, Outcome]],
                              pool: cf.Executor) -> list[tuple[Item, cf.Future]]:
        """One batched transform; each array's write goes to ``pool`` (returns the futures)."""
        y = torch.from_numpy(np.stack([b[2] for b in batch])).to(self.device)
        # On CPU a whole batch's STFT (~67 MB at 32 x 3 s) falls out of the cache and is
        # slower per clip than a few at a time; on a GPU one call takes the whole batch.
        step = _CPU_CHUNK if self.device.type == "cpu" else len(batch)
        arrays, peaks, finite = [], [], []
        with torch.inference_mode():
            for chunk in torch.split(y, step):
                x, peak_db = self.transform.forward_with_peak(chunk)  # (b, bins, frames), (b,)
                # A NaN/Inf anywhere makes the peak NaN/Inf; a finite peak bounds every value.
                finite += torch.isfinite(peak_db).cpu().tolist()
                arrays += list(x.to(_TORCH_DTYPES[self.dtype.name]).cpu().numpy())
                peaks += peak_db.cpu().tolist()
        shape = "x".join(map(str, self.spec.shape))
        return [(item, pool.submit(_save, output, array, ok, {
                    "shape": shape, "peak_db": round(peak, 2), **outcome.fields}))
                for (item, output, _, outcome), array, peak, ok
                in zip(batch, arrays, peaks, finite)]


def _save(output: Path, array: np.ndarray, finite: bool, fields: dict[str, Any]) -> Outcome:
    """Write one array atomically (in a pool thread); its Outcome."""
    if not finite:  # cannot happen for finite input (load_segment checks); never write it
        return Outcome("failed", "non-finite values in the spectrogram")
    try:
        with atomic_path(output) as tmp:
            np.save(tmp, array)
    except OSError as exc:
        return Outcome("failed", f"cannot write: {' '.join(str(exc).split())}")
    return Outcome("ok", "", fields)


def _prefetch(pool: cf.Executor, fn, work: Sequence, *, ahead: int) -> Iterator:
    """``(w, fn(w[0]))`` for each ``w`` of ``work`` in order, at most ``ahead`` in flight."""
    pending: collections.deque = collections.deque()
    queue = iter(work)
    for w in queue:
        pending.append((w, pool.submit(fn, w[0])))
        if len(pending) >= ahead:
            break
    while pending:
        w, future = pending.popleft()
        nxt = next(queue, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(fn, nxt[0])))
        yield w, future.result()


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FeaturesSummary(Summary):
    """A stage :class:`Summary` plus the ``--check`` figures (empty when not asked for)."""

    convergence: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_convergence(self) -> float | None:
        """Median spectral convergence of the round trip, or None without a check."""
        return float(np.median(self.convergence)) if self.convergence else None


def run(config: Config, options: cli.StageOptions, *, check: int = 0) -> FeaturesSummary:
    """Make a spectrogram of every segment in ``paths.detections``.

    Parameters
    ----------
    config : Config
        Uses ``paths.detections``, ``paths.spectrograms``, ``features``,
        ``extract.sample_rate`` and ``extract.silence_dbfs``, ``detect.segment_seconds``.
    options : cli.StageOptions
        ``force``, ``limit``, ``workers`` (I/O threads; default ``features.workers``),
        ``progress``.
    check : int
        After the run, invert this many arrays with Griffin-Lim and measure the spectral
        convergence (:func:`round_trip_check`); 0 = no check.

    Returns
    -------
    FeaturesSummary

    Raises
    ------
    ConfigError
        Hop/segment mismatch, no input, a device that is not there, or an output folder
        holding arrays made with other settings (without ``force``); before any work starts.
    """
    spec = spec_from_config(config)
    device = pick_device(config.features.device)
    output_dir = config.paths.spectrograms
    items = list_items(config.paths.detections, [".wav"], what="segments")
    _check_previous_spec(output_dir, spec, force=options.force)
    save_spec(output_dir, spec)
    write_settings(output_dir, {"features": config_to_dict(config.features),
                                "sample_rate": config.extract.sample_rate,
                                "segment_seconds": config.detect.segment_seconds,
                                "silence_dbfs": config.extract.silence_dbfs})
    stage = FeaturesStage(spec, dtype=config.features.dtype,
                          batch_size=config.features.batch_size,
                          workers=options.workers or cli.default_workers(config.features.workers),
                          silence_dbfs=config.extract.silence_dbfs, device=device)
    base = run_stage(stage, items, output_dir, force=options.force, limit=options.limit,
                     progress=options.progress)
    summary = FeaturesSummary(**{f.name: getattr(base, f.name)
                                 for f in dataclasses.fields(base)})
    rows = [r for r in read_manifest(output_dir).values() if r.get("status") == "ok"]
    if rows and (summary.ok or not (output_dir / PREVIEW).is_file()):
        render_preview(output_dir, rows, spec, output_dir / PREVIEW)
    if check:
        summary.convergence = round_trip_check(
            output_dir, rows, spec, n=check, n_iter=config.features.griffin_lim_iters,
            momentum=config.features.momentum, silence_dbfs=config.extract.silence_dbfs,
            device=device)
    return summary


def _check_previous_spec(output_dir: Path, spec: SpectrogramSpec, *, force: bool) -> None:
    """Refuse to mix arrays of two representations in one folder (unless ``force``)."""
    if force or not (output_dir / NORMALIZER).is_file():
        return
    previous = load_spec(output_dir)
    if previous != spec:
        changed = ", ".join(f"{k}: {getattr(previous, k)} -> {getattr(spec, k)}"
                            for k in (f.name for f in dataclasses.fields(spec))
                            if getattr(previous, k) != getattr(spec, k))
        raise ConfigError(f"{output_dir / NORMALIZER}: the arrays there were made with other "
                          f"settings ({changed}); rerun with --force to redo them all, or "
                          "write to another folder with --output")


def _pick_rows(rows: list[Mapping[str, str]], n: int) -> list[Mapping[str, str]]:
    """Up to ``n`` rows taking the groups in turn, so every group is represented."""
    by_group: dict[str, list[Mapping[str, str]]] = collections.defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["group"], r["id"])):
        by_group[row["group"]].append(row)
    picked: list[Mapping[str, str]] = []
    for rank in range(max(map(len, by_group.values()), default=0)):
        for group in sorted(by_group):
            if rank < len(by_group[group]) and len(picked) < n:
                picked.append(by_group[group][rank])
    return picked


def round_trip_check(output_dir: Path, rows: list[Mapping[str, str]], spec: SpectrogramSpec,
                     *, n: int, n_iter: int = 32, momentum: float = 0.99,
                     silence_dbfs: float = -60.0, device: torch.device | None = None,
                     batch_size: int = 16) -> list[float]:
    """Stored arrays -> Griffin-Lim -> STFT, against the STFT of their source segments.

    Each array is read back as stored (dtype included), inverted with
    :class:`InverseSpectrogram`, and the linear STFT magnitude of the result is compared with
    that of the original segment, both with the clip's peak at 0 dB (the scale the inverse
    restores). The spectral convergence therefore covers the normalisation, the storage type
    and the phase reconstruction together.

    Parameters
    ----------
    output_dir : Path
        Folder of the arrays (their manifest ``output`` paths are relative to it).
    rows : list of mapping
        ``ok`` manifest rows; up to ``n`` are used, the groups taken in turn.
    spec : SpectrogramSpec
    n : int
        How many segments to check.
    n_iter, momentum : int, float
        Griffin-Lim settings.
    silence_dbfs : float
        As in the run (the sources are read the same way).
    device : torch.device or None
        Default CPU.
    batch_size : int
        Segments per Griffin-Lim batch.

    Returns
    -------
    list of float
        One spectral convergence per segment checked (lower is better); the median is logged.
    """
    device = device or torch.device("cpu")
    forward = Spectrogram(spec).to(device)
    inverse = InverseSpectrogram(spec, n_iter=n_iter, momentum=momentum).to(device)
    scores: list[float] = []
    picked = _pick_rows(rows, n)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(0)  # Griffin-Lim's random initial phases: repeatable figures
        for start in range(0, len(picked), batch_size):
            pairs = [pair for r in picked[start:start + batch_size]
                     if (pair := _check_pair(output_dir, r, spec, silence_dbfs)) is not None]
            if not pairs:
                continue
            x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
            y = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)
            reference = forward.magnitude(y) * 10 ** (-forward.peak_db(y) / 20)[:, None, None]
            estimate = forward.magnitude(inverse(x))
            scores += spectral_convergence(reference, estimate).cpu().tolist()
    if scores:
        log.info("round-trip check: median spectral convergence %.3f over %d segment(s) "
                 "(Griffin-Lim %d iterations, momentum %g; lower is better, <= 0.10 expected "
                 "for stft at the defaults)", float(np.median(scores)), len(scores), n_iter,
                 momentum)
    else:
        log.warning("round-trip check: no spectrograms to check")
    return scores


def _check_pair(output_dir: Path, row: Mapping[str, str], spec: SpectrogramSpec,
                silence_dbfs: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored array and its source segment, or None (with a warning) if one is gone."""
    try:
        x = np.load(output_dir / row["output"])
        y, _ = load_segment(Path(row["source"]), spec, silence_dbfs=silence_dbfs)
    except (ItemFailed, ItemSkipped, OSError, ValueError) as exc:
        log.warning("round-trip check: %s left out: %s", row["id"], exc)
        return None
    return x, y


def render_preview(output_dir: Path, rows: list[Mapping[str, str]], spec: SpectrogramSpec,
                   path: Path, *, per_group: int = 4) -> Path:
    """Draw up to ``per_group`` stored spectrograms of each group into one PNG.

    One row per group (at most 8 groups), time in seconds across, frequency in Hz up
    (mel: the band centres' frequencies as tick labels). Written atomically.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    by_group: dict[str, list[Mapping[str, str]]] = collections.defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["group"], r["id"])):
        if len(by_group[row["group"]]) < per_group:
            by_group[row["group"]].append(row)
    groups = sorted(by_group)[:8]
    cols = max(len(by_group[g]) for g in groups)
    # A fixed layout in inches (constrained_layout would double the time of the whole call).
    panel_w, panel_h, gap_w, gap_h = 3.0, 1.9, 0.15, 0.55
    left, right, top, bottom = 0.85, 1.2, 0.35, 0.55
    width = left + cols * panel_w + (cols - 1) * gap_w + right
    height = top + len(groups) * panel_h + (len(groups) - 1) * gap_h + bottom
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap_w / panel_w, hspace=gap_h / panel_h)
    axes = fig.subplots(len(groups), cols, squeeze=False, sharey=True)
    # Pixel centres on frame centres (t * hop / sr) and bin centres (k * sr / n_fft, or mel
    # band k).
    frame_s, bin_hz = spec.hop_length / spec.sample_rate, spec.sample_rate / spec.n_fft
    low, high = (-bin_hz / 2, (spec.n_bins - 0.5) * bin_hz) if spec.kind == "stft" \
        else (-0.5, spec.n_bins - 0.5)
    extent = (-frame_s / 2, (spec.n_frames - 0.5) * frame_s, low, high)
    image = None
    for r, group in enumerate(groups):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(by_group[group]):
                ax.set_axis_off()
                continue
            row = by_group[group][c]
            x = np.load(output_dir / row["output"]).astype(np.float32)
            image = ax.imshow(x, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                              extent=extent, interpolation="nearest")
            if spec.kind == "mel":
                _mel_ticks(ax, spec)
            ax.set_title(f"{group}: {row['id']}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(groups) - 1:
                ax.set_xlabel("time (s)", fontsize=8)
            if c == 0:
                ax.set_ylabel("frequency (Hz)", fontsize=8)
    if image is not None:
        bar = fig.add_axes((1 - (right - 0.25) / width, bottom / height, 0.12 / width,
                            1 - (top + bottom) / height))
        fig.colorbar(image, cax=bar).set_label(f"0 = peak - {spec.top_db:g} dB, 1 = peak",
                                               fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path


def _mel_ticks(ax: Any, spec: SpectrogramSpec) -> None:
    # Label the mel axis in Hz. Band k peaks at mel point k + 1 of n_mels + 2 evenly spaced
    # from 0 to the Nyquist frequency's mel (HTK scale, as the filterbank).
    def mel(f_hz: float) -> float:
        return 2595.0 * math.log10(1.0 + f_hz / 700.0)

    step = mel(spec.sample_rate / 2) / (spec.n_bins + 1)
    ticks_hz = [f for f in (100, 500, 1000, 2000, 4000, 8000, 16000, 32000)
                if mel(f) / step - 1 <= spec.n_bins - 0.5]
    positions = [mel(f) / step - 1 for f in ticks_hz]
    ax.set_yticks(positions, [f"{f:g}" for f in ticks_hz])


