"""Stage 1: VGGSound rows -> the 10 s clip of each selected video, as ``<group>/<id>.mp4``.

yt-dlp's Python API fetches only ``[start, start + download.clip_seconds]`` of each video
(``download_ranges``, cut exactly with ``force_keyframes_at_cuts``), as an mp4 with an audio
track and the video at most ``download.max_height`` pixels high. Each clip is written into a
hidden temp folder beside its final place and moved there only after ffprobe has checked it
(an audio stream, a duration), so an interrupted run never leaves a half clip.

yt-dlp's own retries are off: each failure is classified from yt-dlp's message instead.

- transient (HTTP 429, 5xx, timeouts, connection resets): retried in this run with exponential
  backoff and jitter; if every try fails, the clip is ``failed`` and a later run tries again.
- permanent (unavailable, private, removed, sign-in or bot check, HTTP 404, no audio): recorded
  with a reason starting ``permanent:`` and not tried again unless ``--retry-failed``.
- anything else: ``failed`` now (reason ``error: ...``), tried again by the next run.

Many rate-limit answers in a row (HTTP 429 or bot checks, ``download.max_consecutive_rate_limits``)
stop the run early with advice, instead of burning through the list while blocked.

``--from-dir`` takes clips a user already has (``<ytid>_<start:06d>.mp4`` anywhere under a
folder) by hard link, or copy, instead of downloading. Manifest columns besides the base ones:
``ytid, start, split, bytes, duration``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import cli
from .config import Config, DownloadConfig, config_to_dict
from .errors import AnimalVAEError, ConfigError, ItemFailed
from .stage import (
    Item,
    Stage,
    atomic_path,
    read_manifest,
    run_stage,
    write_manifest,
    write_settings,
)
from .vggsound_csv import ParsedCsv, Row, clip_id, expand_classes, read_csv, select_rows

__all__ = ["run", "plan", "Plan", "DownloadStage", "LocalCopyStage", "RateLimited", "Failure",
           "classify_error", "ydl_options", "backoff_delay", "find_local_clips", "probe_clip",
           "PERMANENT"]

log = logging.getLogger(__name__)

#: Reason prefix of a failure that later runs do not retry (unless ``--retry-failed``).
PERMANENT = "permanent"
_TRANSIENT = "transient"
_ERROR = "error"

_MIN_CLIP_S = 0.1          # shorter than this is an empty clip (start past the video's end)
_PROBE_TIMEOUT_S = 60
_SHOWN = 5                 # malformed rows / missing ids named in messages

# Clips a user already has: VGGSound's "<ytid>_<start:06d>.mp4", also "..._<end:06d>.mp4".
_LOCAL_NAME_RE = re.compile(r"([A-Za-z0-9_-]{11})_(\d{1,7})(?:_\d{1,7})?\.[mM][pP]4")
# This module's temp folders (".<id>.tmp<pid>"), left behind only when a run was killed.
_TEMP_DIR_RE = re.compile(r"\.[A-Za-z0-9_-]{11}_\d+\.tmp\d+")

# yt-dlp's error text -> (kind, what). Checked in order, on the lower-cased message.
_RATE_LIMIT = "HTTP 429 rate-limited"
_BOT_CHECK = "bot check (set download.cookies_file, then rerun with --retry-failed)"
_PATTERNS: tuple[tuple[str, str, str], ...] = (
    (r"http error 429|too many requests", _TRANSIENT, _RATE_LIMIT),
    (r"not a bot", PERMANENT, _BOT_CHECK),
    (r"private video|video is private", PERMANENT, "private video"),
    (r"confirm your age|age[- ]restricted|inappropriate for some users", PERMANENT,
     "sign-in required (age check)"),
    (r"members[- ]only|join this channel", PERMANENT, "members-only video"),
    (r"sign in|login required|log in", PERMANENT, "sign-in required"),
    (r"removed|terminated|no longer available", PERMANENT, "video removed"),
    (r"copyright|blocked it|not available in your country|geo[- ]?restrict", PERMANENT,
     "blocked (copyright or region)"),
    (r"requested format is not available|no video formats found", PERMANENT,
     "no suitable mp4/audio format"),
    (r"video unavailable|is unavailable|is not available", PERMANENT, "video unavailable"),
    (r"unsupported url", PERMANENT, "unsupported URL (check download.url_template)"),
    (r"http error (404|410)", PERMANENT, "not found (HTTP 404/410)"),
    (r"http error 5\d\d", _TRANSIENT, "server error (HTTP 5xx)"),
    (r"timed? ?out", _TRANSIENT, "timeout"),
    (r"connection (reset|aborted|refused)|reset by peer|remote end closed|incompleteread"
     r"|broken pipe|temporary failure in name resolution|network is unreachable"
     r"|eof occurred", _TRANSIENT, "connection error"),
)
_COMPILED = tuple((re.compile(p), kind, what) for p, kind, what in _PATTERNS)


class RateLimited(AnimalVAEError):
    """Too many rate-limit answers in a row: the run stops early (raised out of the pool)."""


# --------------------------------------------------------------------------------------------
# Pure helpers: error classification, backoff, yt-dlp options
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """A classified download error.

    Attributes
    ----------
    kind : {"transient", "permanent", "error"}
        transient: retried with backoff; permanent: never again without ``--retry-failed``;
        error: not retried in this run, tried again by the next.
    what : str
        Short description, e.g. ``"video unavailable"``.
    detail : str
        yt-dlp's message on one line.
    """

    kind: Literal["transient", "permanent", "error"]
    what: str
    detail: str

    @property
    def rate_limited(self) -> bool:
        """Whether this answer suggests the server is limiting us (429 or a bot check)."""
        return self.what in (_RATE_LIMIT, _BOT_CHECK)

    def reason(self, tries: int = 1) -> str:
        """The one-line manifest reason; ``permanent: ...`` marks a final failure."""
        if self.kind == _ERROR:
            return f"error: {self.detail}"
        after = f" after {tries} tries" if tries > 1 else ""
        return f"{self.kind}: {self.what}{after} ({self.detail})"


def classify_error(message: str) -> Failure:
    """Classify one of yt-dlp's error messages (``DownloadError`` text).

    Parameters
    ----------
    message : str
        E.g. ``"ERROR: [youtube] abc: Video unavailable"`` or ``"ERROR: [generic] x: Unable to
        download webpage: HTTP Error 429: Too Many Requests (caused by ...)"``.

    Returns
    -------
    Failure
    """
    detail = " ".join(message.split())
    detail = re.sub(r"^ERROR:\s*", "", detail)
    detail = re.sub(r"\s*\(caused by .*$|;? ?please report this issue.*$", "", detail,
                    flags=re.IGNORECASE) or "unknown yt-dlp error"
    # The reason wraps the detail in parentheses, which the summary folds: keep them unnested.
    detail = detail.translate(str.maketrans("()", "[]"))
    lowered = message.lower()
    for pattern, kind, what in _COMPILED:
        if pattern.search(lowered):
            return Failure(kind, what, detail)  # type: ignore[arg-type]
    return Failure(_ERROR, "error", detail)


def backoff_delay(attempt: int, backoff_s: float, rng: random.Random) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based).

    ``backoff_s * 2 ** (attempt - 1)``, times a random factor in [0.5, 1.5) so that threads
    that failed together do not retry together.
    """
    return backoff_s * 2 ** (attempt - 1) * rng.uniform(0.5, 1.5)


