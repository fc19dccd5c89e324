#!/usr/bin/env python3
"""Stage 5: train a convolutional VAE on the spectrograms, and make new animal sounds with it.

Sub-commands:
  train        paths.spectrograms -> runs/<name>/model.pth, sampler.pth, metrics.csv, loss.png
  generate     model.pth -> samples/<group>_<k>.wav + .png, index.html gallery
  reconstruct  held-out spectrograms -> original vs reconstruction pairs
  interpolate  two real files -> the latent line between them, as audio
  evaluate     validation ELBO, log-spectral distance, spectral convergence, and the quality
               of samples and reconstructions against real clips -> metrics.json
  fit-sampler  fit the sampler (prior, spread, texture) again -> sampler.pth

Sound -> image (one latent space for spectrograms and video frames; in runs/<name>/images/):
  train-images     spectrograms + stage 4's frames -> images/model.pth, metrics.csv
  sound-to-image   recordings (wav, mp3, mp4), or the held-out pairs -> N images each
  image-to-sound   pictures -> a sound each
  sample-images    per group: a sound and its picture from one latent sample
  evaluate-images  retrieval R@1/R@5, group accuracy, Frechet distance -> images/metrics.json
"""

import argparse
import sys
import textwrap
from pathlib import Path

from animalvae import cli
from animalvae.stage import StageOptions

_EXIT_CODES = ("Exit codes: 0 done, 1 {diverged}a system error such as a full disk, 2 bad "
               "settings or input, 130 interrupted.")
_DIVERGED = "training diverged (the loss became NaN or Inf) or "
_SETTINGS = ("Every setting lives in config.yaml (see the comments there); --set changes one "
             "for this run, e.g. --set train.epochs=5. Paths in the config file are relative "
             "to it; --input and --run-dir are relative to the current directory. -v/-q go "
             "before or after the sub-command.")


def _parents(*, input_help: str | None = None, limit_help: str | None = None,
             force_help: str | None = None) -> list[argparse.ArgumentParser]:
    """A sub-command's shared flags: --config, --set, -v, -q, --run-dir, and those named here."""
    common = cli.common_parent(input_help=input_help, output_help=None, limit_help=limit_help,
                               workers_help=None, force_help=force_help,
                               verbosity_defaults=False)
    run_flag = argparse.ArgumentParser(add_help=False)
    # --run-dir, not --run: torchrun takes "--run" anywhere on its line for its --run-path
    run_flag.add_argument("--run-dir", "--run", dest="run", type=Path, default=None,
                          metavar="DIR", help="run folder (default: paths.runs/<train.name>; "
                          "--run is the same flag, except after torchrun)")
    return [common, run_flag]


