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


def animal_call(seconds: float = 3.0, sample_rate: int = 32000, *, seed: int = 0,
                f0: float | None = None, noise: float = 0.01,
                peak: float = 0.5) -> np.ndarray:
    """A float32 animal-like call: 8 harmonics with vibrato, gated on and off, plus noise.

    ``f0`` (Hz) defaults to a seeded random pitch in [200, 1500); ``peak`` is the max |y|.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(200, 1500) if f0 is None else f0
    vibrato_hz, depth = rng.uniform(3, 8), rng.uniform(0.01, 0.05)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + depth * np.sin(2 * np.pi * vibrato_hz * t))) \
        / sample_rate
    y = sum(0.6 ** k * np.sin((k + 1) * phase) for k in range(8))
    gate = 0.5 + 0.5 * (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0)   # calls and pauses
    y = y * gate * np.clip(1.5 * np.sin(np.pi * t / seconds), 0, 1)
    y = y + noise * rng.standard_normal(n)
    return (peak * y / np.abs(y).max()).astype(np.float32)


def make_colour_video(path: Path, colours: list[tuple[int, int, int]], *, fps: int = 10,
                      size: tuple[int, int] = (64, 48)) -> Path:
    """Write an H.264 mp4 (no audio) showing ``colours[i]`` (BGR) during second ``i``.

    Each frame is the colour plus a +-24 checkerboard, so coloured frames are not flat
    (std ~24) while a ``(0, 0, 0)`` second stays pure black (a blank frame); the mean of a
    frame is its colour as long as every channel is in [24, 231] or 0.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    checker = (np.indices((height, width)).sum(axis=0) // 4 % 2 * 48 - 24)[..., None]
    frames = []
    for colour in colours:
        base = np.broadcast_to(np.array(colour, dtype=np.int16), (height, width, 3))
        frame = base if not any(colour) else base + checker
        frames += [np.clip(frame, 0, 255).astype(np.uint8)] * fps
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo",
                    "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
                    "-g", str(2 * fps), str(path)],
                   input=np.stack(frames).tobytes(), check=True)
    return path