def ydl_options(settings: DownloadConfig, *, start_s: float, outtmpl: str, logger: Any,
                cookiefile: Path | None = None) -> dict[str, Any]:
    """The options dict for ``yt_dlp.YoutubeDL`` that fetches one VGGSound clip.

    Parameters
    ----------
    settings : DownloadConfig
        ``clip_seconds``, ``max_height`` and ``socket_timeout_s`` are used.
    start_s : float, >= 0
        Start of the section; it ends ``settings.clip_seconds`` later.
    outtmpl : str
        yt-dlp output template (``%`` in folder names already doubled).
    logger : object
        With ``debug``, ``info``, ``warning`` and ``error`` methods.
    cookiefile : Path or None
        Netscape cookies file (yt-dlp writes it back when done: pass a private copy).

    Returns
    -------
    dict
        Formats: a video-only stream at most ``max_height`` pixels high plus the best audio,
        or a single file with both (e.g. a plain mp4 URL); mp4/h264/aac preferred; if nothing
        is small enough, the smallest there is. Merged or remuxed into mp4.
    """
    from yt_dlp.utils import download_range_func

    h = settings.max_height
    options: dict[str, Any] = {
        "format": f"bv[height<=?{h}]+ba/b[height<=?{h}]/wv+ba/w",
        "format_sort": [f"res:{h}", "vcodec:h264", "acodec:aac", "ext:mp4:m4a"],
        "merge_output_format": "mp4",
        "postprocessors": [{"key": "FFmpegVideoRemuxer", "preferedformat": "mp4"}],
        "download_ranges": download_range_func(None, [(start_s, start_s + settings.clip_seconds)]),
        "force_keyframes_at_cuts": True,   # without it the cut lands on the nearest keyframe
        "outtmpl": outtmpl,
        "overwrites": True,
        "noplaylist": True,
        "quiet": True,
        "noprogress": True,
        "color": {"stdout": "no_color", "stderr": "no_color"},
        "logger": logger,
        "socket_timeout": settings.socket_timeout_s,
        # ffmpeg reads the section itself and has no timeout of its own (microseconds).
        "external_downloader_args": {
            "ffmpeg_i": ["-rw_timeout", str(int(settings.socket_timeout_s * 1e6))]},
        # Retries are ours, so that each error is classified and backed off.
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0,
    }
    if cookiefile is not None:
        options["cookiefile"] = str(cookiefile)
    return options


