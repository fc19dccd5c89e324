"""The offline demo: a generated stand-in for VGGSound, served locally, through all five scripts.

``python -m animalvae.demo`` (or ``make demo``):

0. builds a sample dataset in ``<out>/sample/``: for each group (dogs, cats, birds) a few 20 s
   mp4 videos (a coloured scene whose shape jumps while the animal calls, and a synthetic
   call from animalvae/synth.py over background noise), plus ``vggsound_demo.csv`` in
   VGGSound's format (``ytid,start,label,split``, no header, real animal labels) whose 10 s
   window ``[start, start + 10]`` holds the call;
1. serves the videos from a small HTTP server on 127.0.0.1 (a free port) while stage 1 runs,
   so that stage runs its real yt-dlp code path with ``download.url_template`` pointing at
   it; the server stops right after (also on Ctrl-C or a failure);
2. runs the five root scripts as subprocesses, exactly as a user would type them, with
   ``configs/demo.yaml``; stage 3 uses ``detect.backend: energy`` (the PANNs checkpoint
   cannot be fetched offline);
3. says where the sounds, frames, plots and the HTML gallery are.

A rerun reuses the sample videos, every stage skips its finished items and training
continues with ``--resume``; ``--fresh`` starts over. A failing step stops the demo with its
command, exit code and output tail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .. import cli
from ..config import Config, load_config
from ..errors import ConfigError
from ..stage import default_workers, read_manifest, require_binaries
from .data import OTHER_ROWS, DemoFailed, build_dataset
from .server import serve

__all__ = ["DemoFailed", "stage_commands", "run_step", "main"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
DEFAULT_OUT = ROOT / "demo_out"
MARKER = ".animalvae-demo"            # marks a folder the demo made (so --fresh may delete it)

# --------------------------------------------------------------------------------------------
# The five scripts
# --------------------------------------------------------------------------------------------

def _layout(out: Path) -> dict[str, Path]:
    """Where each ``paths.*`` setting points inside the demo folder."""
    return {"vggsound_csv": out / "sample" / "vggsound_demo.csv",
            "clips": out / "data" / "clips", "audio": out / "data" / "audio",
            "detections": out / "data" / "detections",
            "spectrograms": out / "data" / "spectrograms", "runs": out / "runs"}


def _path_overrides(config: Config, out: Path) -> list[str]:
    """``--set paths.X=...`` for every path the demo config does not already put in ``out``."""
    sets = []
    for key, path in _layout(out).items():
        if getattr(config.paths, key) != path.resolve():
            sets.append(f"paths.{key}={json.dumps(str(path.resolve()))}")   # a YAML string
    return sets


def stage_commands(config_path: Path, sets: Sequence[str], *, backend: str = "energy",
                   resume_training: bool = False,
                   resume_images: bool = False) -> list[tuple[str, list[str]]]:
    """The demo's steps: a title and the command line of each root script, in order.

    ``backend`` is ``detect.backend`` (named in stage 3's title); ``resume_training``
    continues an earlier run's ``last.pth`` (``vae.py train --resume``: it does nothing when
    that run already finished), ``resume_images`` the sound -> image model's
    (``train-images --resume``).
    """
    detector = ("detect.backend: energy, the model-free fallback: the PANNs checkpoint is not "
                "available offline" if backend == "energy" else f"detect.backend: {backend}")
    common = ["--config", str(config_path)]
    for item in sets:
        common += ["--set", item]
    python = sys.executable
    return [
        ("[1/5] download_video.py: CSV -> 10 s clips, through yt-dlp from the local server",
         [python, str(ROOT / "download_video.py"), *common]),
        ("[2/5] video_to_audio.py: clips -> mono WAV",
         [python, str(ROOT / "video_to_audio.py"), *common]),
        (f"[3/5] animal_sound_detector.py: the 3 s window with the call + its video frame "
         f"({detector})",
         [python, str(ROOT / "animal_sound_detector.py"), *common]),
        ("[4/5] preprocess_audio_vae.py: segments -> spectrograms",
         [python, str(ROOT / "preprocess_audio_vae.py"), *common]),
        ("[5/5] vae.py train: spectrograms -> model.pth"
         + (" (continuing the earlier run)" if resume_training else ""),
         [python, str(ROOT / "vae.py"), "train", *(["--resume"] if resume_training else []),
          *common]),
        ("[5/5] vae.py generate: model.pth -> new sounds + gallery",
         [python, str(ROOT / "vae.py"), "generate", *common]),
        ("[5/5] vae.py train-images: spectrograms + their video frames -> one latent space"
         + (" (continuing the earlier run)" if resume_images else ""),
         [python, str(ROOT / "vae.py"), "train-images",
          *(["--resume"] if resume_images else []), *common]),
        ("[5/5] vae.py sound-to-image: each held-out sound alone -> images + gallery",
         [python, str(ROOT / "vae.py"), "sound-to-image", *common]),
        ("[5/5] vae.py evaluate-images: retrieval and group accuracy -> metrics.json",
         [python, str(ROOT / "vae.py"), "evaluate-images", *common]),
    ]


def _shown(argv: Sequence[str]) -> str:
    """The command as a user would type it in the repository (``python``, relative paths)."""
    words = ["python" if i == 0 else a for i, a in enumerate(argv)]
    words = [os.path.relpath(w, ROOT) if w.startswith(str(ROOT) + os.sep) else w for w in words]
    return shlex.join(words)


def _rel(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _echo(stream, tail: bytearray) -> None:
    """Copy ``stream`` to our stderr as it comes (raw chunks, so progress bars redraw live)."""
    while chunk := stream.read1(65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail += chunk
        del tail[:-65536]


def _stop(proc: subprocess.Popen) -> None:
    """Let a child that got Ctrl-C finish cleanly; then ask again, then insist."""
    for action, wait_s in ((None, 10), (signal.SIGINT, 10), (signal.SIGTERM, 5),
                           (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        if action is not None:
            proc.send_signal(action)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)


def run_step(title: str, argv: Sequence[str], *, tail_lines: int = 30) -> float:
    """Run one command, echoing its output live; returns its wall time in seconds.

    Raises
    ------
    DemoFailed
        With the command, its exit code and the last ``tail_lines`` lines of its output.
    KeyboardInterrupt
        On Ctrl-C (or SIGTERM), once the child has stopped: a child that got the same
        Ctrl-C writes its manifest and exits by itself; one that did not is asked to.
    """
    log.info("\n%s\n    $ %s", title, _shown(argv))
    start = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    tail = bytearray()
    # A thread copies the output, so it keeps flowing while the child cleans up after Ctrl-C.
    reader = threading.Thread(target=_echo, args=(proc.stdout, tail), daemon=True)
    reader.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    finally:
        reader.join(timeout=5)
    seconds = time.monotonic() - start
    if code == 130:
        raise KeyboardInterrupt
    if code:
        lines = [ln for ln in re.split(r"[\r\n]+", tail.decode(errors="replace")) if ln.strip()]
        raise DemoFailed(
            f"step failed (exit code {code}): {_shown(argv)}\n"
            f"--- last {min(tail_lines, len(lines))} lines of its output ---\n"
            + "\n".join(lines[-tail_lines:]), exit_code=code)
    log.info("    done in %.1f s", seconds)
    return seconds


def _counts(folder: Path) -> str:
    rows = read_manifest(folder).values()
    statuses = [r.get("status", "") for r in rows]
    return " · ".join(f"{s} {statuses.count(s)}" for s in ("ok", "skipped", "failed"))


def _report(config: Config, total_s: float, *, show_run: bool) -> str:
    """Where everything is, with each manifest's counts (``show_run``: paths were --set)."""
    p = config.paths
    run_dir = p.runs / config.train.name
    samples = sorted((run_dir / "samples").glob("*.wav"))
    rel = _rel   # short, for the table below
    lines = [f"\nThe demo finished in {total_s / 60:.1f} min. What it made:",
             f"  clips (stage 1)         {rel(p.clips)}/<group>/<id>.mp4   [{_counts(p.clips)}]",
             f"  audio (stage 2)         {rel(p.audio)}/<group>/<id>.wav   [{_counts(p.audio)}]",
             f"  segments (stage 3)      {rel(p.detections)}/segments/<group>/<id>.wav   "
             f"[{_counts(p.detections)}]",
             f"  frames (stage 3)        {rel(p.detections)}/frames/<group>/<id>.jpg",
             f"  spectrograms (stage 4)  {rel(p.spectrograms)}/<group>/<id>.npy   "
             f"[{_counts(p.spectrograms)}]",
             f"  spectrogram preview     {rel(p.spectrograms / 'preview.png')}",
             f"  model (stage 5)         {rel(run_dir / 'model.pth')}",
             f"  loss curve              {rel(run_dir / 'loss.png')}",
             f"  generated sounds        {rel(run_dir / 'samples')}/ ({len(samples)} wav files "
             "+ a spectrogram png each)",
             f"  gallery (open it)       {(run_dir / 'index.html').resolve().as_uri()}",
             f"  sound -> image model    {rel(run_dir / 'images' / 'model.pth')}",
             f"  images from sounds      {(run_dir / 'images' / 'index.html').resolve().as_uri()}",
             f"  sound -> image metrics  {rel(run_dir / 'images' / 'metrics.json')}"
             + _image_metrics(run_dir / "images" / "metrics.json"),
             "Each folder's manifest.csv has one row per item (status, reason, details).",
             "Next: more samples with  " + shlex.join(
                 ["python", "vae.py", "generate", "--config",
                  os.path.relpath(config.source or DEMO_CONFIG, ROOT),
                  *(["--run-dir", rel(run_dir)] if show_run else []),
                  "--group", "dogs", "--count", "8"])]
    return "\n".join(lines)


