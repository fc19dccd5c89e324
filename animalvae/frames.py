"""The video frame that shows the sound: read with OpenCV at a time, skipping blank frames.

:func:`grab_frame` seeks to the peak time, checks the read worked and the picture is not
blank (black or flat: fade-ins, title cards); otherwise it scans the window once and takes
the usable frame nearest to the peak. :func:`write_jpeg` writes it atomically. OpenCV's own
exceptions (``cv2.error``) do not leave this module: reading turns them into OSError, encoding
into ValueError, so callers handle them with the item errors they already expect.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from .stage import atomic_path

__all__ = ["Frame", "is_blank", "grab_frame", "write_jpeg"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """A decoded video frame (``image``: BGR uint8, shape (h, w, 3)) and its time, seconds."""

    image: np.ndarray
    time_s: float


def is_blank(image: np.ndarray, *, min_mean: float, min_std: float) -> bool:
    """Whether a frame is too dark (mean < ``min_mean``) or too flat (std < ``min_std``).

    Parameters
    ----------
    image : np.ndarray [shape=(h, w) or (h, w, 3), uint8]
    min_mean, min_std : float
        Thresholds on the 0-255 pixel values (``detect.frame_min_mean``/``frame_min_std``).
    """
    return bool(image.size == 0 or image.mean() < min_mean or image.std() < min_std)


def grab_frame(video: Path, time_s: float, *, window: tuple[float, float], min_mean: float,
               min_std: float) -> Frame | None:
    """The usable frame nearest to ``time_s`` within ``window``, or None if there is none.

    Parameters
    ----------
    video : Path
        Any file OpenCV's FFmpeg backend reads (mp4, webm, ...).
    time_s : float
        Wanted time in seconds from the start of the file (the score's peak).
    window : (start_s, end_s)
        Where a replacement may come from when the frame at ``time_s`` is blank or
        cannot be read (e.g. the audio outlasts the video).
    min_mean, min_std : float
        Blank-frame thresholds, see :func:`is_blank`.

    Returns
    -------
    Frame or None
        The frame on screen at ``time_s`` if usable, else the usable one whose
        presentation time is nearest; ``Frame.time_s`` is that presentation time.

    Raises
    ------
    OSError
        When the file cannot be opened as a video, or OpenCV fails while reading it.
    """
    cap = None
    try:
        cap = cv2.VideoCapture(str(Path(video).resolve()))
        if not cap.isOpened():
            raise OSError(f"OpenCV cannot open {Path(video).name}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        # The frame on screen at time_s is the last one starting at or before it.
        frame = _read_at(cap, _frame_start(time_s, fps, side="at_or_before"))
        # A read counts only if it worked, landed where asked (seeks in badly indexed files
        # can land far off) and shows something.
        tolerance_s = 1.0 / fps + 1e-3 if fps and fps > 0 else 0.1
        if (frame is not None and abs(frame.time_s - time_s) <= tolerance_s
                and not is_blank(frame.image, min_mean=min_mean, min_std=min_std)):
            return frame
        return _nearest_usable(cap, time_s, window, fps=fps, min_mean=min_mean,
                               min_std=min_std)
    except cv2.error as exc:
        raise OSError(f"OpenCV cannot read {Path(video).name}: {_cv_message(exc)}") from None
    finally:
        if cap is not None:
            cap.release()


def _frame_start(time_s: float, fps: float, *, side: Literal["at_or_before", "at_or_after"]
                 ) -> float:
    """Start time of the frame at or before (or after) ``time_s``: where OpenCV seeks exactly.

    OpenCV's FFmpeg backend seeks to frame ``round(t * fps)``, the *nearest* frame; asking
    for a frame's own start time is what gives "on screen at t" or "first after t".
    """
    if not fps or fps <= 0:  # unknown frame rate: let OpenCV decide
        return max(0.0, time_s)
    eps = 1e-6  # a time that is a frame start up to rounding counts as that frame's
    index = (np.floor(time_s * fps + eps) if side == "at_or_before"
             else np.ceil(time_s * fps - eps))
    return max(0.0, float(index / fps))


def _read_at(cap: cv2.VideoCapture, time_s: float) -> Frame | None:
    """Seek to ``time_s`` and read one frame; None when the seek or the read fails."""
    if not cap.set(cv2.CAP_PROP_POS_MSEC, time_s * 1000.0):
        return None
    return _read_next(cap)


def _read_next(cap: cv2.VideoCapture) -> Frame | None:
    ok, image = cap.read()
    if not ok or image is None or image.size == 0:
        return None
    # After a read, POS_MSEC is the presentation time of the frame just decoded.
    return Frame(image, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)


def _nearest_usable(cap: cv2.VideoCapture, time_s: float, window: tuple[float, float], *,
                    fps: float, min_mean: float, min_std: float) -> Frame | None:
    """Scan ``window`` once (sequential decoding, no per-frame seeks); nearest usable frame."""
    start_s, end_s = window
    best: Frame | None = None
    frame = _read_at(cap, _frame_start(start_s, fps, side="at_or_after"))  # first in window
    while frame is not None and frame.time_s <= end_s:
        if not is_blank(frame.image, min_mean=min_mean, min_std=min_std) and (
                best is None or abs(frame.time_s - time_s) < abs(best.time_s - time_s)):
            best = frame
        if best is not None and frame.time_s - time_s >= abs(best.time_s - time_s):
            break  # every later frame is farther from the peak than the one kept
        frame = _read_next(cap)
    return best


def write_jpeg(path: Path, image: np.ndarray, *, quality: int = 92) -> None:
    """Encode ``image`` (BGR uint8) as JPEG and write it atomically to ``path``.

    Raises
    ------
    ValueError
        When OpenCV cannot encode the image.
    OSError
        When the file cannot be written.
    """
    try:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    except cv2.error as exc:
        raise ValueError(f"OpenCV could not encode a {image.shape} frame as JPEG: "
                         f"{_cv_message(exc)}") from None
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} frame as JPEG")
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data.tobytes())


def _cv_message(exc: Exception) -> str:
    """A ``cv2.error`` on one line, without its ``OpenCV(4.x) /path/file.cpp:123: error:`` head."""
    text = " ".join(str(exc).split())
    return re.sub(r"^OpenCV\([^)]*\) \S+: error: ", "", text) or type(exc).__name__
