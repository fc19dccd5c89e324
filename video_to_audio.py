#!/usr/bin/env python3
"""Stage 2: video clips (.mp4) -> mono 16-bit WAV at extract.sample_rate, resampled once by ffmpeg.

Reads   paths.clips/<group>/<id>.mp4 (also .mkv/.webm/.mov; stage 1's folder and manifest, or
        any folder of clips with one sub-folder per group), plus extract.extra_audio_dirs
        (your own recordings, <dir>/<group>/<id>.wav|mp3|flac|ogg|m4a).
Writes  paths.audio/<group>/<id>.wav and paths.audio/manifest.csv.
"""

import sys

from animalvae import cli


def build_parser():
    return cli.stage_parser(
        "video_to_audio.py", __doc__,
        input_help="folder of clips, <group>/<id>.mp4|mkv|webm|mov (default: paths.clips)",
        output_help="folder for the WAV files (default: paths.audio)")


def run(args) -> int:
    config = cli.config_from_args(args, input_key="paths.clips", output_key="paths.audio")
    from animalvae import extract
    return extract.run(config, cli.options_from_args(args)).exit_code


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
