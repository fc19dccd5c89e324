"""Stage 3: the ``detect.segment_seconds`` window most likely to be an animal, and its frame.

For each stage-2 WAV (``paths.audio/<group>/<id>.wav``) this writes

- ``paths.detections/segments/<group>/<id>.wav``: exactly ``segment_seconds`` long, cut
  sample-exact from the input (same rate; PCM16 input is copied bit for bit), padded per
  ``detect.pad`` when the clip is shorter;
- ``paths.detections/frames/<group>/<id>.jpg``: the video frame at the score's peak inside the
  window (nearest non-blank one), when the stage-2 manifest names a video;
- one ``manifest.csv`` with ``frame, window_start, window_end, score, backend, peak_time,
  frame_time, top_labels`` (times in seconds from the clip start; ``backend``: ``panns`` or
  ``energy``, whose scores the row's are; a low-score skip keeps ``score`` and ``backend`` too).

Clips run through PANNs in batches of ``detect.batch_size`` while ``detect.workers`` threads
read (and, for other rates than 32 kHz, resample) the next batches and as many write the
finished segments and frames, so the model rarely waits on I/O. An input longer than
``detect.max_seconds`` is read and scored only up to there (the row's ``reason`` says so), which
bounds memory and model time per clip. A batch the model cannot run (e.g. out of memory) is
retried one clip at a time, so only a clip that fails on its own is recorded as failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import difflib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from . import detect, frames, panns
from .audio import (
    FRAMES_PER_S,
    as_float32,
    best_window,
    energy_scores,
    pad_audio,
    read_mono,
    resample,
    window_samples,
)
from .config import Config, DetectConfig, config_to_dict
from .device import pick_device
from .errors import ConfigError, ItemFailed
from .stage import (
    ITEM_ERRORS,
    Item,
    Outcome,
    Stage,
    StageOptions,
    Summary,
    atomic_path,
    attempt,
    default_workers,
    drain,
    list_items,
    outcome_from_exception,
    prefetch,
    recorded_float,
    run_stage,
    shutdown_pools,
)

__all__ = ["DetectStage", "PannsScorer", "EnergyScorer", "run", "AUDIO_EXTENSIONS"]

log = logging.getLogger(__name__)


def _warn_unused_classes(audioset_classes: Mapping[str, Any], groups: set[str]) -> None:
    """Warn about ``detect.audioset_classes`` keys that name no group in the input (typos)."""
    for key in sorted(k for k in audioset_classes if k != "*" and k not in groups):
        close = difflib.get_close_matches(key, sorted(groups), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        log.warning("detect.audioset_classes[%r] names no group in %s%s: it is unused",
                    key, "the input" if groups else "the (empty) input", hint)

AUDIO_EXTENSIONS = (".wav", ".flac")
_PREFETCH_BATCHES = 2  # batches read ahead of the model
_WRITE_BEHIND_BATCHES = 2  # batches of finished clips that may wait for their writes
# The reason of a low-score skip, for people: should_retry reads the ``score`` and ``backend``
# columns instead.
_LOW_SCORE = "no {what} sound (score {score:.2f})"


@dataclass
class Clip:
    """One input clip, read and ready for scoring.

    ``audio`` is the mono signal at its own rate ``sr`` (int16 when the file is PCM16, so it
    is written back unchanged; else float32), padded to at least one window and cut at
    ``detect.max_seconds``; ``model_input`` is float32 at the scorer's rate (the same array
    when no resampling is due); ``note`` goes to the row's ``reason`` (e.g. the cut).
    """

    item: Item
    output: Path
    audio: np.ndarray
    sr: int
    model_input: np.ndarray
    note: str = ""


class Scorer(Protocol):
    """Scores clips frame by frame, 100 frames/s: a ``(n_frames, n_columns)`` array per clip."""

    sample_rate: int | None  # what model_input must be at; None: any (audio's own rate)
    labels: tuple[str, ...] | None  # column names, for top_labels; None: no labels

    def __call__(self, clips: list[Clip]) -> list[np.ndarray]: ...


class PannsScorer:
    """Batched PANNs sound event detection: AudioSet class probabilities per 10 ms frame.

    Clips of a batch are zero-padded to the longest one and the frames past each clip's end
    are cut off. The last ~1.5 s of a shorter clip can still differ slightly from a run on
    its own (the CNN's receptive field, ~3 s, sees the padding), which is why
    :meth:`DetectStage.process_stream` batches clips of equal length together when it can.
    """

    sample_rate = panns.SAMPLE_RATE

    def __init__(self, model: Any, device: Any):
        self.model = model
        self.device = device
        self.labels = panns.audioset_labels()

    def __call__(self, clips: list[Clip]) -> list[np.ndarray]:
        """Each clip's ``framewise_output`` [shape=(1 + samples // 320, 527)], padding cut off."""
        import torch

        if not clips:
            return []
        lengths = [c.model_input.shape[0] for c in clips]
        batch = np.zeros((len(clips), max(lengths)), dtype=np.float32)
        for row, clip in zip(batch, clips):
            row[:clip.model_input.shape[0]] = clip.model_input  # zeros after shorter clips
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            probs = self.model(x)["framewise_output"]  # (batch, 1 + max_len // 320, 527)
            probs = probs.float().cpu().numpy()
        return [probs[i, :detect.n_frames(n, hop_length=panns.HOP_LENGTH)]
                for i, n in enumerate(lengths)]


class EnergyScorer:
    """Model-free fallback: frame RMS level in [0, 1] (-80 dBFS -> 0, 0 dBFS -> 1).

    Not animal-aware: the loudest window wins, whatever made the sound.
    """

    sample_rate = None
    labels = None

    def __call__(self, clips: list[Clip]) -> list[np.ndarray]:
        return [energy_scores(c.audio, c.sr)[:, None] for c in clips]


class DetectStage(Stage):
    """Stage 3 over stage-2 WAV files; see the module docstring for what it writes."""

    name = "detect"
    unit = "clip"
    suffix = ".wav"
    columns = ("frame", "window_start", "window_end", "score", "backend", "peak_time",
               "frame_time", "top_labels")
    executor = "stream"

    def __init__(self, settings: DetectConfig, *, scorer: Scorer,
                 classes: dict[str, list[int]] | None = None, io_workers: int | None = None):
        """
        Parameters
        ----------
        settings : DetectConfig
        scorer : Scorer
            :class:`PannsScorer` or :class:`EnergyScorer`.
        classes : dict of group -> list of int
            Score columns whose max is a frame's score, per group (PANNs); ignored by
            single-column scorers.
        io_workers : int or None
            Threads for reading and for writing (each); None: ``detect.workers``
            (0 = one per CPU core).
        """
        self.settings = settings
        self.scorer = scorer
        self.classes = classes or {}
        self.io_workers = default_workers(settings.workers if io_workers is None else io_workers)
        self.window_frames = int(round(settings.segment_seconds * FRAMES_PER_S))
        # Which backend's scores these are (a manifest column: scores of the two do not
        # compare), and what a low score means: no animal (PANNs classes) or nothing loud.
        self.backend = "panns" if scorer.labels is not None else "energy"
        self.sound = "animal" if scorer.labels is not None else "loud"

    # ---- layout -----------------------------------------------------------------------------

    def output_path(self, item: Item) -> Path:
        return Path("segments") / item.group / f"{item.id}.wav"

    @staticmethod
    def frame_path(output: Path) -> Path:
        """``<root>/frames/<group>/<id>.jpg`` for segment ``<root>/segments/<group>/<id>.wav``."""
        return output.parents[2] / "frames" / output.parent.name / f"{output.stem}.jpg"

    def is_done(self, output: Path, row: dict[str, str] | None) -> bool:
        """A readable PCM16 segment of ``segment_seconds`` (a new length redoes the item),
        and its frame when the manifest row names one."""
        try:
            info = sf.info(str(output))
        except (RuntimeError, OSError):  # missing or unreadable (LibsndfileError: RuntimeError)
            return False
        if (info.subtype != "PCM_16" or info.channels != 1 or info.frames
                != int(round(self.settings.segment_seconds * info.samplerate))):
            return False
        frame = (row or {}).get("frame")
        return not frame or (output.parents[2] / frame).is_file()

    def should_retry(self, row: Mapping[str, str]) -> bool:
        """Retry failures; revisit a low-score skip (a skip that recorded its ``score``) when
        ``detect.min_score`` is now at or below that score, or when another ``backend``
        scored it (the two backends' scores do not compare); keep other skips."""
        if row.get("status") == "failed":
            return True
        score = recorded_float(row, "score")
        if score is None:
            return False
        return row.get("backend") != self.backend or self.settings.min_score <= score

    def discard(self, output: Path) -> None:
        """Remove an item's segment and its frame (see :meth:`Stage.discard`)."""
        super().discard(output)
        self.frame_path(output).unlink(missing_ok=True)

    # ---- the pipeline -----------------------------------------------------------------------

    def process_stream(self, work: list[tuple[Item, Path]]) -> Iterator[tuple[Item, Outcome]]:
        """Read ahead, score in batches, write behind; yield each item's outcome.

        Clips are taken shortest first, so a batch holds clips of equal (or similar) length:
        no padding, hence scores that do not depend on which clips share a batch, and no
        compute spent on padding. An unreadable file fails alone: the rest of its batch
        goes on; so does a clip the model fails on (see :meth:`score`). Both sides are
        bounded: at most ``_PREFETCH_BATCHES`` batches are read ahead, and scoring waits
        while ``_WRITE_BEHIND_BATCHES`` batches of finished clips (audio and scores in
        memory) are still being written.
        """
        cap_us = int(self.settings.max_seconds * 1_000_000)
        work = sorted(work, key=lambda pair: min(_duration_us(pair[0]), cap_us))
        size = self.settings.batch_size
        readers = cf.ThreadPoolExecutor(self.io_workers, thread_name_prefix="detect-read")
        writers = cf.ThreadPoolExecutor(self.io_workers, thread_name_prefix="detect-write")
        writing: dict[cf.Future, Clip] = {}
        loaded = prefetch(readers, lambda pair: attempt(self.load, *pair), work,
                          ahead=_PREFETCH_BATCHES * size)
        try:
            for batch in _batched(loaded, size):
                clips = []
                for (item, _output), clip in batch:
                    if isinstance(clip, Outcome):
                        yield item, clip
                    else:
                        clips.append(clip)
                for clip, scores in zip(clips, self.score(clips)):
                    if isinstance(scores, Outcome):
                        yield clip.item, scores
                    else:
                        writing[writers.submit(self.finish, clip, scores)] = clip
                for clip, future in drain(writing, keep=_WRITE_BEHIND_BATCHES * size):
                    yield self._written(clip, future)
            for clip, future in drain(writing, keep=0):
                yield self._written(clip, future)
        finally:
            loaded.close()
            shutdown_pools(readers, writers)

    def score(self, clips: list[Clip]) -> list[np.ndarray | Outcome]:
        """The scorer's output for each clip, or the Outcome of a clip it failed on.

        When a batch fails (a RuntimeError such as CUDA or CPU out of memory, or any other
        item-level error), its clips are scored again one at a time: only a clip that also
        fails on its own is recorded as failed, and the run goes on.
        """
        try:
            return list(self.scorer(clips))
        except ITEM_ERRORS as exc:
            failure = outcome_from_exception(exc)
            log.debug("detect: scoring %d clip(s) failed", len(clips), exc_info=True)
        # Out of the except block: the failed batch's tensors (held by the traceback) are freed.
        if len(clips) == 1:
            return [failure]
        log.warning("detect: a batch of %d clips failed (%s); scoring them one at a time",
                    len(clips), failure.reason)
        return [self.score([clip])[0] for clip in clips]

    def _written(self, clip: Clip, future: cf.Future) -> tuple[Item, Outcome]:
        return clip.item, _outcome(future)

    def load(self, item: Item, output: Path) -> Clip:
        """Read one clip (up to ``detect.max_seconds``) as mono, pad it to a window, and
        resample a copy for the model if needed."""
        max_s = self.settings.max_seconds
        y, sr, total = read_mono(Path(item.source).resolve(), keep_int16=True,
                                 max_frames=lambda rate: int(round(max_s * rate)))
        note = f"scored the first {max_s:g} s of {total / sr:.1f} s" if total > len(y) else ""
        y = pad_audio(y, int(round(self.settings.segment_seconds * sr)), mode=self.settings.pad)
        x = as_float32(y)
        if self.scorer.sample_rate is not None:
            x = resample(x, sr, self.scorer.sample_rate)
        return Clip(item, output, y, sr, x, note)

    def finish(self, clip: Clip, probs: np.ndarray) -> dict[str, Any] | Outcome:
        """Choose the window, write the segment and the frame; the manifest columns.

        Returns
        -------
        dict or Outcome
            The columns of an ``ok`` row; or, when the best window's mean score is below
            ``detect.min_score``, a ``skipped`` Outcome that keeps the ``score`` (so
            :meth:`should_retry` can revisit it when the threshold is lowered).
        """
        item, settings = clip.item, self.settings
        columns = self.classes.get(item.group) if probs.shape[1] > 1 else [0]
        if not columns:
            raise ItemFailed(f"no AudioSet classes configured for group {item.group!r}")
        scores = detect.frame_scores(probs, columns)
        start, score = best_window(scores, window_frames=self.window_frames)
        if score < settings.min_score:
            return Outcome("skipped", _LOW_SCORE.format(what=self.sound, score=score),
                           {"score": score, "backend": self.backend})
        peak = detect.peak_frame(scores, start, self.window_frames)
        labels = (detect.top_labels(probs[start:start + self.window_frames], self.scorer.labels)
                  if self.scorer.labels is not None else [])

        segment_samples = int(round(settings.segment_seconds * clip.sr))
        first = window_samples(start, segment_samples=segment_samples,
                                      n_samples=clip.audio.shape[0], sr=clip.sr)
        window_s = (first / clip.sr, (first + segment_samples) / clip.sr)
        peak_s = min(max(peak / FRAMES_PER_S, window_s[0]), window_s[1])

        frame_rel, frame_time, note = self._write_frame(clip, peak_s, window_s)
        with atomic_path(clip.output) as tmp:  # last: the segment marks the item done
            sf.write(str(tmp), clip.audio[first:first + segment_samples], clip.sr,
                     subtype="PCM_16", format="WAV")
        fields = {"frame": frame_rel, "window_start": window_s[0], "window_end": window_s[1],
                  "score": score, "backend": self.backend, "peak_time": peak_s,
                  "frame_time": frame_time, "top_labels": "; ".join(labels)}
        if notes := "; ".join(n for n in (clip.note, note) if n):
            fields["_note"] = notes
        return fields

    def _write_frame(self, clip: Clip, peak_s: float, window_s: tuple[float, float]
                     ) -> tuple[str, float | None, str]:
        """Grab and write the frame; ``(relative path or "", frame time, note)``.

        A missing, unreadable or unwritable frame (OpenCV errors included: :mod:`.frames`
        turns them into OSError/ValueError) is not the item's failure: the audio segment
        is still good, so the row stays ``ok`` with an empty frame and a note in ``reason``.
        """
        target = self.frame_path(clip.output)
        video = str(clip.item.upstream.get("video") or "")
        if not video:
            target.unlink(missing_ok=True)  # a frame from an earlier run no longer applies
            return "", None, ""
        path = Path(video)
        if not path.is_absolute():  # manifests write absolute paths; be lenient
            path = Path(clip.item.source).resolve().parents[1] / path
        try:
            frame = frames.grab_frame(path, peak_s, window=window_s,
                                      min_mean=self.settings.frame_min_mean,
                                      min_std=self.settings.frame_min_std)
            if frame is not None:
                frames.write_jpeg(target, frame.image, quality=self.settings.jpeg_quality)
                return (target.relative_to(clip.output.parents[2]).as_posix(), frame.time_s,
                        "")
            note = "no frame: none usable in the window (blank or past the video's end)"
        except (OSError, ValueError) as exc:
            note = f"no frame: {outcome_from_exception(exc).reason}"
        target.unlink(missing_ok=True)
        return "", None, note


def _duration_us(item: Item) -> int:
    """Duration of an item's audio in microseconds, from the header (0 when unreadable)."""
    try:
        info = sf.info(str(Path(item.source).resolve()))
    except (OSError, RuntimeError, ValueError):  # it fails properly when loaded
        return 0
    return int(info.frames * 1_000_000 // max(info.samplerate, 1))


def _batched(pairs: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` consecutive elements (the last one shorter)."""
    batch: list[Any] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _outcome(future: cf.Future) -> Outcome:
    """The Outcome of a :meth:`DetectStage.finish` future (its row, skip or error)."""
    result = attempt(future.result)
    if isinstance(result, Outcome):
        return result
    note = result.pop("_note", "")
    return Outcome("ok", note, result)


# --------------------------------------------------------------------------------------------
# The stage run
# --------------------------------------------------------------------------------------------

def run(config: Config, options: StageOptions) -> Summary:
    """Run stage 3 over ``paths.audio`` into ``paths.detections``.

    Checks first, together: the input folder, an AudioSet class list for every group, the
    device, and (``panns``) the checkpoint; then loads the model once and records
    ``settings.yaml`` before any item is processed.

    Parameters
    ----------
    config : Config
    options : StageOptions
        ``force``, ``limit``, ``progress``, and ``workers``: I/O threads each for reading
        and writing (None: ``detect.workers``; 0 = one per CPU core).

    Raises
    ------
    ConfigError
        For any of those problems, before any item is processed.
    """
    settings = config.detect
    problems: list[str] = []
    items: list[Item] = []
    try:
        items = list_items(config.paths.audio, AUDIO_EXTENSIONS, what="audio")
    except ConfigError as exc:
        problems += exc.problems
    classes: dict[str, list[int]] = {}
    device = None
    if settings.backend == "panns":
        _warn_unused_classes(settings.audioset_classes, {item.group for item in items})
        for group in sorted({item.group for item in items}):
            spec = settings.audioset_classes.get(group, settings.audioset_classes.get("*"))
            if spec is None:
                problems.append(f"detect.audioset_classes has no entry for group {group!r} "
                                "and no '*' entry: add one (AudioSet names or indices)")
            else:
                classes[group] = panns.resolve_classes(spec)[0]  # names checked by config
        problems += panns.check_checkpoint(settings.checkpoint)
        try:
            device = pick_device(settings.device, key="detect.device")
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)

    if settings.backend == "panns":
        if config.extract.sample_rate != panns.SAMPLE_RATE:
            log.warning("extract.sample_rate=%d: each clip is resampled to %d Hz for PANNs "
                        "(segments keep %d Hz); set it to %d to skip that",
                        config.extract.sample_rate, panns.SAMPLE_RATE,
                        config.extract.sample_rate, panns.SAMPLE_RATE)
        scorer: Scorer = PannsScorer(panns.load_detector(settings.checkpoint, device), device)
    else:
        log.info("detect.backend=energy: the loudest window is chosen (not animal-aware)")
        scorer = EnergyScorer()
    stage = DetectStage(settings, scorer=scorer, classes=classes, io_workers=options.workers)
    output_dir = config.paths.detections
    return run_stage(stage, items, output_dir, force=options.force, limit=options.limit,
                     progress=options.progress, shard=options.shard,
                     settings={**config_to_dict(settings), "frames_per_s": FRAMES_PER_S,
                               "device_used": str(device or "cpu")})
