#!/usr/bin/env python3
"""Stage 1: VGGSound CSV -> the 10 s clip of every selected animal video, as .mp4 (yt-dlp).

Reads   paths.vggsound_csv (ytid,start_seconds,label,split; no header) and download.classes
        (groups of exact VGGSound labels).
Writes  paths.clips/<group>/<ytid>_<start:06d>.mp4 and paths.clips/manifest.csv.
"""

import sys
from pathlib import Path

from animalvae import cli

EPILOG = """\
Failures: transient ones (HTTP 429, 5xx, timeouts, connection resets) are retried with
backoff (download.retries, download.backoff_s) and again by the next run; permanent ones
(unavailable, private, removed, sign-in or bot check, no audio) are recorded with a reason
starting "permanent:" and only retried with --retry-failed. After
download.max_consecutive_rate_limits rate-limit answers in a row the run stops early with
exit code 1: wait, set download.cookies_file, use fewer --workers or a download.pause_s.
Get vggsound.csv from https://github.com/hche11/VGGSound (data/vggsound.csv)."""


def build_parser():
    p = cli.stage_parser(
        "download_video.py", __doc__, epilog=EPILOG,
        input_help="the VGGSound CSV file (default: paths.vggsound_csv)",
        output_help="folder for the clips (default: paths.clips)")
    g = p.add_argument_group("download options")
    g.add_argument("--dry-run", action="store_true",
                   help="parse and select rows, print per-group counts and malformed rows; "
                        "no network")
    g.add_argument("--from-dir", type=Path, default=None, metavar="DIR",
                   help="take clips you already have (<ytid>_<start:06d>.mp4 or "
                        "<ytid>_<start:06d>_<end:06d>.mp4, any sub-folder) from DIR by hard "
                        "link or copy instead of downloading; selected rows not found there "
                        "are listed and left for a run without --from-dir (no network)")
    g.add_argument("--retry-failed", action="store_true",
                   help="also retry videos that failed for good before (unavailable, private, "
                        "removed, sign-in or bot check, no audio)")
    return p


def run(args) -> int:
    config = cli.config_from_args(args, input_key="paths.vggsound_csv",
                                  output_key="paths.clips")
    if args.dry_run:
        from animalvae import download_plan
        the_plan = download_plan.plan(config, from_dir=args.from_dir)
        print(the_plan.report())
        the_plan.require_selection(dry_run=True)   # nothing selected: exit 2, as a real run
        return 0
    from animalvae import download
    return download.run(config, cli.options_from_args(args), from_dir=args.from_dir,
                        retry_failed=args.retry_failed)


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
