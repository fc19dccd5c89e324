#!/usr/bin/env python3
"""Edge stripes: the per-frame level of decoded spectrograms against real ones, step by step.

For each trained run folder (``--runs``), on up to ``--clips`` of its training clips: the mean
level of every time frame (over bins and clips) of the real spectrograms, of their
reconstructions (the posterior mean decoded, then ``restore_peak``, then the texture noise, as
``vae.py reconstruct`` does), of ``--samples`` samples per group (``vae.py generate``'s way, in
the same steps), and of each after Griffin-Lim and the forward transform again. Each row gives
the median level of the interior frames and how far the first and last three frames lie from
it: a stripe is an edge frame far above (or below) what real clips show there.

Prints a Markdown section and writes it to ``bench/results/edges.md`` (or ``--results``); without
``--runs`` (as ``bench/run_all.py`` calls it) it says so and leaves the results file as it is.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_RESULTS = ROOT / "bench" / "results" / "edges.md"
#: Frames at each end shown, and frames at each end left out of the interior's median.
EDGE, MARGIN = 3, 8


def row(name: str, x: torch.Tensor) -> str:
    """One table row: interior median level, then the edge frames' offsets from it."""
    level = x.float().mean(dim=(0, 1)).cpu().numpy()                      # (W,)
    interior = float(np.median(level[MARGIN:-MARGIN]))
    edges = [*level[:EDGE], *level[-EDGE:]]
    offsets = " | ".join(f"{v - interior:+.3f}" for v in edges)
    return f"| {name} | {interior:.3f} | {offsets} |"


@torch.no_grad()
def profile(run: Path, config_sets: list[str], *, clips: int, samples: int) -> list[str]:
    """The table rows of one run folder (module docstring)."""
    from animalvae.config import load_config
    from animalvae.sound.generate import load_run
    from animalvae.sound.sampler import restore_peak
    from animalvae.sound.texture import add_texture
    from animalvae.spectrogram import Spectrogram, to_audio
    from animalvae.training.dataset import SpectrogramSet, read_split

    config = load_config(ROOT / "config.yaml", overrides=config_sets)
    gc = config.generate
    trained, sampler = load_run(config, run)
    decoder = trained.model.decoder
    train, _ = read_split(run)
    data = SpectrogramSet(train[::max(1, len(train) // clips)][:clips], trained.groups,
                          trained.spec.shape)
    x, y = data.batch(torch.arange(len(data)), torch.device("cpu"))      # (N, 1, H, W), (N,)
    labels = torch.arange(len(trained.groups)).repeat_interleave(samples)
    z = sampler.latents(labels, config, latent_dim=trained.model.config.latent_dim)
    steps = {"reconstructions": (decoder(trained.model.encode(x, y)[0], decoder.condition(y)),
                                 y),
             "samples": (decoder(z, decoder.condition(labels),
                                 pitch_temperature=gc.sample_pitch_temperature), labels)}
    rows = [row("real training clips", x[:, 0])]
    final = {"real training clips": x[:, 0]}
    for kind, (out, groups) in steps.items():
        out = out[:, 0]
        rows.append(row(f"{kind}: decoder output", out))
        if gc.restore_peak:
            out = restore_peak(out)
            rows.append(row(f"{kind}: + restore_peak", out))
        if sampler.texture is not None and gc.texture > 0:
            out = add_texture(out, sampler.texture[groups], scale=gc.texture, seed=gc.seed)
            rows.append(row(f"{kind}: + texture", out))
        final[kind] = out
    forward = Spectrogram(trained.spec)
    for kind, out in final.items():
        audio = to_audio(out, trained.spec, n_iter=gc.griffin_lim_iters, seed=gc.seed)
        rows.append(row(f"{kind}: Griffin-Lim, analysed again", forward(audio)))
    return rows


def section(tables: dict[str, list[str]], command: str, clips: int, samples: int) -> str:
    head = ("| spectrograms | interior level | frame 0 | 1 | 2 | W-3 | W-2 | W-1 |\n"
            "|---|---|---|---|---|---|---|---|\n")
    parts = [f"### {name}\n\n" + head + "\n".join(rows) for name, rows in tables.items()]
    return ("## Edge stripes: per-frame level of decoded spectrograms\n\n"
            f"Mean level ([0, 1] units) of each time frame over bins and clips: {clips} training "
            f"clips of each run, their reconstructions, {samples} samples per group; interior: "
            f"the median over frames {MARGIN} to W-{MARGIN + 1}; the edge frames as offsets from "
            "it.\n\n" + "\n\n".join(parts) + f"\n\nCommand: `{command}`\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, nargs="*", default=[],
                   help="trained run folders (each with model.pth and split.csv)")
    p.add_argument("--clips", type=int, default=96, help="training clips per run (default 96)")
    p.add_argument("--samples", type=int, default=32, help="samples per group (default 32)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="generate.* override for decoding, as vae.py --set (repeatable)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="file the Markdown section is written to (default: %(default)s)")
    args = p.parse_args(argv)
    if not args.runs:
        print("bench_edges: skipped, it needs trained run folders: --runs DIR [DIR ...]")
        return 0
    tables = {run.name: profile(run, args.sets, clips=args.clips, samples=args.samples)
              for run in args.runs}
    command = "python bench/bench_edges.py " + shlex.join(
        [a for a in (argv if argv is not None else sys.argv[1:])])
    text = section(tables, command, args.clips, args.samples)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
