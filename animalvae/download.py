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

An unexpected exception out of yt-dlp for one video (an extractor bug it did not wrap) fails
that clip only (``error: <Type>: ...``). Many rate-limit answers in a row (HTTP 429 or bot
checks, ``download.max_consecutive_rate_limits``) stop the run early with advice, instead of
burning through the list while blocked. Ctrl-C wakes the threads sleeping in a pause or backoff
at once; clips being fetched finish and are kept.

``--from-dir`` takes clips a user already has (``<ytid>_<start:06d>.mp4`` anywhere under a
folder) by hard link, or copy, instead of downloading. Which rows a run fetches, and the
``--dry-run`` report, come from :mod:`animalvae.download_plan`. Manifest columns besides the
base ones: ``ytid, start, split, bytes, duration``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import Config, DownloadConfig, config_to_dict
from .download_plan import plan
from .errors import AnimalVAEError, ConfigError, ItemFailed
from .stage import (
    Item,
    Stage,
    StageOptions,
    atomic_path,
    outcome_from_exception,
    require_binaries,
    resolve_workers,
    run_stage,
)
from .vggsound_csv import Row

__all__ = ["run", "DownloadStage", "LocalCopyStage", "RateLimited", "Failure", "classify_error",
           "ydl_options", "backoff_delay", "probe_clip", "PERMANENT"]

log = logging.getLogger(__name__)

#: Reason prefix of a failure that later runs do not retry (unless ``--retry-failed``).
PERMANENT = "permanent"
_TRANSIENT = "transient"
_ERROR = "error"

_MIN_CLIP_S = 0.1          # shorter than this is an empty clip (start past the video's end)
_PROBE_TIMEOUT_S = 60

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


def _run_yt_dlp(options: dict[str, Any], url: str, ytid: str) -> Failure | None:
    """Fetch ``url`` with yt-dlp: None when it finished, else its error, classified.

    This call is the boundary of one item. yt-dlp wraps most errors in its own classes, but an
    extractor can let an unexpected one (KeyError, TypeError...) through, and one odd page must
    not stop a 200k-row run: such an error fails this clip only, as ``error: <Type>: ...``
    (tried again by the next run), with its traceback in the debug log.
    """
    import yt_dlp
    from yt_dlp.utils import YoutubeDLError

    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            ydl.download([url])
    except YoutubeDLError as exc:  # DownloadError and yt-dlp's other own errors
        return classify_error(str(exc))
    except Exception as exc:
        log.debug("yt-dlp %s raised %s", ytid, type(exc).__name__, exc_info=True)
        return Failure(_ERROR, "error", outcome_from_exception(exc).reason)
    return None


# --------------------------------------------------------------------------------------------
# Checking a clip
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


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------

class _ClipStage(Stage):
    """What downloading and taking local clips share: output layout and columns."""

    unit = "clip"
    suffix = ".mp4"
    columns = ("ytid", "start", "split", "bytes", "duration")
    executor = "thread"
    adopt_orphans = True  # a clip on disk is worth keeping even when its row was lost

    def discard(self, output: Path) -> None:
        """Keep an earlier clip when a --force rerun fails (often a passing network error):
        it cost a download, and the manifest row already says not to use it."""

    def __init__(self, rows: Mapping[str, Row]):
        self.rows = rows

    def item_fields(self, item: Item) -> dict[str, Any]:
        """The clip's CSV row (``ytid, start, split``), in every row of the item."""
        row = self.rows.get(item.id)
        return {} if row is None else {"ytid": row.ytid, "start": row.start_s,
                                       "split": row.split}

    @staticmethod
    def _fields(output: Path, duration: float) -> dict[str, Any]:
        return {"bytes": output.stat().st_size, "duration": round(duration, 3)}


