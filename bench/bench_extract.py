#!/usr/bin/env python3
"""Stage 2 throughput: our extract stage vs the bare ffmpeg CLI run over the same clips one by one.

The floor is ``ffmpeg -i x.mp4 -ac 1 -ar 32000 x.wav`` per clip, sequentially: no probe, no
checks, no manifest. Ours probes each clip, converts it (trimmed to the declared duration),
measures its level and writes the manifest, over a process pool of ``extract.workers`` (default:
one per core) and also with one worker. Each variant runs ``REPEATS`` times on the same
generated clips; the best time counts (the machine is shared, so the best is the least noisy).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from media import make_clip  # noqa: E402

from animalvae import extract  # noqa: E402
from animalvae.config import load_config  # noqa: E402
from animalvae.stage import StageOptions, default_workers  # noqa: E402

N_CLIPS = 24
CLIP_SECONDS = 10.0
REPEATS = 3


def make_clips(folder: Path) -> list[Path]:
    """VGGSound-like clips: 10 s, stereo 44.1 kHz AAC noise, a small H.264 video."""
    return [make_clip(folder / ("dogs" if i % 2 else "cats") / f"clip{i:02d}_000000.mp4",
                      seconds=CLIP_SECONDS, audio="noise", channels=2, sample_rate=44100,
                      size="320x240", fps=25)
            for i in range(N_CLIPS)]


def time_cli(clips: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for clip in clips:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(clip),
                        "-ac", "1", "-ar", "32000", str(out / f"{clip.stem}.wav")], check=True)
    return time.perf_counter() - start


def time_ours(config, workers: int) -> float:
    start = time.perf_counter()
    summary = extract.run(config, StageOptions(force=True, workers=workers, progress=False))
    elapsed = time.perf_counter() - start
    assert summary.ok == N_CLIPS, summary.line()
    return elapsed


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    workers = default_workers(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = make_clips(tmp / "clips")
        (tmp / "config.yaml").write_text(yaml.safe_dump(
            {"paths": {"clips": str(tmp / "clips"), "audio": str(tmp / "audio")}}))
        config = load_config(tmp / "config.yaml")
        best = {"cli": [], "ours": [], "ours1": []}
        for _ in range(REPEATS):  # interleaved, so a burst of load hits every variant alike
            best["cli"].append(time_cli(clips, tmp / "cli"))
            best["ours"].append(time_ours(config, workers))
            best["ours1"].append(time_ours(config, 1))
    t = {k: min(v) for k, v in best.items()}
    rows = [
        ("bare `ffmpeg -i x.mp4 -ac 1 -ar 32000 x.wav`, one by one (floor)", t["cli"]),
        (f"ours, `extract.run`, {workers} worker(s) (default)", t["ours"]),
        ("ours, `extract.run`, 1 worker", t["ours1"]),
    ]
    lines = [
        "## Stage 2: clips to WAV (video_to_audio.py)",
        "",
        f"{N_CLIPS} generated clips of {CLIP_SECONDS:.0f} s (320x240 25 fps H.264, stereo "
        f"44.1 kHz AAC) to mono PCM16 32 kHz WAV; best of {REPEATS} runs each.",
        "",
        "| variant | seconds | clips/s | vs floor |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.2f} | {N_CLIPS / seconds:.1f} | "
                     f"{t['cli'] / seconds:.2f}x |")
    lines += [
        "",
        "Ours also probes every clip (ffprobe), trims AAC padding, measures the RMS level and "
        "writes the manifest; 'vs floor' above 1 means faster than the bare CLI loop. "
        f"Measured on {os.cpu_count()} CPU core(s) shared with other work: timings are noisy.",
        "",
        "Command: `.venv/bin/python bench/bench_extract.py`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "extract.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