def build_parser():
    epilog = " ".join([_SETTINGS, _EXIT_CODES.format(diverged=_DIVERGED),
                       "Each COMMAND has its own --help."])
    p = argparse.ArgumentParser(prog="vae.py", description=__doc__,
                                epilog=textwrap.fill(epilog, width=90),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_verbosity(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, **parents: str | None):
        return sub.add_parser(name, parents=_parents(**parents), help=summary,
                              description=description, epilog=_EXIT_CODES.format(
                                  diverged=_DIVERGED if name in ("train", "train-images") else ""))

    t = command("train", "train the VAE",
                "Train the VAE; writes model.pth (best by validation), last.pth, metrics.csv, "
                "loss.png and split.csv into the run folder, then fits the sampler on the "
                "training clips (sampler.pth: the prior over codes and the finishing of the "
                "decoder's output, as vae.py fit-sampler does). Under torchrun (torchrun "
                "--nproc_per_node N vae.py train --run-dir DIR ...) the N processes train one "
                "model with DistributedDataParallel, train.batch_size being the global batch, "
                "and rank 0 writes the run folder.",
                input_help="stage-4 folder of spectrograms (default: paths.spectrograms)",
                limit_help="train on at most N spectrograms, taken from every group (a smoke "
                           "test)",
                force_help="start over in a run folder that already holds a run (deletes its "
                           "model.pth, last.pth, metrics and samples once the new data and "
                           "model check out)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the run's last.pth exactly (model, optimiser, "
                        "scheduler, epoch, RNG)")
    g = command("generate", "sample new sounds",
                "Sample z from the run's sampler (sampler.pth), decode and finish the "
                "spectrogram (generate.*), undo the normalisation and run Griffin-Lim; writes "
                "samples/<group>_<k>.wav + .png and index.html.")
    g.add_argument("--group", action="append", default=None, metavar="NAME",
                   help="only these groups (repeatable; default: every group)")
    g.add_argument("--count", type=cli.int_at_least(1), default=None, metavar="N",
                   help="samples per group (default: generate.count)")
    r = command("reconstruct", "original vs reconstruction of held-out files",
                "Encode held-out files (the run's split.csv) and decode them again; writes "
                "samples/reconstruct/<group>/<id>_original|_reconstruction.wav + .png and "
                "index.html.")
    r.add_argument("--count", type=cli.int_at_least(1), default=None, metavar="N",
                   help="held-out files per group (default: generate.count)")
    i = command("interpolate", "walk the latent line between two files",
                "Encode two files and decode points on the line between them; writes "
                "samples/interpolate/<a>__<b>/<k>.wav + .png and index.html.")
    i.add_argument("a", type=Path, help="first spectrogram (.npy) or segment (.wav)")
    i.add_argument("b", type=Path, help="second spectrogram (.npy) or segment (.wav)")
    i.add_argument("--steps", type=cli.int_at_least(2, "both ends are included"), default=8,
                   help="points on the line, both ends included (default: 8)")
    e = command("evaluate", "metrics on the validation set",
                "Validation ELBO, log-spectral distance, spectral convergence after "
                "Griffin-Lim, KL per latent dimension and active units on the run's held-out "
                "files; and the quality of generate.eval_samples samples per group and of the "
                "reconstructions: group accuracy by a classifier fit on the run's real "
                "training clips (beside its accuracy on real held-out clips), Fréchet "
                "distance, diversity, nearest-training ratio, sharpness, on log-mel statistics "
                "and on a pretrained network's embedding (BirdNET V2.4; FAD), and PANNs FAD "
                "when detect.checkpoint exists -> metrics.json and index.html.",
                limit_help="use at most N held-out files")
    e.add_argument("--judge-dir", type=Path, default=None, metavar="DIR",
                   help="a stage-4 spectrogram folder (<group>/<id>.npy + normalizer.json) of "
                        "real recordings the model never trained on (e.g. stages 2-4 run on "
                        "another source's recordings with another paths.spectrograms): the "
                        "judges are also fit on these, which gives out-of-sample figures "
                        "(metrics.json quality.independent)")
    command("fit-sampler", "fit the sampler again, without training",
            "Fit what turns a code into a spectrogram to listen to on the run's training "
            "clips under its weights: the prior over each group's codes (train.prior_fit: kde, "
            "with train.kde_bandwidth, or gmm, with train.gmm_components; none: N(0, I)), "
            "each group's spread (generate.spread: fit) and the texture noise; writes "
            "sampler.pth beside model.pth with the settings it was fit under. Training does "
            "this at its end, and generate, reconstruct, interpolate and evaluate do it "
            "themselves (with a notice) when those settings changed. E.g. "
            "vae.py fit-sampler --set train.kde_bandwidth=0.5.")
    _image_commands(command)
    return p


def _image_commands(command) -> None:
    """The sound <-> image sub-commands (their model lives in <run>/images/)."""
    folder = "; the model is in <run>/images/ (--run-dir names the run folder)"
    t = command("train-images", "train the sound <-> image model",
                "Train one latent space for spectrograms and images (a product-of-experts VAE) "
                "on stage 4's pairs (each spectrogram and its video frame, same id), unpaired "
                "sounds and unpaired images; writes images/model.pth (best by validation), "
                "last.pth, metrics.csv and split.csv" + folder + ".",
                input_help="stage-4 folder: spectrograms, and images/ (default: "
                           "paths.spectrograms)",
                limit_help="train on at most N pairs (a smoke test)",
                force_help="start over in a folder that already holds a sound <-> image model")
    t.add_argument("--resume", action="store_true",
                   help="continue from images/last.pth (the epoch after the last finished one)")
    s = command("sound-to-image", "images from sounds",
                "Encode each sound alone (no group label) and decode images: for each FILE "
                "(anything ffmpeg reads: wav, mp3, an mp4's audio; its loudest segment-long "
                "window) -> images/samples/files/<name>/; without FILE, every held-out pair -> "
                "images/samples/val/<group>/<id>/ beside its true frame. Rebuilds "
                "images/index.html" + folder + ".",
                limit_help="without FILE: at most N held-out pairs")
    s.add_argument("files", nargs="*", type=Path, metavar="FILE", help="recordings")
    s.add_argument("--count", type=int, default=None, metavar="N",
                   help="images per sound (default: sound_image.count)")
    i = command("image-to-sound", "sounds from pictures",
                "Encode each picture alone and decode a spectrogram, then Griffin-Lim -> "
                "images/samples/from_images/<name>/" + folder + ".")
    i.add_argument("files", nargs="+", type=Path, metavar="FILE", help="pictures (jpg, png, ...)")
    p = command("sample-images", "a sound and its picture per group",
                "Draw z from each group's fitted code distribution and decode both halves -> "
                "images/samples/prior/<group>_<k>/" + folder + ".")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="samples per group (default: sound_image.count)")
    command("evaluate-images", "sound -> image metrics",
            "On the held-out pairs: sound -> image retrieval (R@1, R@5 among K, chance beside), "
            "group accuracy of images generated from the sounds (a classifier fit on real "
            "training frames; its accuracy on real held-out frames beside) and a Frechet "
            "distance on image features -> images/metrics.json" + folder + ".")


