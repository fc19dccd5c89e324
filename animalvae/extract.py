"""Stage 2: clips (and the user's own recordings) -> mono 16-bit WAV at ``extract.sample_rate``.

Each source is probed with ffprobe first (no audio stream, corrupt, too short: failed), then
converted by one ffmpeg run that decodes the first audio stream, resamples it once to
``extract.sample_rate``, mixes it down to mono and writes PCM 16-bit WAV. Nothing resamples the
audio again later: PANNs (stage 3) and the spectrograms (stage 4) read these files as they are.

The RMS level is measured on the converted file; near-silent audio (VGGSound has muted clips) is
skipped and its WAV not kept. A skip or failure is not final: a later run revisits a silent
skip once ``extract.silence_dbfs`` is lowered below its level, a too-short failure once
``extract.min_seconds`` allows its duration, and any item whose source file changed or whose
ffmpeg/ffprobe run was stopped by a signal (a Ctrl-C reaches them too; recorded as
``interrupted: ...``) (see :meth:`ExtractStage.should_retry`).

Manifest columns besides the base ones: ``video`` (absolute path of the source when it has a
video stream, for stage 3's frames; else empty), ``duration`` (seconds), ``sample_rate`` (Hz)
and ``rms_dbfs`` (dB relative to a full-scale square wave). A silent skip records its
``rms_dbfs`` and a too-short failure its ``duration``: the values a later run's
:meth:`ExtractStage.should_retry` reads back; other failed rows leave the columns empty.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg
import soundfile as sf

from .audio import wav_rms_dbfs
from .config import Config, ExtractConfig, config_to_dict
from .errors import ConfigError, ItemFailed, ItemSkipped
from .stage import (
    Item,
    Stage,
    StageOptions,
    Summary,
    atomic_path,
    last_manifest_write,
    list_items,
    recorded_float,
    require_binaries,
    resolve_workers,
    run_stage,
)

__all__ = ["ExtractStage", "run", "list_sources", "ffmpeg_reason", "interrupted_reason",
           "CLIP_EXTENSIONS", "AUDIO_EXTENSIONS"]

log = logging.getLogger(__name__)

CLIP_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a")

# ffmpeg's closing lines that only repeat that something went wrong; the line before says what.
_GENERIC_LINES = (
    "invalid data found when processing input", "conversion failed!",
    "error opening input files", "error opening input file", "error opening output files",
    "error while decoding stream", "nothing was encoded",
)
_LOG_PREFIX_RE = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")
# How run_stage records an exception that is not ItemFailed: "OSError: [Errno 28] ...".
_EXCEPTION_REASON_RE = re.compile(r"^[A-Z]\w*(Error|Exception): ")
# A tool run that ended because of a signal (a terminal Ctrl-C reaches ffmpeg/ffprobe too): the
# file was not judged, so the failure is recorded as "interrupted: ..." and always retried.
_INTERRUPTED = "interrupted: "
_RECEIVED_SIGNAL_RE = re.compile(r"received signal (\d+)")
# A decode that comes out shorter than the declared duration by more than this is a partial
# file (when ffmpeg also reported errors); small differences are codec padding.
_PARTIAL_TOLERANCE_S = 0.1


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------

def ffmpeg_reason(stderr: bytes | str, path: Path | str | None = None) -> str:
    """The one line of ffmpeg/ffprobe error output that says what is wrong with a file.

    Lines are stripped of the ``[demuxer @ 0x…]`` and ``<path>:`` prefixes; the last line that
    is not a generic "it failed" line wins (``moov atom not found`` rather than ``Invalid data
    found when processing input``), else the last line.

    Parameters
    ----------
    stderr : bytes or str
        ffmpeg's error output (run with ``-loglevel error``).
    path : Path or str, optional
        The input file, whose name ffmpeg prefixes to some lines.

    Returns
    -------
    str
        One line; ``"ffmpeg failed"`` when the output is empty.
    """
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = []
    for raw in text.splitlines():
        line = _LOG_PREFIX_RE.sub("", raw.strip())
        if path is not None and line.startswith(f"{path}: "):
            line = line[len(f"{path}: "):]
        if line:
            lines.append(line)
    specific = [ln for ln in lines if not ln.lower().startswith(_GENERIC_LINES)]
    chosen = specific or lines
    return chosen[-1] if chosen else "ffmpeg failed"


def interrupted_reason(tool: str, returncode: int, stderr: bytes | str) -> str | None:
    """``"interrupted: ..."`` when ``tool`` ended because of a signal, else None.

    A signal shows as a negative return code (killed), or as ffmpeg's own exit after catching
    it: status 255 with "Exiting normally, received signal N." (or "received signal N") in
    its output. Such a run says nothing about the file; its partial output (e.g. "moov atom
    not found" from a read cut short) must not be recorded as the file's fault.
    """
    if returncode < 0:
        return f"{_INTERRUPTED}{tool} stopped by signal {-returncode}"
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    if returncode == 255 and (match := _RECEIVED_SIGNAL_RE.search(text)):
        return f"{_INTERRUPTED}{tool} received signal {match[1]}"
    return None


def _round_ms(duration_s: float) -> float:
    # The too-short test and the duration it records use the same rounded value, so a retry
    # decided from the row (should_retry) agrees with the test it repeats.
    return round(duration_s, 3)


def _round_db(level_dbfs: float) -> float:
    # Same for the silence test: 0.01 dB, the precision of the rms_dbfs column.
    return round(level_dbfs, 2)


def _audio_facts(info: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, float | None, bool]:
    """From ffprobe's JSON: the first audio stream, its duration in seconds, and has-video.

    The duration is exact (``duration_ts * time_base``) when ffprobe gives it, else the stream
    or container duration (an upper bound), else None. Cover art in audio files is a
    one-picture "video" stream (``attached_pic``) and does not count as video.
    """
    streams = info.get("streams", [])
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    has_video = any(s.get("codec_type") == "video"
                    and not s.get("disposition", {}).get("attached_pic") for s in streams)
    if audio is None:
        return None, None, has_video
    duration_s: float | None = None
    try:
        if audio.get("duration_ts") is not None and audio.get("time_base"):
            duration_s = float(Fraction(int(audio["duration_ts"])) * Fraction(audio["time_base"]))
        elif audio.get("duration") not in (None, "N/A"):
            duration_s = float(audio["duration"])
        elif info.get("format", {}).get("duration") not in (None, "N/A"):
            duration_s = float(info["format"]["duration"])
    except (ValueError, ZeroDivisionError):
        duration_s = None
    return audio, duration_s, has_video


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

class ExtractStage(Stage):
    """Probe, convert (ffmpeg: first audio stream -> mono PCM16 at ``sr``), measure, keep or skip.

    Parameters
    ----------
    sr : int
        Output sample rate in Hz.
    min_seconds : float
        Audio shorter than this fails as ``too short``.
    silence_dbfs : float
        Audio whose RMS (dBFS) is below this is skipped as ``silent``.
    last_run : float or None
        When the previous run wrote its manifest (``st_mtime``): a source modified since is
        redone whatever its earlier outcome (see :meth:`should_retry`).
    """

    name = "extract"
    unit = "clip"
    suffix = ".wav"
    columns = ("video", "duration", "sample_rate", "rms_dbfs")
    executor = "process"

    def __init__(self, *, sr: int, min_seconds: float, silence_dbfs: float,
                 last_run: float | None = None):
        self.sr = sr
        self.min_seconds = min_seconds
        self.silence_dbfs = silence_dbfs
        self.last_run = last_run

    @classmethod
    def from_config(cls, config: ExtractConfig, *, last_run: float | None = None) -> ExtractStage:
        """The stage for the ``extract`` section of the config."""
        return cls(sr=config.sample_rate, min_seconds=config.min_seconds,
                   silence_dbfs=config.silence_dbfs, last_run=last_run)

    def should_retry(self, row: Mapping[str, str]) -> bool:
        """Whether an item that failed or was skipped in an earlier run is tried again.

        Probing and decoding a local file is deterministic, so an outcome stands until what
        decided it changes (or ``--force``):

        - the source file was modified since the last run: always redone;
        - skipped as silent (the row's ``rms_dbfs`` L): revisited when ``silence_dbfs`` is now
          below ``L``;
        - failed as too short (the only failure that records a ``duration`` D): retried when
          ``min_seconds`` is now at most ``D``;
        - failed as ``interrupted: ...`` (ffmpeg/ffprobe stopped by a signal, e.g. Ctrl-C):
          always retried;
        - any other failure: retried only when it was an unexpected error (recorded as
          ``SomeError: ...``, e.g. a full disk), not the file ("no audio stream", "moov atom
          not found" stand).

        Parameters
        ----------
        row : Mapping[str, str]
            The item's manifest row from the earlier run (``status`` failed or skipped).

        Returns
        -------
        bool
        """
        reason = row.get("reason", "")
        if self._source_changed(row) or reason.startswith(_INTERRUPTED):
            return True
        if row.get("status") == "skipped":
            level = recorded_float(row, "rms_dbfs")
            return level is not None and self.silence_dbfs < level
        if (duration_s := recorded_float(row, "duration")) is not None:
            return duration_s >= self.min_seconds
        return _EXCEPTION_REASON_RE.match(reason) is not None

    def _source_changed(self, row: Mapping[str, str]) -> bool:
        """Modified since the last run (True when unknown: no last run, or no such file)."""
        if self.last_run is None:
            return True
        try:
            return Path(row["source"]).stat().st_mtime > self.last_run
        except (KeyError, OSError):
            return True

    def is_done(self, output: Path, row: Mapping[str, str] | None) -> bool:
        """A readable mono PCM16 WAV at this stage's sample rate (a new rate redoes the item)."""
        try:
            info = sf.info(str(output))
        except (RuntimeError, OSError):  # missing or unreadable (LibsndfileError is a RuntimeError)
            return False
        if row is not None and row.get("sample_rate") not in (None, "", str(self.sr)):
            return False
        return (info.samplerate == self.sr and info.channels == 1 and info.frames > 0
                and info.subtype == "PCM_16")

    def process(self, item: Item, output: Path) -> dict[str, Any]:
        """Convert one source to ``output``; the returned dict fills the manifest columns."""
        source = Path(item.source).absolute()  # absolute: an id may start with "-"
        info = _probe(source)
        audio, declared_s, has_video = _audio_facts(info)
        if audio is None:
            raise ItemFailed("no audio stream")
        if declared_s is not None:
            self._check_length(declared_s)

        with atomic_path(output) as tmp:
            errors = self._convert(source, tmp, declared_s)
            frames = sf.info(str(tmp)).frames
            duration_s = frames / self.sr
            if errors and declared_s is not None \
                    and duration_s < declared_s - _PARTIAL_TOLERANCE_S:
                raise ItemFailed(f"corrupt: decoded {duration_s:.1f} of {declared_s:.1f} s "
                                 f"({ffmpeg_reason(errors, source)})")
            self._check_length(duration_s)
            level = _round_db(wav_rms_dbfs(tmp))
            if level < self.silence_dbfs:
                raise ItemSkipped(f"silent ({level:.2f} dBFS)", rms_dbfs=level)
            if errors:
                log.debug("%s: ffmpeg reported (output kept): %s", source,
                          ffmpeg_reason(errors, source))
        return {"video": str(source) if has_video else "", "duration": round(duration_s, 6),
                "sample_rate": self.sr, "rms_dbfs": level}

    def _check_length(self, duration_s: float) -> None:
        """Raise ``ItemFailed("too short (D s)")``, recording ``duration`` D, if too short."""
        if (rounded := _round_ms(duration_s)) < self.min_seconds:
            raise ItemFailed(f"too short ({rounded:.3f} s)", duration=rounded)

    def _convert(self, source: Path, target: Path, declared_s: float | None) -> bytes:
        """Run ffmpeg: first audio stream -> mono PCM16 WAV at ``self.sr``; return its stderr.

        AAC in mp4 decodes to whole 1024-sample frames, i.e. up to 1023 samples of encoder
        padding past the declared end; ``atrim`` cuts at the declared duration (counted from
        the first sample, so a stream starting late is not cut short).
        """
        stream = ffmpeg.input(str(source))["a:0"].filter("aresample", self.sr)
        if declared_s is not None:
            stream = stream.filter("atrim", end_sample=round(declared_s * self.sr))
        args = stream.output(str(target), f="wav", acodec="pcm_s16le", ac=1, ar=self.sr,
                             map_metadata=-1).compile(
            cmd=["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"],
            overwrite_output=True)
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        _check_run("ffmpeg", proc, source)
        if not target.is_file():
            raise ItemFailed(ffmpeg_reason(proc.stderr, source))
        return proc.stderr


def _probe(source: Path) -> dict[str, Any]:
    """``ffprobe``'s JSON for ``source`` (as ``ffmpeg.probe``, which hides the return code)."""
    proc = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams",
                           "-of", "json", str(source)],
                          stdin=subprocess.DEVNULL, capture_output=True, check=False)
    _check_run("ffprobe", proc, source)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise ItemFailed("ffprobe gave no readable output") from None


def _check_run(tool: str, proc: subprocess.CompletedProcess, source: Path) -> None:
    """Raise ItemFailed for a failed run: ``interrupted: ...`` (retried) after a signal."""
    if (interrupted := interrupted_reason(tool, proc.returncode, proc.stderr)) is not None:
        raise ItemFailed(interrupted)
    if proc.returncode != 0:
        raise ItemFailed(ffmpeg_reason(proc.stderr, source))


# --------------------------------------------------------------------------------------------
# Running the stage
# --------------------------------------------------------------------------------------------

def list_sources(config: Config) -> list[Item]:
    """The clips in ``paths.clips`` plus the recordings in each ``extract.extra_audio_dirs``.

    Clips: stage 1's manifest and ``<group>/<id>.{mp4,mkv,webm,mov}``; recordings:
    ``<dir>/<group>/<id>.{wav,mp3,flac,ogg,m4a}`` (the group is the sub-folder, the id the file
    name without extension). A missing or empty clips folder is fine when recordings exist.

    Raises
    ------
    ConfigError
        When there is nothing to convert at all (one line per folder, saying why).
    """
    items: list[Item] = []
    problems: list[str] = []
    try:
        items += list_items(config.paths.clips, CLIP_EXTENSIONS, what="clips")
    except ConfigError as exc:
        problems += exc.problems
    for folder in config.extract.extra_audio_dirs:
        try:
            items += list_items(folder, AUDIO_EXTENSIONS, what="extra audio")
        except ConfigError as exc:
            problems += exc.problems
    if not items:
        raise ConfigError(problems)
    for problem in problems:  # e.g. no clips folder, but recordings to convert: fine
        log.info("%s", problem)
    return items


def run(config: Config, options: StageOptions) -> Summary:
    """Convert every clip and extra recording to ``paths.audio/<group>/<id>.wav``.

    Parameters
    ----------
    config : Config
        Uses ``paths.clips``, ``paths.audio`` and the ``extract`` section.
    options : StageOptions
        ``force``, ``limit``, ``workers`` (default ``extract.workers``; 0 = one per core),
        ``progress``.

    Returns
    -------
    Summary

    Raises
    ------
    ConfigError
        ffmpeg/ffprobe not installed, or no input at all; raised before any work starts.
    """
    require_binaries("ffmpeg", "ffprobe")
    items = list_sources(config)
    output_dir = config.paths.audio
    workers = resolve_workers(options.workers, config.extract.workers)
    last_run = last_manifest_write(output_dir)
    stage = ExtractStage.from_config(config.extract, last_run=last_run)
    return run_stage(stage, items, output_dir,
                     force=options.force, limit=options.limit, workers=workers,
                     progress=options.progress, shard=options.shard,
                     settings=config_to_dict(config.extract))
