#!/usr/bin/env python3
"""Stage 3: find the 3 s window most likely to be an animal sound, and the video frame showing it.

Scores every 10 ms frame with PANNs sound event detection (AudioSet's animal classes for the
clip's group; detect.backend: energy is a model-free fallback), picks the detect.segment_seconds
window with the highest mean score, and grabs the frame at the peak with OpenCV.

Reads   paths.audio/<group>/<id>.wav (stage 2) and, through its manifest, the stage 1 clip.
Writes  paths.detections/segments/<group>/<id>.wav, paths.detections/frames/<group>/<id>.jpg
        and paths.detections/manifest.csv.
"""

import sys

from animalvae import cli


def build_parser():
    p = cli.stage_parser(
        "animal_sound_detector.py", __doc__,
        input_help="folder of WAV files, <group>/<id>.wav (default: paths.audio)",
        output_help="folder for segments/ and frames/ (default: paths.detections)",
        epilog="The model runs in batches of detect.batch_size on detect.device; --workers sets "
               "the threads that read and write files meanwhile (default detect.workers; 0 = "
               "one per CPU core). Inputs longer than detect.max_seconds are scored on their "
               "first detect.max_seconds. Without the checkpoint, --set detect.backend=energy "
               "picks the loudest window instead (not animal-aware).")
    g = p.add_argument_group("detector options")
    g.add_argument("--download-models", action="store_true",
                   help="download the PANNs checkpoint (~327 MB) to detect.checkpoint and the "
                        "AudioSet label list, then exit (needs internet)")
    return p


def run(args) -> int:
    config = cli.config_from_args(args, input_key="paths.audio", output_key="paths.detections")
    if args.download_models:
        from animalvae import panns
        panns.download_models(config.detect.checkpoint, progress=not args.quiet)
        return 0
    from animalvae import detect_stage
    return detect_stage.run(config, cli.options_from_args(args)).exit_code


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