def _outtmpl(stem: Path) -> str:
    return str(stem).replace("%", "%%") + ".%(ext)s"


class _YdlLogger:
    """yt-dlp's messages into this module's log; each distinct warning once per run."""

    def __init__(self, ytid: str, warn: Callable[[str], None]):
        self.ytid = ytid
        self.warn = warn

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp %s: %s", self.ytid, msg)

    info = debug

    def warning(self, msg: str) -> None:
        self.warn(msg.replace(self.ytid, "<id>"))

    def error(self, msg: str) -> None:
        # The same text comes back as a DownloadError and is recorded as the item's reason.
        log.debug("yt-dlp %s: %s", self.ytid, msg)


# --------------------------------------------------------------------------------------------
# Checking a clip, finding local clips
# --------------------------------------------------------------------------------------------

def probe_clip(path: Path) -> tuple[float, bool]:
    """Duration in seconds and whether there is an audio stream, read with ffprobe.

    Raises
    ------
    ItemFailed
        When ffprobe cannot read the file.
    """
    cmd = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type:format=duration",
           "-of", "json", str(Path(path).resolve())]  # absolute: a name may start with "-"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ItemFailed(f"error: ffprobe took over {_PROBE_TIMEOUT_S} s on the clip") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ItemFailed(f"error: ffprobe cannot read the clip ({last})")
    info = json.loads(proc.stdout or "{}")
    duration = float(info.get("format", {}).get("duration") or 0.0)
    has_audio = any(s.get("codec_type") == "audio" for s in info.get("streams", []))
    return duration, has_audio


def _check_clip(path: Path) -> float:
    """The clip's duration; ItemFailed (permanent) without audio or with nothing in it."""
    duration, has_audio = probe_clip(path)
    if not has_audio:
        raise ItemFailed(f"{PERMANENT}: no audio track")
    if duration < _MIN_CLIP_S:
        raise ItemFailed(f"{PERMANENT}: empty clip (the video may end before its start time)")
    return duration


def find_local_clips(folder: Path) -> dict[str, Path]:
    """Clips under ``folder`` (any depth) named ``<ytid>_<start:06d>.mp4``, keyed by clip id.

    ``<ytid>_<start>_<end>.mp4`` is recognised too. Hidden folders are not searched; when an
    id occurs twice, the first file found is kept.
    """
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            match = _LOCAL_NAME_RE.fullmatch(name)
            if match:
                found.setdefault(clip_id(match[1], int(match[2])), Path(root, name).resolve())
    return found


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------

class _ClipStage(Stage):
    """What downloading and taking local clips share: output layout, columns, retry rule."""

    unit = "clip"
    suffix = ".mp4"
    columns = ("ytid", "start", "split", "bytes", "duration")
    executor = "thread"

    def __init__(self, rows: Mapping[str, Row], *, retry_failed: bool = False):
        self.rows = rows
        self.retry_failed = retry_failed

    def should_retry(self, row: Mapping[str, str]) -> bool:
        return self.retry_failed or not (row.get("reason") or "").startswith(PERMANENT + ":")

    def _fields(self, row: Row, output: Path, duration: float) -> dict[str, Any]:
        return {"ytid": row.ytid, "start": row.start_s, "split": row.split,
                "bytes": output.stat().st_size, "duration": round(duration, 3)}