def _image_metrics(path: Path) -> str:
    """`` (R@1 .., group accuracy ..)`` from the sound -> image model's metrics.json, or ''."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        return (f"\n      retrieval R@1 {m['retrieval_r1']:.2f} among {m['retrieval_candidates']} "
                f"(chance {m['chance_r1']:.2f}, the group alone {m['group_only_r1']:.2f}); "
                f"group accuracy of images made from held-out sounds "
                f"{m['group_accuracy_generated']:.2f} (real frames "
                f"{m['group_accuracy_real_frames']:.2f}); images of one sound differ by "
                f"{m['variety_within_sound']:.1f}, of different sounds by "
                f"{m['variety_across_sounds']:.1f} (0-255)")
    except (OSError, ValueError, KeyError):
        return ""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m animalvae.demo", description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="folder for the sample dataset and every stage's output "
                        "(default: demo_out/ in the repository)")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, metavar="PATH",
                   help="settings for the five scripts (default: configs/demo.yaml)")
    p.add_argument("--clips-per-group", type=cli.int_at_least(1), default=24, metavar="N",
                   help="sample videos per group: dogs, cats, birds (default: 24)")
    p.add_argument("--epochs", type=cli.int_at_least(1), default=None, metavar="N",
                   help="training epochs (default: train.epochs of the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting passed to every script, e.g. --set train.max_steps=5 "
                        "(repeatable)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sample dataset (ids, call times, sounds; default: 0)")
    p.add_argument("--fresh", action="store_true",
                   help="delete the demo folder first and start over (only a folder the "
                        "demo made)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail (server requests)")
    return p


def _prepare_out(out: Path, *, fresh: bool) -> None:
    if fresh and out.exists():
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise ConfigError(f"--fresh: {out} was not made by the demo (no {MARKER} file "
                              "inside); not deleting it. Remove it yourself or pick another "
                              "--out")
        log.info("--fresh: deleting %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by python -m animalvae.demo; --fresh may delete this "
                              "folder\n", encoding="utf-8")


def _raise_on_sigterm(signum: int, frame: object) -> None:
    # A polite kill (e.g. from CI) gets the same clean-up as Ctrl-C: server down, child stopped.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """The demo for parsed arguments; returns the exit code."""
    start = time.monotonic()
    require_binaries("ffmpeg", "ffprobe")
    out = args.out.expanduser().resolve()
    config_path = args.config.expanduser().resolve()
    sets = list(args.set)
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    config = load_config(config_path, sets)
    path_sets = _path_overrides(config, out)
    sets = path_sets + sets
    config = load_config(config_path, sets)
    if config.detect.backend != "energy":
        log.warning("detect.backend=%s: the demo is meant for the energy backend (offline, "
                    "no checkpoint)", config.detect.backend)
    _prepare_out(out, fresh=args.fresh)

    log.info("animalvae demo: the whole pipeline, offline, on generated data, in %s", out)
    log.info("\n[0/5] sample dataset: %d synthetic videos per group (dogs bark, cats meow, "
             "birds chirp), and a VGGSound-format CSV", args.clips_per_group)
    csv_path = config.paths.vggsound_csv
    videos, missing = build_dataset(csv_path, args.clips_per_group, seed=args.seed,
                                    workers=default_workers(0))
    log.info("      %s lists them plus %d rows of other classes (not selected) and one "
             "video the server does not have (%s): like the ~20 %% of VGGSound that is gone "
             "from YouTube, stage 1 records it as failed and carries on",
             _rel(csv_path), len(OTHER_ROWS), missing[0])

    with serve(videos) as base_url:
        log.info("      serving %s at %s (stands in for YouTube)", _rel(videos),
                 base_url)
        url_set = "download.url_template=" + json.dumps(f"{base_url}/{{ytid}}.mp4")
        for title, argv in stage_commands(config_path, [url_set, *sets])[:1]:
            run_step(title, argv)
    log.info("      server stopped")
    run_dir = config.paths.runs / config.train.name
    resume = (run_dir / "last.pth").is_file()
    resume_images = (run_dir / "images" / "last.pth").is_file()
    for title, argv in stage_commands(config_path, sets, backend=config.detect.backend,
                                      resume_training=resume,
                                      resume_images=resume_images)[1:]:
        run_step(title, argv)
    log.info("%s", _report(config, time.monotonic() - start, show_run=bool(path_sets)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m animalvae.demo``: returns 0, the failing step's code, 2 or 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        return run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("demo: error: %s", problem)
        return 2
    except DemoFailed as exc:
        log.error("\ndemo: %s\n\nThe demo stopped. Fix the cause and run it again: finished "
                  "work is kept (or add --fresh to start over, e.g. after changing model.* "
                  "or train.* settings).", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("\ndemo: interrupted; the server is stopped and finished work is kept: "
                  "run the same command to continue")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)

