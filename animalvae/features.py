"""Stage 4: 3 s segments -> normalised, invertible spectrograms for the VAE.

Reads the segments stage 3 listed in ``paths.detections/manifest.csv`` (or any folder of
``<group>/<id>.wav``), and writes ``paths.spectrograms/<group>/<id>.npy``: one array of shape
``(n_bins, n_frames)`` (512 x 256 at the defaults), values in [0, 1], ``features.dtype``. The
representation and its inverse live in :mod:`animalvae.spectrogram`; the spec is saved as
``normalizer.json`` beside the arrays, and stage 5 reads it from there.

How it runs (executor "stream"): a pool of ``features.workers`` threads each takes a chunk of
``features.batch_size`` segments (on CPU at most ``_CPU_CHUNK``) through the whole job: read
each as the transform needs it (:func:`animalvae.segments.load_segment`: mono, resampled with
soxr when the file has another rate, padded per ``features.pad`` or cut), run one batched torch
transform on the chunk, and write each array atomically. No thread waits on another's
transform, so on CPU every core reads, transforms and writes at once (soundfile, soxr, torch and
file writes release the GIL); torch runs single-threaded meanwhile. Per item: unreadable ->
failed, NaN/Inf samples -> failed ("non-finite samples", never written), RMS below
``extract.silence_dbfs`` -> skipped ("silent"); a failed or skipped item's array from an
earlier run is deleted.

Manifest columns besides the base ones: ``shape`` (``512x256``), ``peak_db`` (the level of the
loudest bin, dB re a full-scale sine: what the normalisation maps to 1), ``rms_dbfs`` (0 dBFS =
a full-scale square wave), ``padded_s`` (seconds appended to a short segment), ``source_rate``
(Hz of the file as read) and ``spec_id`` (:func:`spec_fingerprint` of the spec and storage
type: a rerun redoes every array whose ``spec_id`` is not the current one, so an interrupted
or ``--limit`` run with ``--force`` and new settings never leaves a mix behind). After the run:
``preview.png`` (a few spectrograms per group), and with ``check=N`` a Griffin-Lim round trip of
N arrays (:func:`animalvae.features_check.round_trip_check`). The segments' video frames (and
``features.extra_image_dirs``) are prepared beside the arrays by :mod:`animalvae.images`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, config_to_dict
from .device import pick_device
from .errors import ConfigError
from .features_check import render_preview, round_trip_check
from .segments import load_segment
from .spectrogram import (
    NORMALIZER,
    Spectrogram,
    SpectrogramSpec,
    describe_differences,
    load_spec,
    save_spec,
)
from .stage import (
    Item,
    Outcome,
    Stage,
    StageOptions,
    Summary,
    atomic_path,
    attempt,
    list_items,
    prefetch,
    read_manifest,
    recorded_float,
    resolve_workers,
    run_stage,
    shutdown_pools,
)

__all__ = ["FeaturesStage", "FeaturesSummary", "run", "spec_from_config", "spec_fingerprint",
           "PREVIEW"]

log = logging.getLogger(__name__)

PREVIEW = "preview.png"
#: Segments per chunk on CPU: a 3 s STFT is ~1 MB of complex64, so a few stay in cache, and
#: small chunks keep every thread busy to the end (see docs/benchmarks.md for the sizes tried).
_CPU_CHUNK = 4
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def spec_from_config(config: Config) -> SpectrogramSpec:
    """The spectrogram spec of ``config``.

    Its fit to the segment (``hop_length * n_frames`` within one hop of
    ``detect.segment_seconds`` at ``extract.sample_rate``) is checked when the config loads.
    """
    return SpectrogramSpec.from_config(config.features, config.extract.sample_rate)


def spec_fingerprint(spec: SpectrogramSpec, dtype: str, pad: str = "zeros") -> str:
    """A short id of the representation, the storage type and the padding (12 hex digits).

    Recorded in every ``ok`` manifest row as ``spec_id``: arrays whose ``spec_id`` differs
    from the current one were made with other settings. ``n_mels`` counts only for mel
    spectrograms.
    """
    text = json.dumps({**spec.to_dict(defining_only=True), "dtype": np.dtype(dtype).name,
                       "pad": pad},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

class FeaturesStage(Stage):
    """Segments -> ``<group>/<id>.npy`` spectrograms: threads each read, transform and write
    a chunk.

    On CPU the threads transform at once; on a GPU (CUDA or MPS) one thread at a time holds
    the device for its transform (copy in, transform, copy back) while the others read and
    write: MPS aborts the process when two threads use it together, and one batch at a time
    keeps GPU memory at one batch.

    Parameters
    ----------
    spec : SpectrogramSpec
    dtype : {"float16", "float32"}
        Storage type of the arrays.
    batch_size : int
        Segments per chunk: read, transformed together and written by one thread (on CPU at
        most ``_CPU_CHUNK``).
    workers : int
        Threads, each taking one chunk at a time.
    silence_dbfs : float
        RMS below this is skipped as silent.
    pad : {"zeros", "repeat"}
        How short segments are padded (:func:`load_segment`).
    device : torch.device
        Where the transform runs.
    """

    name = "features"
    unit = "segment"
    suffix = ".npy"
    columns = ("shape", "peak_db", "rms_dbfs", "padded_s", "source_rate", "spec_id")
    executor = "stream"

    def __init__(self, spec: SpectrogramSpec, *, dtype: str = "float16", batch_size: int = 32,
                 workers: int = 1, silence_dbfs: float = -60.0, pad: str = "zeros",
                 device: torch.device | None = None):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.fingerprint = spec_fingerprint(spec, dtype, pad)
        self.workers = workers
        self.silence_dbfs = silence_dbfs
        self.pad = pad
        self.device = device or torch.device("cpu")
        self.batch_size = batch_size if self.device.type != "cpu" else min(batch_size,
                                                                           _CPU_CHUNK)
        self.transform = Spectrogram(spec).to(self.device)
        self._device_lock = (contextlib.nullcontext() if self.device.type == "cpu"
                             else threading.Lock())

    def should_retry(self, row: Mapping[str, str]) -> bool:
        """Retry failures; revisit a ``silent (L dBFS)`` skip once ``silence_dbfs`` is below
        ``L`` (the rule of stage 2, :meth:`animalvae.extract.ExtractStage.should_retry`)."""
        if row.get("status") == "skipped":
            level = recorded_float(row, "rms_dbfs")
            return level is not None and self.silence_dbfs < level
        return super().should_retry(row)

    def is_done(self, output: Path, row: Mapping[str, str] | None) -> bool:
        """Made with this spec and dtype: the row's ``spec_id`` is current and the ``.npy``
        header has the spec's shape and the storage dtype.

        An array without a manifest row (the row was lost) is redone: its settings are unknown.
        """
        if row is None or row.get("spec_id") != self.fingerprint:
            return False
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
        result = attempt(load_segment, Path(item.source), self.spec,
                         silence_dbfs=self.silence_dbfs, pad=self.pad)
        if isinstance(result, Outcome):
            return None, result
        y, info = result
        return y, Outcome("ok", "", info)

    def process_stream(self, work: list[tuple[Item, Path]]) -> Iterator[tuple[Item, Outcome]]:
        """Each pool thread takes a chunk of ``batch_size`` segments through read, one batched
        transform and the writes; outcomes come back in ``work``'s order.

        Whole chunks per thread, rather than reads in threads feeding one transforming thread:
        the transform then runs on every core at once (torch releases the GIL), so no single
        thread paces the stage.
        """
        chunks = [work[i:i + self.batch_size] for i in range(0, len(work), self.batch_size)]
        pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="features")
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            # One chunk per thread already keeps every core busy; torch's own OpenMP teams
            # on top of that would wait at barriers for descheduled threads.
            torch.set_num_threads(1)
        try:
            for _, outcomes in prefetch(pool, self._process_chunk, chunks,
                                        ahead=2 * self.workers):
                yield from outcomes
        finally:
            # Outcomes of chunks that finish during the shutdown are not recorded, so a rerun
            # redoes them (``is_done`` needs a manifest row).
            shutdown_pools(pool)
            torch.set_num_threads(threads)

    def _process_chunk(self, chunk: list[tuple[Item, Path]]) -> list[tuple[Item, Outcome]]:
        """Read each segment, transform the readable ones together, write each array.

        A transform that fails (a RuntimeError, e.g. out of GPU memory) fails this chunk's
        readable items with its one-line reason; the run goes on and a rerun retries them.
        """
        loaded = [(item, output, *self._load(item)) for item, output in chunk]
        ready = [(output, y, outcome) for _, output, y, outcome in loaded if y is not None]
        if not ready:
            return [(item, outcome) for item, _, _, outcome in loaded]
        try:
            arrays, peaks, finite = self._transform([y for _, y, _ in ready])
        except RuntimeError as exc:
            log.debug("features: transform of %d segment(s) failed", len(ready), exc_info=True)
            failed = Outcome("failed", f"transform failed: {' '.join(str(exc).split())[:200]}")
            return [(item, outcome if y is None else failed) for item, _, y, outcome in loaded]
        shape = "x".join(map(str, self.spec.shape))
        saved = {output: _save(output, array, ok, {"shape": shape, "peak_db": round(peak, 2),
                                                   **outcome.fields, "spec_id": self.fingerprint})
                 for (output, _, outcome), array, peak, ok in zip(ready, arrays, peaks, finite)}
        return [(item, saved.get(output, outcome)) for item, output, _, outcome in loaded]

    def _transform(self, ys: list[np.ndarray]) -> tuple[np.ndarray, list[float], list[bool]]:
        """One batched transform: arrays in the storage dtype, peaks (dB), finite flags."""
        y = torch.from_numpy(np.stack(ys))
        with self._device_lock, torch.inference_mode():
            y = y.to(self.device)
            x, peak_db = self.transform.forward_with_peak(y)        # (b, bins, frames), (b,)
            # A NaN/Inf anywhere makes the peak NaN/Inf; a finite peak bounds every value.
            finite = torch.isfinite(peak_db).cpu().tolist()
            arrays = x.to(_TORCH_DTYPES[self.dtype.name]).cpu().numpy()
            return arrays, peak_db.cpu().tolist(), finite


def _save(output: Path, array: np.ndarray, finite: bool, fields: dict[str, Any]) -> Outcome:
    """Write one array atomically (in a pool thread); its Outcome.

    A failure leaves the removal of an earlier run's array to ``run_stage``.
    """
    if not finite:  # cannot happen for finite input (load_segment checks); never write it
        return Outcome("failed", "non-finite values in the spectrogram")
    try:
        with atomic_path(output) as tmp:
            np.save(tmp, array)
    except OSError as exc:
        return Outcome("failed", f"cannot write: {' '.join(str(exc).split())}")
    return Outcome("ok", "", fields)


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


def run(config: Config, options: StageOptions, *, check: int = 0) -> FeaturesSummary:
    """Make a spectrogram of every segment in ``paths.detections``.

    Parameters
    ----------
    config : Config
        Uses ``paths.detections``, ``paths.spectrograms``, ``features``,
        ``extract.sample_rate`` and ``extract.silence_dbfs``, ``detect.segment_seconds``.
    options : StageOptions
        ``force``, ``limit``, ``workers`` (threads; default ``features.workers``),
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
        No input, a device that is not there, or an output folder holding arrays made with
        other settings (without ``force``); before any work starts. (A hop that does not fit
        the segment is refused when the config loads.)
    """
    spec = spec_from_config(config)
    device = pick_device(config.features.device, key="features.device")
    output_dir = config.paths.spectrograms
    items = list_items(config.paths.detections, [".wav"], what="segments")

    def prepare() -> None:  # holding the folder: normalizer.json is every array's key
        _check_previous_spec(output_dir, spec, force=options.force)
        save_spec(output_dir, spec)

    stage = FeaturesStage(spec, dtype=config.features.dtype,
                          batch_size=config.features.batch_size,
                          workers=resolve_workers(options.workers, config.features.workers),
                          silence_dbfs=config.extract.silence_dbfs, pad=config.features.pad,
                          device=device)
    base = run_stage(stage, items, output_dir, force=options.force, limit=options.limit,
                     progress=options.progress, shard=options.shard, prepare=prepare,
                     settings={"features": config_to_dict(config.features),
                               "sample_rate": config.extract.sample_rate,
                               "segment_seconds": config.detect.segment_seconds,
                               "silence_dbfs": config.extract.silence_dbfs})
    summary = FeaturesSummary(**{f.name: getattr(base, f.name)
                                 for f in dataclasses.fields(base)})
    from . import images  # the frames of the sound -> image model, beside the arrays
    images.run(config, options,
               workers=resolve_workers(options.workers, config.features.workers))
    rows = _current_rows(output_dir, stage.fingerprint)
    if rows and (summary.ok or not (output_dir / PREVIEW).is_file()):
        render_preview(output_dir, rows, spec, output_dir / PREVIEW)
    if check:
        summary.convergence = round_trip_check(
            output_dir, rows, spec, n=check, silence_dbfs=config.extract.silence_dbfs,
            device=device)
    return summary


def _current_rows(output_dir: Path, fingerprint: str) -> list[dict[str, str]]:
    """The ``ok`` rows whose array exists and was made with the current settings.

    Logs a warning when arrays made with other settings remain: after a change of settings,
    a ``--limit`` run leaves the rest for the next run, and arrays whose segment is no longer
    in the input are never redone.
    """
    current, stale = [], 0
    for row in read_manifest(output_dir).values():
        if row.get("status") != "ok" or not (output_dir / row.get("output", "")).is_file():
            continue
        if row.get("spec_id") == fingerprint:
            current.append(row)
        else:
            stale += 1
    if stale:
        log.warning("%s: %d array(s) there were made with other settings (left by --limit, "
                    "or their segment is gone from the input); before training on this folder, "
                    "run again without --limit, or delete the arrays the input no longer has",
                    output_dir, stale)
    return current


def _check_previous_spec(output_dir: Path, spec: SpectrogramSpec, *, force: bool) -> None:
    """Refuse to mix arrays of two representations in one folder (unless ``force``)."""
    if force or not (output_dir / NORMALIZER).is_file():
        return
    previous = load_spec(output_dir)
    if changed := describe_differences(previous.differences(spec)):
        raise ConfigError(f"{output_dir / NORMALIZER}: the arrays there were made with other "
                          f"settings ({changed}); rerun with --force to redo them all, or "
                          "write to another folder with --output")