class DownloadStage(_ClipStage):
    """Fetches each clip with yt-dlp, retrying transient errors, watching for rate limits.

    ``Item.source`` is the video's URL; ``rows`` maps clip ids to their CSV rows.
    """

    name = "download"

    def __init__(self, settings: DownloadConfig, rows: Mapping[str, Row], *,
                 retry_failed: bool = False):
        super().__init__(rows, retry_failed=retry_failed)
        self.settings = settings
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rate_limited = 0
        self._warned: set[str] = set()
        self._random = random.Random()

    def process(self, item: Item, output: Path) -> dict[str, Any]:
        row = self.rows[item.id]
        tmpdir = output.parent / f".{item.id}.tmp{os.getpid()}"
        try:
            clip = self._fetch_with_retries(str(item.source), row, tmpdir)
            duration = _check_clip(clip)
            os.replace(clip, output)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return self._fields(row, output, duration)

    def _fetch_with_retries(self, url: str, row: Row, tmpdir: Path) -> Path:
        from yt_dlp.utils import DownloadError

        tries = self.settings.retries + 1
        for attempt in range(1, tries + 1):
            self._wait(self.settings.pause_s)
            try:
                clip = self._fetch(url, row, tmpdir)
            except DownloadError as exc:
                failure = classify_error(str(exc))
            else:
                self._count(None)
                return clip
            self._count(failure)
            if failure.kind != _TRANSIENT or attempt == tries:
                break
            delay = backoff_delay(attempt, self.settings.backoff_s, self._random)
            log.info("%s: %s; try %d of %d in %.1f s", row.id, failure.what, attempt + 1,
                     tries, delay)
            self._wait(delay)
        raise ItemFailed(failure.reason(attempt))

    def _fetch(self, url: str, row: Row, tmpdir: Path) -> Path:
        import yt_dlp

        shutil.rmtree(tmpdir, ignore_errors=True)  # what an earlier try left
        tmpdir.mkdir(parents=True)
        cookiefile = None
        if self.settings.cookies_file is not None:
            # yt-dlp rewrites its cookie file on close: each download gets its own copy.
            cookiefile = tmpdir / "cookies.txt"
            shutil.copyfile(self.settings.cookies_file, cookiefile)
        options = ydl_options(self.settings, start_s=row.start_s, outtmpl=_outtmpl(tmpdir / "clip"),
                              logger=_YdlLogger(row.ytid, self._warn_once),
                              cookiefile=cookiefile)
        with yt_dlp.YoutubeDL(options) as ydl:
            ydl.download([url])
        clip = tmpdir / "clip.mp4"
        if not clip.is_file():
            raise ItemFailed("error: yt-dlp finished without writing an mp4 file")
        return clip

    def _warn_once(self, message: str) -> None:
        with self._lock:
            if message in self._warned:
                return
            self._warned.add(message)
        log.warning("yt-dlp: %s", message)

    def _count(self, failure: Failure | None) -> None:
        """Track rate-limit answers in a row, over all threads; a normal answer resets it."""
        with self._lock:
            if failure is not None and failure.rate_limited:
                self._rate_limited += 1
            else:
                self._rate_limited = 0
            if self._rate_limited >= self.settings.max_consecutive_rate_limits:
                self._stop.set()

    def _wait(self, seconds: float) -> None:
        """Sleep, unless (or until) the run is stopping for rate limits: then raise."""
        if self._stop.is_set() or (seconds > 0 and self._stop.wait(seconds)):
            raise RateLimited(
                f"stopped early: {self.settings.max_consecutive_rate_limits} requests in a row "
                "were refused as rate-limited (HTTP 429 or a bot check), so the server is "
                "probably blocking this address. Wait a few hours, then rerun the same command "
                "(finished clips are kept); set download.cookies_file to a cookies.txt exported "
                "from a signed-in browser; use fewer workers (--workers 1) and a pause "
                "(--set download.pause_s=5)")


class LocalCopyStage(_ClipStage):
    """Takes clips a user already has (``Item.source``) by hard link, or copy, after a check."""

    name = "from-dir"

    def should_retry(self, row: Mapping[str, str]) -> bool:
        # A local copy may exist for a video that is gone online.
        return True

    def process(self, item: Item, output: Path) -> dict[str, Any]:
        source = Path(item.source)
        duration = _check_clip(source)
        with atomic_path(output) as tmp:
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(source, tmp)
        return self._fields(self.rows[item.id], output, duration)


