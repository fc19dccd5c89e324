"""The demo's sample dataset: synthetic VGGSound-like videos rendered with ffmpeg, and the CSV.

For each demo group (dogs, cats, birds) a few 20 s mp4 videos: a coloured scene whose shape
jumps while the animal calls, and a synthetic call from animalvae/synth.py over background
noise; plus a CSV in VGGSound's format (``ytid,start,label,split``, no header, real animal
labels) whose 10 s window ``[start, start + 10]`` holds the call. Used by animalvae/demo.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import logging
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import AnimalVAEError
from ..stage import atomic_path
from . import synth

__all__ = ["SampleClip", "DemoFailed", "plan_dataset", "write_csv", "render_clip",
           "build_dataset", "DEMO_LABELS", "OTHER_ROWS", "SERVED_SECONDS", "CLIP_SECONDS",
           "AUDIO_SR"]

log = logging.getLogger(__name__)

#: Real VGGSound labels whose sound the synthetic calls imitate, per demo group.
DEMO_LABELS: dict[str, tuple[str, ...]] = {
    "dogs": ("dog barking", "dog bow-wow"),
    "cats": ("cat meowing", "cat caterwauling"),
    "birds": ("bird chirping, tweeting", "warbler chirping", "canary calling"),
}
#: Rows the demo CSV lists but the server does not have, as in the real CSV: labels outside
#: the selected groups (never fetched), and one removed video (stage 1 records it as failed).
OTHER_ROWS = (("people marching", "train"), ("playing piano", "test"))
MISSING_LABEL = "dog barking"

SERVED_SECONDS = 20.0                 # length of each served video
CLIP_SECONDS = 10.0                   # VGGSound's window; the call sits inside it
AUDIO_SR = 44100                      # Hz, like a YouTube audio track (stage 2 resamples)
FPS = 10
WIDTH, HEIGHT = 160, 120
_YTID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


class DemoFailed(AnimalVAEError):
    """A step of the demo failed; ``exit_code`` is what the demo returns."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass(frozen=True)
class SampleClip:
    """One row of the demo CSV and how to render its video."""

    ytid: str
    start: int            # seconds: VGGSound's clip is [start, start + 10] of the video
    label: str
    split: str
    group: str
    seed: int
    pitch: float          # in [0, 1]: the call's pitch, shown as the animal's size
    place: float = 0.5    # in [0, 1]: where the animal stands while calling (not in the sound)
    light: float = 1.0    # in (0, 1]: the scene's brightness (not in the sound)


def _ytid(rng: np.random.Generator, *, dash: bool = False) -> str:
    chars = rng.choice(list(_YTID_CHARS[:-1]), size=11)   # no "-" inside, one in front below
    text = "".join(chars)
    return "-" + text[1:] if dash else text


def plan_dataset(clips_per_group: int, *, seed: int = 0) -> list[SampleClip]:
    """The demo's clips: ``clips_per_group`` per group, the first N the same for any N.

    Parameters
    ----------
    clips_per_group : int
        Clips per group, >= 1.
    seed : int
        Changes every id, start, label choice and sound.

    Returns
    -------
    list of SampleClip
        In group order. One dog id starts with ``-``, as many VGGSound ids do.
    """
    clips = []
    for g, (group, labels) in enumerate(DEMO_LABELS.items()):
        for k in range(clips_per_group):
            rng = np.random.default_rng([seed, g, k])
            ytid = _ytid(rng, dash=(g == 0 and k == 1))
            start = int(rng.integers(0, int(SERVED_SECONDS - CLIP_SECONDS) + 1))
            clip_seed, pitch = int(rng.integers(2 ** 31)), float(rng.uniform())
            clips.append(SampleClip(
                ytid=ytid, start=start, label=labels[k % len(labels)],
                split="test" if k % 5 == 4 else "train", group=group, seed=clip_seed,
                pitch=pitch, place=float(rng.uniform()), light=float(rng.uniform(0.55, 1.0))))
    return clips


