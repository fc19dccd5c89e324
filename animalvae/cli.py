"""What the five root scripts share: the common flags, logging, and turning errors into exit codes.

A root script builds its parser with :func:`stage_parser`, adds its own flags, and hands a
``run(args) -> int`` function to :func:`main`, which loads nothing heavy until after parsing
(so ``--help`` is instant) and maps a :class:`ConfigError` to a clean message and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import Config, config_to_dict, load_config
from .errors import ConfigError
from .shards import parse_shard
from .stage import StageOptions

__all__ = ["stage_parser", "common_parent", "add_verbosity", "main", "config_from_args",
           "options_from_args", "int_at_least"]

log = logging.getLogger(__name__)

_EPILOG_COMMON = (
    "Every setting lives in config.yaml (see the comments there); --set changes one for this "
    "run, e.g. --set extract.min_seconds=2. Paths in the config file and in --set "
    "paths.*=... are relative to the config file; --input/--output are relative to the "
    "current directory. A rerun skips finished items; Ctrl-C (or SIGTERM, as Slurm sends) "
    "stops cleanly and the same command continues. Exit codes: 0 done, 1 every item failed "
    "(or a system error such as a full disk), 2 bad settings or input, 130 interrupted.")


_LIMIT_HELP = "process at most N items that still need work (a rerun continues)"
_WORKERS_HELP = "parallel workers; 0 = one per CPU core (default: from config)"
_FORCE_HELP = "redo items that are already done, skipped or failed for good"
_SHARD_HELP = ("only shard K of N (1 <= K <= N): the items whose id hashes to it, the same "
               "split in every run and on every machine; N processes (a Slurm job array, one "
               "per GPU) share one output folder, each writing manifest.shard-K-of-N.csv, and "
               "a later plain run merges them")


def common_parent(*, input_help: str | None, output_help: str | None,
                  limit_help: str | None = _LIMIT_HELP, workers_help: str | None = _WORKERS_HELP,
                  force_help: str | None = _FORCE_HELP, shard_help: str | None = None,
                  verbosity_defaults: bool = True) -> argparse.ArgumentParser:
    """A parent parser with the flags every script shares (used by sub-commands too).

    A ``*_help`` of None leaves that flag out (a sub-command that has no use for it); other
    text replaces its help. ``verbosity_defaults=False`` gives ``-v``/``-q`` no default, so
    that in a sub-command they do not overwrite the same flags given before the sub-command
    (the main parser then holds the defaults).
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--config", type=Path, default=None, metavar="PATH",
                   help="settings file (default: config.yaml next to this script)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.epochs=5 (repeatable; "
                        "the value is read as YAML and checked like the file)")
    if input_help:
        g.add_argument("--input", type=Path, default=None, metavar="PATH", help=input_help)
    if output_help:
        g.add_argument("--output", type=Path, default=None, metavar="DIR", help=output_help)
    if limit_help:
        g.add_argument("--limit", type=int_at_least(1), default=None, metavar="N",
                       help=limit_help)
    if workers_help:
        g.add_argument("--workers", type=int_at_least(0), default=None, metavar="N",
                       help=workers_help)
    if force_help:
        g.add_argument("--force", action="store_true", help=force_help)
    if shard_help:
        g.add_argument("--shard", type=parse_shard, default=None, metavar="K/N", help=shard_help)
    add_verbosity(g, defaults=verbosity_defaults)
    return p


def add_verbosity(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                  defaults: bool = True) -> None:
    """Add ``-v/--verbose`` and ``-q/--quiet`` (without defaults when ``defaults`` is False)."""
    parser.add_argument("-v", "--verbose", action="count",
                        default=0 if defaults else argparse.SUPPRESS,
                        help="more detail (per-item lines, the settings in effect)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        default=False if defaults else argparse.SUPPRESS,
                        help="only warnings, errors and the summary; no progress bar")