# --------------------------------------------------------------------------------------------
# Planning (also the --dry-run report) and running
# --------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What a run would do: the parsed CSV, the selected rows, and the local clips found."""

    csv: ParsedCsv
    groups: dict[str, list[str]]
    selected: list[tuple[str, Row]]
    splits: list[str]
    max_per_class: int
    seed: int
    local: dict[str, Path] | None = None
    local_dir: Path | None = None

    def counts(self) -> dict[tuple[str, str], Counter]:
        """Selected rows per (group, label), counted per split; every configured label listed."""
        table = {(g, label): Counter() for g, labels in self.groups.items() for label in labels}
        for group, row in self.selected:
            table[(group, row.label)][row.split] += 1
        return table

    def empty_labels(self) -> list[str]:
        """Configured labels with no row in the CSV at all (a truncated or wrong file?)."""
        present = {r.label for r in self.csv.rows}
        return [label for labels in self.groups.values() for label in labels
                if label not in present]

    def report(self) -> str:
        """The ``--dry-run`` text: per-group counts table and a few malformed rows."""
        csv_ = self.csv
        lines = [f"{csv_.path}: {len(csv_.rows)} usable rows"
                 + (" (after a header row)" if csv_.header else "")
                 + f", {len(csv_.malformed)} malformed, {csv_.duplicates} repeated ids ignored",
                 f"selected: {len(self.selected)} clips (splits {', '.join(self.splits)}; "
                 f"max_per_class {self.max_per_class or 'all'}; seed {self.seed})", ""]
        header = ["group", "label", *self.splits, "total"]
        body: list[list[Any]] = []
        counts = self.counts()
        grand: Counter = Counter()
        for group, labels in self.groups.items():
            subtotal: Counter = Counter()
            for label in labels:
                c = counts[(group, label)]
                subtotal.update(c)
                body.append([group, label, *(c[s] for s in self.splits), sum(c.values())])
            body.append([group, "(all)", *(subtotal[s] for s in self.splits),
                         sum(subtotal.values())])
            grand.update(subtotal)
        body.append(["total", "", *(grand[s] for s in self.splits), sum(grand.values())])
        lines += _table(header, body)
        if (empty := self.empty_labels()):
            lines += ["", _no_rows_message(empty)]
        if csv_.malformed:
            lines += ["", f"malformed rows ({len(csv_.malformed)}, first "
                          f"{min(_SHOWN, len(csv_.malformed))}):"]
            lines += [f"  {m}" for m in csv_.malformed[:_SHOWN]]
        if self.local is not None:
            found = sum(1 for _, row in self.selected if row.id in self.local)
            lines += ["", f"under {self.local_dir}: {found} of {len(self.selected)} selected "
                          "clips found"]
        return "\n".join(lines)


def _no_rows_message(labels: list[str]) -> str:
    shown = ", ".join(map(repr, labels[:_SHOWN])) + (", ..." if len(labels) > _SHOWN else "")
    return (f"{len(labels)} configured label(s) have no row in the CSV ({shown}): is it the "
            "whole vggsound.csv?")


def _table(header: list[str], body: list[list[Any]]) -> list[str]:
    rows = [header, *body]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]

    def fmt(r: list[Any]) -> str:
        return "  ".join(str(v).rjust(w) if isinstance(v, int) else str(v).ljust(w)
                         for v, w in zip(r, widths)).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]


def plan(config: Config, *, from_dir: Path | None = None) -> Plan:
    """Parse the CSV, select the rows, and (with ``from_dir``) index the local clips.

    Raises
    ------
    ConfigError
        When the CSV (``paths.vggsound_csv``) is missing or unreadable, or ``from_dir`` is
        not a folder.
    """
    settings = config.download
    if from_dir is not None and not Path(from_dir).is_dir():
        raise ConfigError(f"--from-dir {from_dir} is not a folder")
    parsed = read_csv(config.paths.vggsound_csv)
    selected = select_rows(parsed.rows, settings.classes, splits=settings.splits,
                           max_per_class=settings.max_per_class, seed=settings.seed)
    local = find_local_clips(Path(from_dir)) if from_dir is not None else None
    return Plan(parsed, expand_classes(settings.classes), selected, list(settings.splits),
                settings.max_per_class, settings.seed, local,
                Path(from_dir).resolve() if from_dir is not None else None)


