#!/usr/bin/env python3
"""Stage 5: train a convolutional VAE on the spectrograms, and make new animal sounds with it.

Sub-commands:
  train        paths.spectrograms -> runs/<name>/model.pth, metrics.csv, loss.png
  generate     model.pth -> samples/<group>_<k>.wav + .png, index.html gallery
  reconstruct  held-out spectrograms -> original vs reconstruction pairs
  interpolate  two real files -> the latent line between them, as audio
  evaluate     validation ELBO, log-spectral distance, spectral convergence -> metrics.json
"""

import argparse
import sys
from pathlib import Path

from animalvae import cli


def build_parser():
    p = argparse.ArgumentParser(prog="vae.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = cli.common_parent(
        input_help="stage-4 folder of spectrograms (default: paths.spectrograms)",
        output_help=None)
    run_flag = argparse.ArgumentParser(add_help=False)
    run_flag.add_argument("--run", type=Path, default=None, metavar="DIR",
                          help="run folder (default: paths.runs/<train.name>)")

    t = sub.add_parser("train", parents=[common, run_flag], help="train the VAE",
                       description="Train the VAE; writes model.pth (best by validation), "
                                   "last.pth, metrics.csv, loss.png and split.csv into the run "
                                   "folder. Here --limit N trains on at most N spectrograms "
                                   "(a smoke test) and --force starts over in a run folder "
                                   "that already holds a run.")
    t.add_argument("--resume", action="store_true",
                   help="continue from the run's last.pth exactly (model, optimiser, "
                        "scheduler, epoch, RNG)")
    g = sub.add_parser("generate", parents=[common, run_flag], help="sample new sounds",
                       description="Sample z, decode, undo the normalisation and run "
                                   "Griffin-Lim; writes samples/ and index.html.")
    g.add_argument("--group", action="append", default=None, metavar="NAME",
                   help="only these groups (repeatable; default: every group)")
    g.add_argument("--count", type=int, default=None, metavar="N",
                   help="samples per group (default: generate.count)")
    r = sub.add_parser("reconstruct", parents=[common, run_flag],
                       help="original vs reconstruction of held-out files")
    r.add_argument("--count", type=int, default=None, metavar="N",
                   help="held-out files per group (default: generate.count)")
    i = sub.add_parser("interpolate", parents=[common, run_flag],
                       help="walk the latent line between two files")
    i.add_argument("a", type=Path, help="first spectrogram (.npy) or segment (.wav)")
    i.add_argument("b", type=Path, help="second spectrogram (.npy) or segment (.wav)")
    i.add_argument("--steps", type=int, default=8, help="points on the line (default: 8)")
    sub.add_parser("evaluate", parents=[common, run_flag], help="metrics on the validation set",
                   description="Validation ELBO, log-spectral distance, spectral convergence "
                               "after Griffin-Lim, KL per latent dimension and active units on "
                               "the run's held-out files -> metrics.json. Here --limit N uses "
                               "at most N held-out files.")
    return p


def run(args) -> int:
    config = cli.config_from_args(args, input_key="paths.spectrograms")
    run_dir = args.run.resolve() if args.run else config.paths.runs / config.train.name
    options = cli.options_from_args(args)
    if args.command == "train":
        from animalvae import train
        try:
            train.train(config, run_dir, resume=args.resume, options=options)
        except KeyboardInterrupt:
            print(f"vae.py: last.pth in {run_dir} holds the last finished epoch; continue "
                  "with: vae.py train --resume", file=sys.stderr)
            raise
        return 0
    from animalvae import generate
    if args.command == "generate":
        generate.generate(config, run_dir, groups=args.group, count=args.count, options=options)
    elif args.command == "reconstruct":
        generate.reconstruct(config, run_dir, count=args.count, options=options)
    elif args.command == "interpolate":
        generate.interpolate(config, run_dir, args.a, args.b, steps=args.steps, options=options)
    else:
        generate.evaluate(config, run_dir, options=options)
    return 0


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
