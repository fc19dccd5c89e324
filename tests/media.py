"""Generated test media: tiny clips and signals made with ffmpeg's lavfi sources and numpy.

Nothing here is downloaded; every test makes the files it needs in a tmp folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["make_clip", "make_wav", "tone", "ffprobe_audio"]


def make_clip(path: Path, *, seconds: float = 2.0, audio: str | None = "sine",
              video: bool = True, sample_rate: int = 44100, channels: int = 1,
              frequency: float = 440.0, size: str = "160x120", fps: int = 10) -> Path:
    """Write an mp4 (H.264 + AAC) made from lavfi sources.

    audio: ``"sine"``, ``"noise"``, ``"silence"`` or None (no audio stream).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}"]
    if audio is not None:
        layout = "mono" if channels == 1 else "stereo"
        src = {
            "sine": f"sine=frequency={frequency}:sample_rate={sample_rate}:duration={seconds}",
            "noise": f"anoisesrc=color=pink:sample_rate={sample_rate}:duration={seconds}"
                     ":amplitude=0.3",
            "silence": f"anullsrc=channel_layout={layout}:sample_rate={sample_rate}",
        }[audio]
        cmd += ["-f", "lavfi", "-i", src]
        if audio == "silence":
            cmd += ["-t", str(seconds)]
        cmd += ["-ac", str(channels)]
    if video:
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]
    if audio is not None:
        cmd += ["-c:a", "aac", "-b:a", "96k"]
    cmd += ["-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path


def tone(seconds: float, sample_rate: int = 32000, frequency: float = 440.0,
         amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine wave [shape=(seconds * sample_rate,)]."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def make_wav(path: Path, y: np.ndarray, sample_rate: int = 32000) -> Path:
    """Write ``y`` ([shape=(n,)] or (n, channels)) as 16-bit PCM WAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sample_rate, subtype="PCM_16")
    return path


def ffprobe_audio(path: Path) -> dict:
    """sample_rate, channels and duration of the first audio stream, read with ffprobe."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels:format=duration", "-of", "default=nw=1", str(path)],
        check=True, capture_output=True, text=True).stdout
    info = dict(line.split("=", 1) for line in out.split())
    return {"sample_rate": int(info["sample_rate"]), "channels": int(info["channels"]),
            "duration": float(info["duration"])}