def run(config: Config, options: cli.StageOptions, *, dry_run: bool = False,
        from_dir: Path | None = None, retry_failed: bool = False) -> int:
    """Run stage 1: fetch (or take from ``from_dir``) the selected clips into ``paths.clips``.

    Parameters
    ----------
    config : Config
    options : cli.StageOptions
        ``--force``, ``--limit``, ``--workers`` (default ``download.workers``), progress bar.
    dry_run : bool
        Only parse and select; the report is logged (``download_video.py`` prints it).
    from_dir : Path or None
        Take ``<ytid>_<start:06d>.mp4`` files found under this folder instead of downloading;
        selected rows not found there are reported and left for a later run.
    retry_failed : bool
        Also retry clips that failed for good (``permanent:`` reasons) before.

    Returns
    -------
    int
        Exit code: 0, or 1 when every clip of the run failed or rate limits stopped it early.

    Raises
    ------
    ConfigError
        Missing CSV, ``--from-dir`` or cookies file, ffmpeg or yt-dlp not installed, nothing
        selected: before any work starts.
    """
    settings = config.download
    if (not dry_run and from_dir is None and settings.cookies_file is not None
            and not settings.cookies_file.is_file()):
        raise ConfigError(f"download.cookies_file={settings.cookies_file} not found: export a "
                          "cookies.txt (Netscape format) from a signed-in browser, or set it to "
                          "null")
    if not dry_run:
        cli.require_binaries("ffmpeg", "ffprobe")
        if from_dir is None:
            _require_yt_dlp()

    the_plan = plan(config, from_dir=from_dir)
    if dry_run:
        log.info("%s", the_plan.report())
        return 0
    parsed = the_plan.csv
    if parsed.malformed:
        shown = "; ".join(str(m) for m in parsed.malformed[:_SHOWN])
        log.warning("%s: %d malformed row(s) ignored (see --dry-run), e.g. %s", parsed.path,
                    len(parsed.malformed), shown)
    if (empty := the_plan.empty_labels()):
        log.warning("%s: %s", parsed.path, _no_rows_message(empty))
    if not the_plan.selected:
        raise ConfigError(
            f"{parsed.path}: no row matches download.classes with download.splits="
            f"{list(settings.splits)} ({len(parsed.rows)} usable rows, "
            f"{len(parsed.malformed)} malformed): is it VGGSound's vggsound.csv?")

    output_dir = Path(config.paths.clips).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(output_dir)
    rows = {row.id: row for _, row in the_plan.selected}
    stage: _ClipStage
    if the_plan.local is None:
        items = [Item(row.id, group, settings.url_template.replace("{ytid}", row.ytid),
                      row.label) for group, row in the_plan.selected]
        stage = DownloadStage(settings, rows, retry_failed=retry_failed)
    else:
        items = [Item(row.id, group, the_plan.local[row.id], row.label)
                 for group, row in the_plan.selected if row.id in the_plan.local]
        missing = [row.id for _, row in the_plan.selected if row.id not in the_plan.local]
        if not items:
            raise ConfigError(f"--from-dir {from_dir}: none of the {len(rows)} selected clips "
                              "is there (files must be named <ytid>_<start:06d>.mp4)")
        if missing:
            log.warning("--from-dir: %d of %d selected clips are not under %s (e.g. %s); they "
                        "are left for a run without --from-dir", len(missing), len(rows),
                        from_dir, ", ".join(missing[:_SHOWN]))
        stage = LocalCopyStage(rows, retry_failed=retry_failed)

    write_settings(output_dir, config_to_dict(settings))
    workers = options.workers or settings.workers
    try:
        summary = run_stage(stage, items, output_dir, force=options.force, limit=options.limit,
                            workers=workers, progress=options.progress)
    except RateLimited as exc:
        log.error("%s", exc)
        return 1
    finally:
        _complete_manifest(output_dir, rows, stage.columns)
    return summary.exit_code


def _require_yt_dlp() -> None:
    try:
        import yt_dlp  # noqa: F401
    except ImportError:
        raise ConfigError("yt-dlp is not installed: pip install -r requirements.txt") from None


def _remove_stale_temp_dirs(output_dir: Path) -> None:
    """Delete temp folders a killed run left (Ctrl-C cleans up; SIGKILL cannot)."""
    for path in output_dir.glob("*/.*.tmp*"):
        if path.is_dir() and _TEMP_DIR_RE.fullmatch(path.name):
            shutil.rmtree(path, ignore_errors=True)


def _complete_manifest(output_dir: Path, rows: Mapping[str, Row],
                       columns: tuple[str, ...]) -> None:
    """Fill ``ytid, start, split`` of failed rows too (the machinery records only a reason)."""
    manifest = read_manifest(output_dir)
    changed = False
    for clip_id_, entry in manifest.items():
        row = rows.get(clip_id_)
        if row is not None and not entry.get("ytid"):
            entry.update(ytid=row.ytid, start=str(row.start_s), split=row.split)
            changed = True
    if changed:
        write_manifest(output_dir, manifest.values(), columns)