def run(args) -> int:
    config = cli.config_from_args(args, input_key="paths.spectrograms")
    run_dir = args.run.resolve() if args.run else config.paths.runs / config.train.name
    options = StageOptions(force=getattr(args, "force", False),
                               limit=getattr(args, "limit", None), progress=not args.quiet)
    if args.command == "train":
        from animalvae.sound import train
        from animalvae.training.loop import TrainingDiverged
        from animalvae.training.run_folder import LAST
        try:
            train.train(config, run_dir, resume=args.resume, options=options)
            _fit_sampler_after_training(config, run_dir)
        except TrainingDiverged as exc:
            print(f"vae.py: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            if (run_dir / LAST).is_file():
                hint = (f"{run_dir / LAST} holds the last finished epoch; continue with: "
                        "vae.py train --resume")
            else:
                hint = ("no epoch had finished, so there is nothing to resume; start again "
                        "with the same command")
            print(f"vae.py: {hint}", file=sys.stderr)
            raise
        return 0
    if args.command.endswith("images") or args.command in ("sound-to-image", "image-to-sound"):
        return _run_images(args, config, run_dir, options)
    from animalvae.sound import generate
    from animalvae.training.distributed import require_one_process
    require_one_process(f"vae.py {args.command}")
    if args.command == "generate":
        generate.generate(config, run_dir, groups=args.group, count=args.count, options=options)
    elif args.command == "reconstruct":
        generate.reconstruct(config, run_dir, count=args.count, options=options)
    elif args.command == "interpolate":
        generate.interpolate(config, run_dir, args.a, args.b, steps=args.steps, options=options)
    elif args.command == "fit-sampler":
        from animalvae.sound.sampler import refit_sampler
        refit_sampler(config, run_dir, generate.load_run_model(config, run_dir))
    else:
        generate.evaluate(config, run_dir, options=options, judge_dir=args.judge_dir)
    return 0


def _fit_sampler_after_training(config, run_dir: Path) -> None:
    """Fit the sampler of a finished training run, once (rank 0 under torchrun), unless it is
    newer than the weights (a --resume that had nothing left to train)."""
    from animalvae.training.distributed import rank_and_world
    from animalvae.training.run_folder import MODEL, SAMPLER
    sampler, model = run_dir / SAMPLER, run_dir / MODEL
    if rank_and_world()[0] != 0 or (sampler.is_file()
                                    and sampler.stat().st_mtime >= model.stat().st_mtime):
        return
    from animalvae.sound.generate import load_run_model
    from animalvae.sound.sampler import refit_sampler
    refit_sampler(config, run_dir, load_run_model(config, run_dir))


def _run_images(args, config, run_dir: Path, options) -> int:
    from animalvae.training.run_folder import IMAGE_RUN
    image_dir = run_dir / IMAGE_RUN
    if args.command == "train-images":
        from animalvae.image import train as train_images
        from animalvae.training.loop import TrainingDiverged
        try:
            train_images.train_images(config, image_dir, resume=args.resume, options=options)
        except TrainingDiverged as exc:
            print(f"vae.py: error: {exc}", file=sys.stderr)
            return 1
        return 0
    from animalvae.image import sound_to_image as sound_image
    if args.command == "sound-to-image":
        sound_image.sound_to_image(config, image_dir, args.files, count=args.count,
                                   options=options)
    elif args.command == "image-to-sound":
        sound_image.image_to_sound(config, image_dir, args.files, options=options)
    elif args.command == "sample-images":
        sound_image.sample_images(config, image_dir, count=args.count, options=options)
    else:
        sound_image.evaluate_images(config, image_dir, options=options)
    return 0


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
