"""What a stage-1 run would do, without the network: rows parsed and selected, local clips found.

:func:`plan` reads ``paths.vggsound_csv``, selects the rows of ``download.classes`` and, for
``--from-dir``, indexes the clips a user already has. :meth:`Plan.report` is the ``--dry-run``
text (``download_video.py`` prints it); :meth:`Plan.warnings` are the lines a real run logs
before it starts.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import ConfigError
from .vggsound_csv import ParsedCsv, Row, clip_id, expand_classes, read_csv, select_rows

__all__ = ["Plan", "plan", "find_local_clips"]

_SHOWN = 5                 # malformed rows / missing ids named in messages

# Clips a user already has: VGGSound's "<ytid>_<start:06d>.mp4", also "..._<end:06d>.mp4".
_LOCAL_NAME_RE = re.compile(r"([A-Za-z0-9_-]{11})_(\d{1,7})(?:_\d{1,7})?\.[mM][pP]4")


@dataclass
class Plan:
    """What a run would do: the parsed CSV, the selected rows, and the local clips found.

    Attributes
    ----------
    csv : ParsedCsv
    groups : dict of str to list of str
        ``download.classes`` with ``@animals`` expanded.
    selected : list of (group, Row)
        In download order.
    splits : list of str
    max_per_class : int
    seed : int
    local : dict of str to Path, or None
        Clip id -> file under ``local_dir`` (``--from-dir`` only).
    local_dir : Path or None
    """

    csv: ParsedCsv
    groups: dict[str, list[str]]
    selected: list[tuple[str, Row]]
    splits: list[str]
    max_per_class: int
    seed: int
    local: dict[str, Path] | None = None
    local_dir: Path | None = None

    def counts(self) -> dict[tuple[str, str], Counter]:
        """Selected rows per (group, label), counted per split; every configured label listed."""
        table = {(g, label): Counter() for g, labels in self.groups.items() for label in labels}
        for group, row in self.selected:
            table[(group, row.label)][row.split] += 1
        return table

    def empty_labels(self) -> list[str]:
        """Configured labels with no row in the CSV at all (a truncated or wrong file?)."""
        present = {r.label for r in self.csv.rows}
        return [label for labels in self.groups.values() for label in labels
                if label not in present]

    def missing_local(self) -> list[str]:
        """Ids of selected clips not found under ``local_dir`` (empty without ``--from-dir``)."""
        if self.local is None:
            return []
        return [row.id for _, row in self.selected if row.id not in self.local]

    def warnings(self) -> list[str]:
        """One line each: malformed rows, labels without rows, selected clips not found locally."""
        csv_ = self.csv
        lines = []
        if csv_.malformed:
            shown = "; ".join(str(m) for m in csv_.malformed[:_SHOWN])
            lines.append(f"{csv_.path}: {len(csv_.malformed)} malformed row(s) ignored (see "
                         f"--dry-run), e.g. {shown}")
        if (empty := self.empty_labels()):
            lines.append(f"{csv_.path}: {_no_rows_message(empty)}")
        if (missing := self.missing_local()):
            lines.append(f"--from-dir: {len(missing)} of {len(self.selected)} selected clips are "
                         f"not under {self.local_dir} (e.g. {', '.join(missing[:_SHOWN])}); "
                         "they are left for a run without --from-dir")
        return lines

    def require_selection(self, *, dry_run: bool = False) -> None:
        """Raise :class:`ConfigError` when no row was selected (the CSV or the classes are
        wrong): a download, a ``--from-dir`` copy and a ``--dry-run`` (whose report is
        already printed, hence no pointer to it) all stop on it."""
        if not self.selected:
            see = "" if dry_run else "; see --dry-run"
            raise ConfigError(
                f"{self.csv.path}: no row matches download.classes with download.splits="
                f"{self.splits} ({len(self.csv.rows)} usable rows, {len(self.csv.malformed)} "
                f"malformed{see}): is it VGGSound's vggsound.csv?")

    def report(self) -> str:
        """The ``--dry-run`` text: per-group counts table and a few malformed rows."""
        csv_ = self.csv
        lines = [f"{csv_.path}: {len(csv_.rows)} usable rows"
                 + (" (after a header row)" if csv_.header else "")
                 + f", {len(csv_.malformed)} malformed, {csv_.duplicates} repeated ids ignored",
                 f"selected: {len(self.selected)} clips (splits {', '.join(self.splits)}; "
                 f"max_per_class {self.max_per_class or 'all'}; seed {self.seed})", ""]
        header = ["group", "label", *self.splits, "total"]
        body: list[list[Any]] = []
        counts = self.counts()
        grand: Counter = Counter()
        for group, labels in self.groups.items():
            subtotal: Counter = Counter()
            for label in labels:
                c = counts[(group, label)]
                subtotal.update(c)
                body.append([group, label, *(c[s] for s in self.splits), sum(c.values())])
            body.append([group, "(all)", *(subtotal[s] for s in self.splits),
                         sum(subtotal.values())])
            grand.update(subtotal)
        body.append(["total", "", *(grand[s] for s in self.splits), sum(grand.values())])
        lines += _table(header, body)
        if (empty := self.empty_labels()):
            lines += ["", _no_rows_message(empty)]
        if csv_.malformed:
            lines += ["", f"malformed rows ({len(csv_.malformed)}, first "
                          f"{min(_SHOWN, len(csv_.malformed))}):"]
            lines += [f"  {m}" for m in csv_.malformed[:_SHOWN]]
        if self.local is not None:
            found = len(self.selected) - len(self.missing_local())
            lines += ["", f"under {self.local_dir}: {found} of {len(self.selected)} selected "
                          "clips found"]
        return "\n".join(lines)


def _no_rows_message(labels: list[str]) -> str:
    shown = ", ".join(map(repr, labels[:_SHOWN])) + (", ..." if len(labels) > _SHOWN else "")
    return (f"{len(labels)} configured label(s) have no row in the CSV ({shown}): is it the "
            "whole vggsound.csv?")


def _table(header: list[str], body: list[list[Any]]) -> list[str]:
    rows = [header, *body]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]

    def fmt(r: list[Any]) -> str:
        return "  ".join(str(v).rjust(w) if isinstance(v, int) else str(v).ljust(w)
                         for v, w in zip(r, widths)).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)]


def find_local_clips(folder: Path) -> dict[str, Path]:
    """Clips under ``folder`` (any depth) named ``<ytid>_<start:06d>.mp4``, keyed by clip id.

    ``<ytid>_<start>_<end>.mp4`` is recognised too. Hidden folders are not searched; when an
    id occurs twice, the first file found is kept.

    Returns
    -------
    dict of str to Path
        Clip id -> absolute path.
    """
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            match = _LOCAL_NAME_RE.fullmatch(name)
            if match:
                found.setdefault(clip_id(match[1], int(match[2])), Path(root, name).resolve())
    return found


def plan(config: Config, *, from_dir: Path | None = None) -> Plan:
    """Parse the CSV, select the rows, and (with ``from_dir``) index the local clips.

    Parameters
    ----------
    config : Config
        ``paths.vggsound_csv`` and ``download.classes, splits, max_per_class, seed``.
    from_dir : Path or None
        Folder of clips the user already has (``--from-dir``).

    Returns
    -------
    Plan

    Raises
    ------
    ConfigError
        When the CSV (``paths.vggsound_csv``) is missing or unreadable, or ``from_dir`` is
        not a folder.
    """
    settings = config.download
    if from_dir is not None and not Path(from_dir).is_dir():
        raise ConfigError(f"--from-dir {from_dir} is not a folder")
    parsed = read_csv(config.paths.vggsound_csv)
    selected = select_rows(parsed.rows, settings.classes, splits=settings.splits,
                           max_per_class=settings.max_per_class, seed=settings.seed)
    local = find_local_clips(Path(from_dir)) if from_dir is not None else None
    return Plan(parsed, expand_classes(settings.classes), selected, list(settings.splits),
                settings.max_per_class, settings.seed, local,
                Path(from_dir).resolve() if from_dir is not None else None)
