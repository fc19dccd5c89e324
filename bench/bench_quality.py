#!/usr/bin/env python3
"""Sample quality on real recordings: stages 2-4, then train and evaluate each model variant.

``--audio DIR`` holds real recordings in ``<group>/`` folders (wav/mp3/flac/ogg/m4a; any file
beside the group folders is ignored). In a work folder (temporary unless ``--work``), the
pipeline runs as a user would run it: ``video_to_audio.py`` with the folder as
``extract.extra_audio_dirs``, ``animal_sound_detector.py`` with ``detect.backend: energy`` (the
loudest 3 s window; no PANNs checkpoint needed), ``preprocess_audio_vae.py`` at the defaults.
Then, for each variant, ``vae.py train`` (timed, wall clock) and ``vae.py evaluate`` at the
defaults plus the variant's settings, and the figures of ``metrics.json``'s ``quality``
(:mod:`animalvae.evaluation.quality`): the judge's accuracy on real held-out clips (the ceiling), on
samples and on reconstructions; diversity, nearest-training ratio and sharpness (worst group);
the Fréchet distance of samples to real held-out clips (real training clips give the floor).

Variants: ``defaults`` (config.yaml as it is), ``before`` (the model of the previous release:
batch 32, 30 epochs, no mixture prior, samples from N(0, I)), and one per lever that was measured
(``--variants`` picks; ``--list`` shows them). Every variant trains on the same split; one that
changes only the prior or generation (``train.prior_fit``, ``kde_bandwidth``,
``gmm_components``, ``generate.*``) reuses the ``defaults`` run's weights (listed first, or
trained by an earlier run in the same ``--work`` folder), its sampler fit again by ``vae.py
fit-sampler``. ``--seeds`` repeats everything for other
``train.seed`` values (each its own split and initial weights), a row each:
how much a figure moves from one training to the next.

``--figure PATH`` draws, per group, a real held-out spectrogram beside generated ones of the
first variant (docs/quality_spectrograms.png).

Prints a Markdown section (``--title`` ends its heading) and writes it to
``bench/results/quality.md`` (or ``--results``). Without ``--audio``
(as ``bench/run_all.py`` calls it) the environment variable ``BENCH_AUDIO`` names the folder;
without either it says so and leaves the results file as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Where the section goes unless --results names another file.
DEFAULT_RESULTS = ROOT / "bench" / "results" / "quality.md"
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".m4a"}
#: Settings of each variant on top of config.yaml.
VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    # the previous release's model: one latent vector, per-pixel loss only, z ~ N(0, I)
    "before": ["train.batch_size=32", "train.epochs=30",
               "train.prior_fit=none", "generate.sample_prior=normal", "model.latent_dim=64",
               "model.latent_frames=0", "train.spectral_weight=0", "train.modulation_weight=0",
               "generate.restore_peak=false", "model.pitch_candidates=0", "generate.texture=0",
               "generate.spread=1.0"],
    # the defaults before the time-axis latent: one latent vector, per-pixel loss, a
    # 4-component mixture, the raw decoder output, trained on today's schedule
    "previous-model": ["model.latent_dim=64", "model.latent_frames=0", "train.spectral_weight=0",
                       "train.modulation_weight=0", "generate.restore_peak=false",
                       "train.prior_fit=gmm", "train.gmm_components=4", "model.pitch_candidates=0",
                       "generate.texture=0", "generate.spread=1.0"],
    # the defaults before the kernel density prior: a 16-component mixture fit by EM
    "gmm-prior": ["train.prior_fit=gmm", "train.gmm_components=16"],
    "gmm-prior-4": ["train.prior_fit=gmm", "train.gmm_components=4"],
    "kde-bandwidth-0.1": ["train.kde_bandwidth=0.1"],
    "kde-bandwidth-0.25": ["train.kde_bandwidth=0.25"],
    "kde-bandwidth-0.5": ["train.kde_bandwidth=0.5"],
    "kde-bandwidth-0.75": ["train.kde_bandwidth=0.75"],
    "kde-bandwidth-1": ["train.kde_bandwidth=1.0"],
    "no-restore-peak": ["generate.restore_peak=false"],
    "normal-prior": ["generate.sample_prior=normal"],
    "no-spectral-loss": ["train.spectral_weight=0"],
    # the defaults before the modulation term (per-pixel and spectral terms only)
    "no-modulation-loss": ["train.modulation_weight=0"],
    "one-latent-vector": ["model.latent_dim=64", "model.latent_frames=0"],
    "latent-frames-16": ["model.latent_dim=128", "model.latent_frames=16"],
    "latent-frames-64": ["model.latent_dim=512", "model.latent_frames=64"],
    "epochs-20": ["train.epochs=20"],
    # the defaults before batch 4 and latent_dim 512: fewer, larger steps and half the
    # information per time position
    "batch-8-latent-256": ["train.batch_size=8", "model.latent_dim=256"],
    # the KL weight and the kernel bandwidth before both were chosen cross-source
    "beta-1-bandwidth-0.75": ["train.beta=1.0", "train.kde_bandwidth=0.75"],
    # levers on what a decoder learns in the same time: a weaker KL, a faster optimiser
    "beta-0.25": ["train.beta=0.25"],
    "beta-0.1": ["train.beta=0.1"],
    "lr-2e-3": ["train.lr=0.002"],
    "channelnorm": ["model.decoder_norm=channel"],
    # the defaults before the harmonic comb output (animalvae/sound/harmonic.py)
    "no-pitch-comb": ["model.pitch_candidates=0"],
    # the decoder before the repeated edge positions: a clip's first and last frames meet the
    # zero padding of its convolutions
    "no-repeat-edges": ["model.repeat_edges=false"],
    # the modulation term's series tapered: no wrap-around from a clip's last frame to its first
    "modulation-taper": ["train.modulation_taper=true"],
    # samples with the comb drawn as sharply as in reconstructions (0.5), or fainter than the
    # default (1.0): the default before (2.0) and half-way to it
    "sample-pitch-temperature-0.5": ["generate.sample_pitch_temperature=0.5"],
    "sample-pitch-temperature-1": ["generate.sample_pitch_temperature=1.0"],
    "sample-pitch-temperature-1.5": ["generate.sample_pitch_temperature=1.5"],
    "sample-pitch-temperature-2": ["generate.sample_pitch_temperature=2.0"],
    # the decoder's output without the texture noise (animalvae/sound/texture.py); the defaults
    # before it (no texture, kde bandwidth 0.5); half the fitted noise
    "no-texture": ["generate.texture=0"],
    "previous-defaults": ["generate.texture=0", "train.kde_bandwidth=0.5", "generate.spread=1.0"],
    "texture-0.5": ["generate.texture=0.5"],
    "no-spread": ["generate.spread=1.0"],
    # the decoder's output as it is: no texture, no spread, no peak restoration, the comb at
    # the model's own pitch temperature
    "no-corrections": ["generate.texture=0", "generate.spread=1.0",
                       "generate.restore_peak=false", "generate.sample_pitch_temperature=0.5"],
    "spread-1.15": ["generate.spread=1.15"],
    "spread-1.3": ["generate.spread=1.3"],
    "spread-1.5": ["generate.spread=1.5"],
    # Griffin-Lim with half and twice the default iterations (64)
    "griffin-lim-32": ["generate.griffin_lim_iters=32"],
    "griffin-lim-128": ["generate.griffin_lim_iters=128"],
}
#: Settings that leave the trained weights alone: a variant made only of these reuses the
#: ``defaults`` run of the same seed, its sampler fit again with ``vae.py fit-sampler``.
_AFTER_TRAINING = ("generate.", "train.prior_fit", "train.kde_bandwidth",
                   "train.gmm_components")


def reuses_defaults(name: str) -> bool:
    """True when variant ``name`` changes only the prior or generation, not the weights."""
    return bool(VARIANTS[name]) and all(s.startswith(_AFTER_TRAINING) for s in VARIANTS[name])


def run(argv: list[str], log: Path) -> tuple[float, float]:
    """Run a root script with the venv's Python; its output goes to ``log``.

    Returns (wall seconds, CPU seconds of the process and its threads): on a shared machine
    the CPU time is the steadier measure of work, the wall time what a user waits.
    """
    start = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=fh, stderr=fh)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} failed (exit {proc.returncode}); see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.perf_counter() - start,
            after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime)


def describe(audio: Path) -> tuple[list[str], str]:
    """The group folders of ``audio`` and a line describing the recordings (no path)."""
    import soundfile as sf

    groups, parts, rates = [], [], set()
    for folder in sorted(p for p in audio.iterdir() if p.is_dir()):
        files = [f for f in folder.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES]
        if not files:
            continue
        seconds = 0.0
        for f in files:
            try:
                info = sf.info(f)
                seconds += info.duration
                rates.add(info.samplerate)
            except RuntimeError:
                pass
        groups.append(folder.name)
        parts.append(f"{len(files)} {folder.name} ({seconds / 60:.1f} min)")
    rate = ", ".join(f"{r / 1000:g} kHz" for r in sorted(rates)) or "compressed"
    return groups, f"{', '.join(parts)}; recordings of 1-10 s at {rate}"


def source_split(manifest: Path, fold: int) -> dict[str, dict[str, list[str]]]:
    """Each group's sources into a training side and a judging side, by ``manifest``.

    ``manifest`` is a CSV with ``file`` (relative to the recordings folder), ``group`` and
    ``source_repo`` (or ``source``) columns. Within a group, sources in order of clip count
    (largest first, ties by name) go to alternate sides: at ``fold`` 0 the largest trains,
    the next judges, and so on; fold 1 swaps the sides. Both sides of a group with two sources
    or more get recordings of their own source(s), none shared.

    Returns
    -------
    dict
        ``{"train": {group: [file, ...]}, "judge": {group: [file, ...]}}``
    """
    import csv
    from collections import Counter, defaultdict

    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    source_key = "source_repo" if rows and "source_repo" in rows[0] else "source"
    counts = Counter((r["group"], r[source_key]) for r in rows)
    side: dict[tuple[str, str], str] = {}
    for group in sorted({g for g, _ in counts}):
        ranked = sorted((src for g, src in counts if g == group),
                        key=lambda src: (-counts[group, src], src))
        for rank, src in enumerate(ranked):
            side[group, src] = ("train", "judge")[(rank + fold) % 2]
    split: dict[str, dict[str, list[str]]] = {"train": defaultdict(list),
                                              "judge": defaultdict(list)}
    for r in rows:
        split[side[r["group"], r[source_key]]][r["group"]].append(r["file"])
    return {k: dict(v) for k, v in split.items()}


def prepare(audio: Path, files: dict[str, list[str]], work: Path, log: Path) -> list[str]:
    """Stages 2-4 on ``files`` (per group, relative to ``audio``) in ``work``.

    Returns the --set arguments that point every stage there.
    """
    src = work / "recordings"
    for g, names in files.items():  # only the listed files: notes beside them stay out
        (src / g).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = src / g / Path(name).name
            if not link.exists():
                link.symlink_to((audio / name).resolve())
    paths = [f"paths.{key}={work / key}" for key in
             ("clips", "audio", "detections", "spectrograms", "runs")]
    (work / "clips").mkdir(exist_ok=True)
    common = [a for p in paths for a in ("--set", p)] + ["-q"]
    run(["video_to_audio.py", *common, "--set", f"extract.extra_audio_dirs=[{src}]"], log)
    run(["animal_sound_detector.py", *common, "--set", "detect.backend=energy"], log)
    run(["preprocess_audio_vae.py", *common], log)
    return common


def all_files(audio: Path, groups: list[str]) -> dict[str, list[str]]:
    """Every recording of each group folder, relative to ``audio``."""
    return {g: sorted(f"{g}/{f.name}" for f in (audio / g).iterdir()
                      if f.suffix.lower() in AUDIO_SUFFIXES) for g in groups}


def figures(quality: dict) -> dict[str, float]:
    """The bench's columns from metrics.json's quality section."""
    overall, per_group = quality["overall"], quality["groups"].values()
    worst = {key: min(row.get(key, float("nan")) for row in per_group)
             for key in ("diversity", "nearest_training", "sharpness_samples",
                         "sharpness_reconstructions", "samples", "reconstructions")}
    return {"ceiling": overall["ceiling"], "samples": overall["samples"],
            "reconstructions": overall["reconstructions"],
            "samples_vs": overall["samples_vs_ceiling"],
            "reconstructions_vs": overall["reconstructions_vs_ceiling"],
            "worst_group_samples": worst["samples"], **{f"min_{k}": v for k, v in worst.items()
                                                       if k not in ("samples",
                                                                    "reconstructions")},
            "frechet": quality["frechet"]["samples"],
            "frechet_rec": quality["frechet"]["reconstructions"],
            "frechet_real": quality["frechet"]["real_train"]}


def judge_figures(figures: dict) -> dict[str, float]:
    """A judge's columns: samples and reconstructions against its ceiling (overall and the
    worst group), FAD of samples and its real floor, worst-group diversity and novelty."""
    per_group = figures["groups"]
    return {"ceiling": figures["overall"]["ceiling"],
            "samples_vs": figures["overall"]["samples_vs_ceiling"],
            "reconstructions_vs": figures["overall"]["reconstructions_vs_ceiling"],
            **{f"{name}_vs": row["samples_vs_ceiling"] for name, row in per_group.items()},
            "min_reconstructions_vs": min(r["reconstructions_vs_ceiling"]
                                          for r in per_group.values()),
            "min_diversity": min(r.get("diversity", float("nan")) for r in per_group.values()),
            "min_nearest_training": min(r.get("nearest_training", float("nan"))
                                        for r in per_group.values()),
            "fad": figures["frechet"]["samples"], "fad_real": figures["frechet"]["real_train"]}


def all_judges(quality: dict) -> dict[str, dict[str, float]]:
    """:func:`judge_figures` of each judge metrics.json holds, by a short name."""
    judges = {"log-mel, in sample": quality}
    if "embedding" in quality:
        judges["BirdNET, in sample"] = quality["embedding"]
    for space, figures in quality.get("independent", {}).items():
        judges[("BirdNET" if space == "embedding" else "log-mel") + ", cross-source"] = figures
    return {name: judge_figures(figures) for name, figures in judges.items()}


def draw(run_dir: Path, path: Path, per_group: int = 3) -> None:
    """Per group: one real held-out spectrogram and ``per_group`` samples (generate's way)."""
    import torch
    from matplotlib.figure import Figure

    from animalvae.config import load_config
    from animalvae.plots import show_spectrogram
    from animalvae.sound.generate import load_run
    from animalvae.training.dataset import read_array, read_split

    config = load_config(ROOT / "config.yaml")
    trained, sampler = load_run(config, run_dir)
    _, val = read_split(run_dir)
    fig = Figure(figsize=(3.0 * (1 + per_group), 2.3 * len(trained.groups)), layout="constrained")
    axes = fig.subplots(len(trained.groups), 1 + per_group, squeeze=False)
    for g, name in enumerate(trained.groups):
        real = next(it for it in val if it.group == name)
        show_spectrogram(axes[g, 0], read_array(Path(real.source), trained.spec.shape)
                         .astype(np.float32), trained.spec, xlabel=g == len(trained.groups) - 1)
        axes[g, 0].set_title(f"{name}: real (held out)", fontsize=9)
        x = sampler.draw(trained.model, torch.full((per_group,), g), config).cpu().numpy()
        for k in range(per_group):
            show_spectrogram(axes[g, 1 + k], x[k], trained.spec, ylabel=False,
                             xlabel=g == len(trained.groups) - 1)
            axes[g, 1 + k].set_title(f"{name}: generated {k + 1}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=64)


def table(results: dict[str, dict[str, float]],
          seconds: dict[str, tuple[float, float] | None]) -> str:
    head = ("| variant | train s, wall / CPU | real held-out acc. (ceiling) | samples acc. "
            "(÷ ceiling) | "
            "reconstructions acc. (÷ ceiling) | worst group: samples acc. | diversity "
            "(min group) | nearest-training (min) | sharpness samples (min) | sharpness "
            "reconstructions (min) | Fréchet samples / reconstructions / real |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, f in results.items():
        took = ("{:.0f} / {:.0f}".format(*seconds[name]) if seconds[name]
                else "(defaults' weights)")
        rows.append(f"| {name} | {took} | {f['ceiling']:.2f} | {f['samples']:.2f} "
                    f"({f['samples_vs']:.2f}) | {f['reconstructions']:.2f} "
                    f"({f['reconstructions_vs']:.2f}) | {f['worst_group_samples']:.2f} | "
                    f"{f['min_diversity']:.2f} | {f['min_nearest_training']:.2f} | "
                    f"{f['min_sharpness_samples']:.2f} | {f['min_sharpness_reconstructions']:.2f}"
                    f" | {f['frechet']:.0f} / {f['frechet_rec']:.0f} / {f['frechet_real']:.0f} |")
    return head + "\n".join(rows)


def judges_table(judges: dict[str, dict[str, dict[str, float]]], groups: list[str]) -> str:
    """One row per variant and judge: the figures the pretrained and cross-source targets
    are read on."""
    head = (f"| variant | judge | real ceiling | samples ÷ ceiling ({' / '.join(groups)}) | "
            "samples ÷ ceiling, all | reconstructions ÷ ceiling (worst group) | FAD samples / "
            "real | diversity (min group) | nearest-training (min) |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for variant, by_judge in judges.items():
        for judge, f in by_judge.items():
            per_group = " / ".join(f"{f.get(f'{g}_vs', float('nan')):.2f}" for g in groups)
            rows.append(f"| {variant} | {judge} | {f['ceiling']:.2f} | {per_group} | "
                        f"{f['samples_vs']:.2f} | {f['reconstructions_vs']:.2f} "
                        f"({f['min_reconstructions_vs']:.2f}) | {f['fad']:.1f} / "
                        f"{f['fad_real']:.1f} | {f['min_diversity']:.2f} | "
                        f"{f['min_nearest_training']:.2f} |")
    return head + "\n".join(rows)


JUDGES_NOTE = (
    "Judges: a logistic regression on log-mel statistics or on BirdNET V2.4's 1024-d "
    "embedding (pretrained; `animalvae/evaluation/birdnet.py`). *In sample*: fit on the run's real "
    "training clips, ceiling on its real held-out clips, FAD to those. *Cross-source*: fit on "
    "the recordings of the sources the model never trained on (`vae.py evaluate "
    "--judge-dir`), ceiling on the run's own real clips, FAD of samples to the other sources' "
    "clips beside the FAD of the run's real clips to them (the floor). Diversity and "
    "nearest-training ratio: in the judge's space, relative to real clips of the training "
    "sources (1 = like real clips).")


def default_title(seeds: list[int]) -> str:
    """The end of the section's heading unless --title gives another."""
    return ("generated sounds vs real recordings" if len(seeds) == 1 else
            "generated sounds vs real recordings, retrained with other seeds")


def section(data: str, results: dict[str, dict[str, float]],
            seconds: dict[str, tuple[float, float] | None], samples_per_group: int,
            names: list[str], seeds: list[int], title: str = "", results_file: str = "",
            judges: dict[str, dict[str, dict[str, float]]] | None = None,
            groups: list[str] = (), fold: int | None = None) -> str:
    """The Markdown section of bench/results/quality.md (``title``: its heading's end;
    ``results_file``: the file it goes to when not that one, for the command line;
    ``judges``: :func:`all_judges` per row, a second table; ``fold``: the source split)."""
    split = ("the same split" if len(seeds) == 1 else
             "the split and initial weights of each `train.seed` (one row per seed)")
    heading = title or default_title(seeds)
    return (
        f"## quality: {heading}\n\n"
        f"Data: {data}; through stages 2 (extra audio), 3 (energy: the loudest 3 s window) "
        "and 4 at the defaults, then `vae.py train` and `vae.py evaluate` per variant on "
        f"{split} (10 % of each group held out); a variant that changes only the prior or "
        "generation reuses the defaults' weights (`vae.py fit-sampler` for its sampler). Figures "
        "from `metrics.json` "
        "(`animalvae/evaluation/quality.py`): accuracy of a log-mel-statistics classifier fit on "
        "the "
        "run's real training clips, on real held-out clips (the ceiling), on "
        f"{samples_per_group} samples per group and on reconstructions of the "
        "held-out clips; diversity, nearest-training ratio and sharpness relative to real "
        "clips through the same Griffin-Lim (1 = like real clips; the worst group shown); "
        "Fréchet distance to the real held-out clips, in the classifier's standardised "
        "features (real training clips give the floor). Training time: wall clock and CPU "
        "time (all threads) of `vae.py train` on this shared machine.\n\n"
        + table(results, seconds)
        + (f"\n\n{JUDGES_NOTE}\n\n{judges_table(judges, list(groups))}" if judges else "")
        + "\n\nVariants: "
        + "; ".join(f"`{n}` = {' '.join(VARIANTS[n]) or 'config.yaml'}" for n in names)
        + ".\n\nCommand: `python bench/bench_quality.py --audio DIR"
        + (" --work WORK" if _reuses_earlier_defaults(names) else "") + " --variants "
        + ",".join(names) + (" --seeds " + ",".join(map(str, seeds)) if seeds != [0] else "")
        + (f" --title {shlex.quote(heading)}" if heading != default_title(seeds) else "")
        + (f" --results {shlex.quote(results_file)}" if results_file else "")
        + (f" --cross-source {fold}" if fold is not None else "") + "`\n")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "integers") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seed given")
    return seeds


def _reuses_earlier_defaults(names: list[str]) -> bool:
    """True when variants ``names`` reuse the defaults' weights without training them: those
    of an earlier run in the same ``--work`` folder."""
    return names[0] != "defaults" and any(reuses_defaults(n) for n in names)


def run_name(variant: str, seed: int, seeds: list[int]) -> str:
    """The run folder of ``variant`` trained with ``seed`` (the variant alone with one seed)."""
    return variant if len(seeds) == 1 else f"{variant}-seed{seed}"


def _has_defaults(work: Path | None, seeds: list[int]) -> bool:
    """True when ``work`` holds a trained ``defaults`` run for every seed (for variants that
    reuse its weights without listing it again)."""
    return work is not None and all(
        (work / "runs" / run_name("defaults", s, seeds) / "model.pth").is_file() for s in seeds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--audio", type=Path, default=os.environ.get("BENCH_AUDIO") or None,
                   help="folder of real recordings in <group>/ folders (default: $BENCH_AUDIO)")
    p.add_argument("--work", type=Path, default=None,
                   help="keep the pipeline's outputs here (default: a temporary folder); a "
                        "rerun reuses stages 2-4")
    p.add_argument("--variants", default="defaults,before",
                   help="comma-separated variants to train and evaluate (default: "
                        "defaults,before); --list shows them all")
    p.add_argument("--source", default="",
                   help="where the recordings come from, put in the table's Data line (the "
                        "folder's path never is)")
    p.add_argument("--seeds", type=_seeds, default=[0], metavar="S,S,...",
                   help="train.seed values: every variant is trained and judged once per seed "
                        "(each its own split and initial weights), a row each (default: 0)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="Markdown file the table is written to (default: "
                        f"{DEFAULT_RESULTS.relative_to(ROOT)})")
    p.add_argument("--title", default="",
                   help="end of the table's heading \"## quality: ...\" (default: generated "
                        "sounds vs real recordings, and with --seeds: retrained with other "
                        "seeds)")
    p.add_argument("--cross-source", type=int, choices=(0, 1), default=None, metavar="FOLD",
                   help="train on some sources of each group and judge on the others (see "
                        "source_split: sources alternate by size; fold 0 trains on the largest, "
                        "1 swaps the sides); needs --sources")
    p.add_argument("--sources", type=Path, default=None, metavar="CSV",
                   help="with --cross-source: a CSV of file,group,source_repo per recording "
                        "(default: manifest.csv in the --audio folder)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--figure", type=Path, default=None,
                   help="draw real vs generated spectrograms per group of the first variant")
    args = p.parse_args(argv)
    if args.list:
        for name, sets in VARIANTS.items():
            print(f"{name}: {' '.join(sets) or '(config.yaml)'}")
        return 0
    if args.audio is None:
        print("bench_quality: skipped, it needs real recordings: --audio DIR or BENCH_AUDIO "
              f"({args.results} is left as it is)")
        return 0
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not args.audio.is_dir():
        p.error(f"unknown variant(s) {unknown}" if unknown else f"{args.audio} is not a folder")
    seeds = args.seeds
    if _reuses_earlier_defaults(names) and not _has_defaults(args.work, seeds):
        reusing = ", ".join(n for n in names if reuses_defaults(n))
        p.error(f"{reusing} reuse the defaults' model: list defaults first, or "
                "give the --work folder of an earlier run of defaults with these seeds")
    results_path = args.results.resolve()
    # the --results of the printed command: relative to the repository when inside it
    results_arg = "" if results_path == DEFAULT_RESULTS else (
        str(results_path.relative_to(ROOT)) if results_path.is_relative_to(ROOT)
        else str(args.results))
    groups, data = describe(args.audio)
    if args.source:
        data = f"{args.source}: {data}"
    if len(groups) < 2:
        p.error(f"{args.audio} needs at least two <group>/ folders of recordings")

    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        log = work / "bench.log"
        print(f"stages 2-4 on {data} (log: {log})", flush=True)
        judge_args: list[str] = []
        if args.cross_source is None:
            common = prepare(args.audio, all_files(args.audio, groups), work, log)
        else:
            split = source_split(args.sources or args.audio / "manifest.csv", args.cross_source)
            common = prepare(args.audio, split["train"], work, log)
            prepare(args.audio, split["judge"], work / "judge", log)
            judge_args = ["--judge-dir", str(work / "judge" / "spectrograms")]
            print(f"cross-source fold {args.cross_source}: training on "
                  f"{sum(map(len, split['train'].values()))} recordings, judging on "
                  f"{sum(map(len, split['judge'].values()))}", flush=True)
        judges: dict[str, dict[str, dict[str, float]]] = {}
        results: dict[str, dict[str, float]] = {}
        seconds: dict[str, tuple[float, float] | None] = {}
        for seed in seeds:
            for name in names:
                label = name if len(seeds) == 1 else f"{name}, seed {seed}"
                folder = run_name(name, seed, seeds)
                sets = [a for s in [*VARIANTS[name], f"train.seed={seed}"]
                        for a in ("--set", s)]
                variant = [*common, *sets, "--set", f"train.name={folder}"]
                run_dir = work / "runs" / folder
                if reuses_defaults(name):
                    shutil.rmtree(run_dir, ignore_errors=True)
                    shutil.copytree(work / "runs" / run_name("defaults", seed, seeds), run_dir,
                                    ignore=shutil.ignore_patterns("samples", "images"))
                    run(["vae.py", "fit-sampler", *variant], log)
                    seconds[label] = None
                else:
                    seconds[label] = run(["vae.py", "train", "--force", *variant], log)
                run(["vae.py", "evaluate", *variant, *judge_args], log)
                quality = json.loads((run_dir / "metrics.json").read_text())["quality"]
                results[label] = figures(quality)
                judges[label] = all_judges(quality)
                took = (f"trained in {seconds[label][0]:.0f} s ({seconds[label][1]:.0f} s of "
                        "CPU)" if seconds[label] else "the defaults' weights")
                print(f"{label}: {took}; {json.dumps(results[label])}", flush=True)
                # after every variant, so a long comparison stopped early keeps what it has
                args.results.write_text(section(data, results, seconds,
                                                quality["samples_per_group"], names, seeds,
                                                args.title, results_arg, judges, groups,
                                                args.cross_source))
                if args.figure and name == names[0] and seed == seeds[0]:
                    draw(run_dir, args.figure)
                    print(f"figure: {args.figure}", flush=True)
    print(section(data, results, seconds, quality["samples_per_group"], names, seeds,
                  args.title, results_arg, judges, groups, args.cross_source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