class DownloadStage(_ClipStage):
    """Fetches each clip with yt-dlp, retrying transient errors, watching for rate limits.

    ``Item.source`` is the video's URL; ``rows`` maps clip ids to their CSV rows.
    """

    name = "download"

    def __init__(self, settings: DownloadConfig, rows: Mapping[str, Row], *,
                 retry_failed: bool = False):
        super().__init__(rows)
        self.settings = settings
        self.retry_failed = retry_failed
        self._lock = threading.Lock()
        self._stop = threading.Event()   # set on too many rate limits, or by interrupt()
        self._interrupted = False
        self._rate_limited = 0
        self._warned: set[str] = set()
        self._random = random.Random()

    def should_retry(self, row: Mapping[str, str]) -> bool:
        # A permanent failure (video gone, private, no audio) is kept unless --retry-failed;
        # other failures, and skips (this stage makes none), follow the default.
        if (row.get("status") == "failed" and not self.retry_failed
                and (row.get("reason") or "").startswith(PERMANENT + ":")):
            return False
        return super().should_retry(row)

    def process(self, item: Item, output: Path) -> dict[str, Any]:
        row = self.rows[item.id]
        tmpdir = output.parent / f".{item.id}.tmp{os.getpid()}"
        try:
            clip = self._fetch_with_retries(str(item.source), row, tmpdir)
            duration = _check_clip(clip)
            os.replace(clip, output)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return self._fields(output, duration)

    def interrupt(self) -> None:
        """Ctrl-C: wake the threads sleeping in a pause or backoff, so that the pool stops now.

        They raise KeyboardInterrupt, so their clips get no result in this run (the manifest
        keeps what an earlier run recorded); clips being fetched finish and are recorded.
        """
        self._interrupted = True  # before set(): a thread that set() wakes must see it
        self._stop.set()

    def _fetch_with_retries(self, url: str, row: Row, tmpdir: Path) -> Path:
        tries = self.settings.retries + 1
        for attempt in range(1, tries + 1):
            self._wait(self.settings.pause_s)
            failure = _run_yt_dlp(self._prepare(row, tmpdir), url, row.ytid)
            self._count(failure)
            if failure is None:
                clip = tmpdir / "clip.mp4"
                if not clip.is_file():
                    raise ItemFailed("error: yt-dlp finished without writing an mp4 file")
                return clip
            if failure.kind != _TRANSIENT or attempt == tries:
                break
            delay = backoff_delay(attempt, self.settings.backoff_s, self._random)
            log.info("%s: %s; try %d of %d in %.1f s", row.id, failure.what, attempt + 1,
                     tries, delay)
            self._wait(delay)
        raise ItemFailed(failure.reason(attempt))

    def _prepare(self, row: Row, tmpdir: Path) -> dict[str, Any]:
        """Empty ``tmpdir`` for one try; the yt-dlp options that write ``tmpdir/clip.mp4``."""
        shutil.rmtree(tmpdir, ignore_errors=True)  # what an earlier try left
        tmpdir.mkdir(parents=True)
        cookiefile = None
        if self.settings.cookies_file is not None:
            # yt-dlp rewrites its cookie file on close: each download gets its own copy.
            cookiefile = tmpdir / "cookies.txt"
            shutil.copyfile(self.settings.cookies_file, cookiefile)
        return ydl_options(self.settings, start_s=row.start_s, outtmpl=_outtmpl(tmpdir / "clip"),
                           logger=_YdlLogger(row.ytid, self._warn_once), cookiefile=cookiefile)

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
        """Sleep ``seconds``, unless (or until) the run is stopping: then raise.

        Raises
        ------
        KeyboardInterrupt
            After :meth:`interrupt` (Ctrl-C).
        RateLimited
            After ``download.max_consecutive_rate_limits`` rate-limit answers in a row.
        """
        if not (self._stop.is_set() or (seconds > 0 and self._stop.wait(seconds))):
            return
        if self._interrupted:
            raise KeyboardInterrupt
        raise RateLimited(
            f"stopped early: {self.settings.max_consecutive_rate_limits} requests in a row "
            "were refused as rate-limited (HTTP 429 or a bot check), so the server is "
            "probably blocking this address. Wait a few hours, then rerun the same command "
            "(finished clips are kept); set download.cookies_file to a cookies.txt exported "
            "from a signed-in browser; use fewer workers (--workers 1) and a pause "
            "(--set download.pause_s=5)")