def write_csv(clips: Sequence[SampleClip], path: Path, *, seed: int = 0) -> list[str]:
    """Write the VGGSound-format CSV (no header; ``ytid,start,label,split``) atomically.

    Besides ``clips`` it lists :data:`OTHER_ROWS` and one removed video (not served).

    Returns
    -------
    list of str
        The ids of the rows the server does not have.
    """
    rng = np.random.default_rng([seed, 99])
    rows = [(c.ytid, c.start, c.label, c.split) for c in clips]
    missing = _ytid(rng)
    rows.append((missing, 4, MISSING_LABEL, "train"))
    rows += [(_ytid(rng), 10, label, split) for label, split in OTHER_ROWS]
    rows.sort()                        # the real file is sorted by id
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return [missing]


def render_clip(clip: SampleClip, path: Path) -> tuple[float, float]:
    """Render one 20 s mp4 (H.264 160x120 at 10 fps + AAC 44.1 kHz) with ffmpeg.

    The call lies inside ``[start + 0.5, start + 9.5]`` s, so it survives stage 1's cut.

    Returns
    -------
    (float, float)
        When the call starts and ends, in seconds of the served video.

    Raises
    ------
    DemoFailed
        When ffmpeg fails (its message included).
    """
    rng = np.random.default_rng(clip.seed)
    y, call_start, call_end = synth.clip_audio(
        clip.group, seconds=SERVED_SECONDS, sr=AUDIO_SR, rng=rng,
        call_between_s=(clip.start + 0.5, clip.start + CLIP_SECONDS - 0.5), pitch=clip.pitch)
    frames = np.stack([synth.video_frame(clip.group, i / FPS, call_s=(call_start, call_end),
                                         width=WIDTH, height=HEIGHT, pitch=clip.pitch,
                                         place=clip.place, light=clip.light)
                       for i in range(int(SERVED_SECONDS * FPS))])   # (n, h, w, 3)
    with tempfile.TemporaryDirectory(prefix="animalvae-demo-") as tmpdir, \
            atomic_path(path) as tmp:
        wav = Path(tmpdir) / "audio.wav"
        sf.write(wav, y, AUDIO_SR, subtype="PCM_16")
        cmd = ["ffmpeg", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}",
               "-r", str(FPS), "-i", "pipe:0", "-i", str(wav.resolve()),
               "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
               "-pix_fmt", "yuv420p", "-g", str(2 * FPS), "-c:a", "aac", "-b:a", "128k",
               # moov first: ffmpeg (inside yt-dlp) can then cut from HTTP without seeking.
               "-movflags", "+faststart", "-shortest", str(tmp.resolve())]
        proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
        if proc.returncode:
            raise DemoFailed(f"ffmpeg could not render {path.name}: "
                             f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return call_start, call_end


def build_dataset(csv_path: Path, clips_per_group: int, *, seed: int = 0,
                  workers: int = 2) -> tuple[Path, list[str]]:
    """Make (or reuse) the sample videos in ``csv_path``'s folder and write the CSV.

    Returns
    -------
    videos : Path
        The folder the server serves (``<csv folder>/videos/<ytid>.mp4``).
    missing : list of str
        Ids in the CSV that the server does not have.
    """
    clips = plan_dataset(clips_per_group, seed=seed)
    videos = csv_path.parent / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    todo = [c for c in clips if not _nonempty(videos / f"{c.ytid}.mp4")]
    if todo:
        log.info("      rendering %d video(s) with ffmpeg (%d already there)",
                 len(todo), len(clips) - len(todo))
        pool = cf.ThreadPoolExecutor(workers)
        try:
            futures = [pool.submit(render_clip, c, videos / f"{c.ytid}.mp4") for c in todo]
            for future in cf.as_completed(futures):
                future.result()
        finally:
            # On Ctrl-C or a failure: drop the queued renders, let running ones finish.
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        log.info("      %d videos already there, reused", len(clips))
    missing = write_csv(clips, csv_path, seed=seed)
    return videos, missing


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0
