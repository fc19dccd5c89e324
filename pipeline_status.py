#!/usr/bin/env python3
"""Where the run stands: per stage, items ok / skipped / failed / still waiting, and why.

Reads   every stage's manifest.csv (paths.clips, paths.audio, paths.detections,
        paths.spectrograms; shards' unmerged parts included), paths.vggsound_csv (what stage
        1 is asked for) and the training run's metrics.csv. Writes nothing: safe to run while
        the stages (or their shards) are running.
"""

import argparse
import sys
from pathlib import Path

from animalvae import cli


def build_parser():
    p = argparse.ArgumentParser(
        prog="pipeline_status.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="An item waits at a stage when the stage before has it ok (stage 1: the CSV "
               "selects it) and the stage has no row for it yet. Exit codes: 0 shown, 2 bad "
               "settings.",
        parents=[cli.common_parent(input_help=None, output_help=None, limit_help=None,
                                   workers_help=None, force_help=None)])
    p.add_argument("--by-group", action="store_true", help="one line per stage and group")
    p.add_argument("--reasons", type=cli.int_at_least(1), default=3, metavar="N",
                   help="the N commonest reasons per stage for skips and failures (default: 3)")
    p.add_argument("--run-dir", "--run", dest="run", type=Path, default=None, metavar="DIR",
                   help="training run folder (default: paths.runs/<train.name>; --run is the "
                        "same flag)")
    return p


def run(args) -> int:
    config = cli.config_from_args(args)
    from animalvae import status
    run_dir = args.run.resolve() if args.run else config.paths.runs / config.train.name
    print(status.report(config, run_dir=run_dir, by_group=args.by_group, reasons=args.reasons))
    return 0


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