def stage_parser(prog: str, description: str, *, input_help: str | None,
                 output_help: str | None, epilog: str = "") -> argparse.ArgumentParser:
    """The parser of a one-stage script, with the common flags in place."""
    return argparse.ArgumentParser(
        prog=prog, description=description,
        epilog=(epilog + "\n\n" if epilog else "") + textwrap.fill(_EPILOG_COMMON, width=79),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parent(input_help=input_help, output_help=output_help,
                               shard_help=_SHARD_HELP)])


def int_at_least(least: int, meaning: str = "") -> Callable[[str], int]:
    """An argparse ``type`` for an integer flag that must be ``>= least``.

    ``meaning`` is added to the error, e.g. ``int_at_least(0, "0 = no check")``.
    """
    note = f" ({meaning})" if meaning else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} must be >= {least}{note}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid <name> value"
    return parse


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root logger for a script run (the package itself never does this)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if verbose
                                           else "%(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("matplotlib", "PIL", "numba", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tqdm and test capture swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (scancel, a time limit, preemption) stops a run the way Ctrl-C does: finished
    items are recorded and the output folder's lock is released."""
    on_ctrl_c = signal.getsignal(signal.SIGINT)
    if callable(on_ctrl_c):      # Python's, or a stage's own (stage 1 wakes its threads)
        on_ctrl_c(signal.SIGINT, frame)
    raise KeyboardInterrupt      # Ctrl-C is ignored (a background job): stop all the same


def main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
         argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, set up logging, call ``run(args)`` and map errors to exit codes.

    While ``run`` works, SIGTERM is handled as Ctrl-C (in the main thread only, where Python
    runs signal handlers).
    """
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_like_ctrl_c) if main_thread else None
    try:
        return run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s: error: %s", parser.prog, problem)
        return 2
    except KeyboardInterrupt:
        log.error("%s: interrupted; finished items are kept, rerun the same command to "
                  "continue", parser.prog)
        return 130
    except OSError as exc:  # a full disk, a folder we may not write: not a bug, not an item
        log.debug("traceback", exc_info=True)
        log.error("%s: error: %s (rerun with -v for details)", parser.prog, exc)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def config_from_args(args: argparse.Namespace, *, input_key: str | None = None,
                     output_key: str | None = None) -> Config:
    """Load the config named by ``--config``/``--set`` and apply ``--input``/``--output``.

    ``input_key``/``output_key`` name the ``paths.*`` fields the flags replace; paths given
    on the command line are relative to the current directory, not to the config file.
    """
    config = load_config(args.config, args.set)
    replaced = {}
    for flag, key in (("input", input_key), ("output", output_key)):
        value = getattr(args, flag, None)
        if value is not None and key:
            replaced[key.removeprefix("paths.")] = Path(value).expanduser().resolve()
    if replaced:
        config = dataclasses.replace(config, paths=dataclasses.replace(config.paths, **replaced))
    if input_key and output_key and \
            getattr(config.paths, input_key.removeprefix("paths.")) == \
            getattr(config.paths, output_key.removeprefix("paths.")):
        raise ConfigError(f"{output_key} and {input_key} are the same folder "
                          f"({getattr(config.paths, output_key.removeprefix('paths.'))}): a "
                          "stage must not write over its own input and manifest")
    if output_key:
        _check_output_folder(getattr(config.paths, output_key.removeprefix("paths.")),
                             flag="--output" if getattr(args, "output", None) else output_key)
    if getattr(args, "verbose", 0):
        import yaml
        log.debug("settings in effect (%s):\n%s", config.source,
                  yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return config


def _check_output_folder(folder: Path, *, flag: str) -> None:
    """Stop before any work when the output folder cannot be a folder we write into."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return
    if existing == folder and not folder.is_dir():
        raise ConfigError(f"{flag}={folder} is a file, not a folder")
    if existing != folder and not existing.is_dir():
        raise ConfigError(f"{flag}={folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"{flag}={folder}: no permission to write in {existing}")


def options_from_args(args: argparse.Namespace) -> StageOptions:
    """The :class:`StageOptions` given by the common flags."""
    return StageOptions(force=args.force, limit=args.limit, workers=args.workers,
                        progress=not args.quiet, shard=args.shard)