class LocalCopyStage(_ClipStage):
    """Takes clips a user already has (``Item.source``) by hard link, or copy, after a check.

    It keeps the default retry rule: every earlier failure is tried again, permanent ones
    included, as a local copy may exist for a video that is gone online.
    """

    name = "from-dir"

    def process(self, item: Item, output: Path) -> dict[str, Any]:
        source = Path(item.source)
        duration = _check_clip(source)
        with atomic_path(output) as tmp:
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(source, tmp)
        return self._fields(output, duration)


@contextlib.contextmanager
def _interrupt_on_ctrl_c(stage: DownloadStage) -> Iterator[None]:
    """While inside, Ctrl-C calls ``stage.interrupt()`` before it raises KeyboardInterrupt.

    ``run_stage`` lets the pool's running threads finish before it re-raises Ctrl-C; without
    this, threads sleeping in a backoff (seconds to minutes) would hold the exit up. Python's
    default handler only is replaced, and only in the main thread (where handlers run).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        stage.interrupt()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

def run(config: Config, options: StageOptions, *, from_dir: Path | None = None,
        retry_failed: bool = False) -> int:
    """Run stage 1: fetch (or take from ``from_dir``) the selected clips into ``paths.clips``.

    Parameters
    ----------
    config : Config
    options : StageOptions
        ``--force``, ``--limit``, ``--workers`` (default ``download.workers``), progress bar.
    from_dir : Path or None
        Take ``<ytid>_<start:06d>.mp4`` files found under this folder instead of downloading;
        selected rows not found there are reported and left for a later run.
    retry_failed : bool
        Also download clips that failed for good (``permanent:`` reasons) before. (With
        ``from_dir``, every earlier failure found there is tried again anyway.)

    Returns
    -------
    int
        Exit code: 0, or 1 when every clip of the run failed or rate limits stopped it early.

    Raises
    ------
    ConfigError
        Missing CSV, ``--from-dir`` or cookies file, ffmpeg or yt-dlp not installed, nothing
        selected: before any work starts.
    KeyboardInterrupt
        On Ctrl-C, after the manifest of finished clips is written.
    """
    settings = config.download
    if (from_dir is None and settings.cookies_file is not None
            and not settings.cookies_file.is_file()):
        raise ConfigError(f"download.cookies_file={settings.cookies_file} not found: export a "
                          "cookies.txt (Netscape format) from a signed-in browser, or set it to "
                          "null")
    require_binaries("ffmpeg", "ffprobe")
    if from_dir is None:
        _require_yt_dlp()

    the_plan = plan(config, from_dir=from_dir)
    the_plan.require_selection()
    rows = {row.id: row for _, row in the_plan.selected}
    stage: _ClipStage
    if the_plan.local is None:
        items = [Item(row.id, group, settings.url_template.replace("{ytid}", row.ytid),
                      row.label) for group, row in the_plan.selected]
        stage = DownloadStage(settings, rows, retry_failed=retry_failed)
        ctrl_c: contextlib.AbstractContextManager = _interrupt_on_ctrl_c(stage)
    else:
        items = [Item(row.id, group, the_plan.local[row.id], row.label)
                 for group, row in the_plan.selected if row.id in the_plan.local]
        if not items:
            raise ConfigError(f"--from-dir {from_dir}: none of the {len(rows)} selected clips "
                              "is there (files must be named <ytid>_<start:06d>.mp4)")
        stage = LocalCopyStage(rows)
        ctrl_c = contextlib.nullcontext()
    for line in the_plan.warnings():
        log.warning("%s", line)

    output_dir = Path(config.paths.clips).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    workers = resolve_workers(options.workers, settings.workers)
    try:
        with ctrl_c:
            summary = run_stage(stage, items, output_dir, force=options.force,
                                limit=options.limit, workers=workers, progress=options.progress,
                                shard=options.shard, settings=config_to_dict(settings))
    except RateLimited as exc:
        log.error("%s", exc)
        return 1
    return summary.exit_code

def _require_yt_dlp() -> None:
    try:
        import yt_dlp  # noqa: F401
    except ImportError:
        raise ConfigError("yt-dlp is not installed: pip install -r requirements.txt") from None
