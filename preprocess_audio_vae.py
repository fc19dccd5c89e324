#!/usr/bin/env python3
"""Stage 4: 3 s segments -> normalised, invertible spectrograms (.npy) for the VAE.

Reads   the segments listed in paths.detections/manifest.csv (stage 3), or any folder of WAV
        files with one sub-folder per group (--input DIR).
Writes  paths.spectrograms/<group>/<id>.npy (values in [0, 1], shape in features.*),
        normalizer.json (how to undo the scaling), manifest.csv and preview.png; and each
        segment's video frame (plus features.extra_image_dirs) as
        paths.spectrograms/images/<group>/<id>.png, features.image_size square, RGB.
"""

import sys

from animalvae import cli


def build_parser():
    p = cli.stage_parser(
        "preprocess_audio_vae.py", __doc__,
        input_help="stage 3 folder, or any folder of <group>/<id>.wav (default: paths.detections)",
        output_help="folder for the spectrograms (default: paths.spectrograms)")
    g = p.add_argument_group("preprocess options")
    g.add_argument("--check", type=cli.int_at_least(0, "0 = no check"), default=0, metavar="N",
                   help="after the run, invert N spectrograms with Griffin-Lim and print the "
                        "median spectral convergence (lower is better; 0 = skip)")
    return p


def run(args) -> int:
    config = cli.config_from_args(args, input_key="paths.detections",
                                  output_key="paths.spectrograms")
    from animalvae import features
    summary = features.run(config, cli.options_from_args(args), check=args.check)
    if summary.median_convergence is not None:
        print(f"round-trip check: median spectral convergence {summary.median_convergence:.3f} "
              f"over {len(summary.convergence)} segment(s) (lower is better)")
    return summary.exit_code


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
