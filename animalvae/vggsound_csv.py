"""Reading ``vggsound.csv`` and choosing the rows to fetch: pure parsing and selection.

The file has four columns, ``ytid,start_seconds,label,split``, usually no header, and quotes
only labels that contain a comma (``"bird chirping, tweeting"``). Rows that cannot be used
(wrong column count, a start that is not a whole number of seconds, an id that is not 11
characters of ``[A-Za-z0-9_-]``, a split other than train/test) are collected with their line
numbers and never reach a file name, a URL or a command line. Many real ids start with ``-``.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .vggsound import ALL_ANIMALS, ANIMAL_LABELS

__all__ = ["Row", "Malformed", "ParsedCsv", "read_csv", "parse_csv", "clip_id", "is_ytid",
           "expand_classes", "select_rows", "SPLITS", "CSV_SOURCE"]

SPLITS = ("train", "test")
#: Where users get the file (the dataset's own download page is gone).
CSV_SOURCE = "https://github.com/hche11/VGGSound (file data/vggsound.csv)"

_YTID_RE = re.compile(r"[A-Za-z0-9_-]{11}")
# Whole seconds; "30.0" too, as a spreadsheet or pandas round trip may write it.
_START_RE = re.compile(r"(\d{1,7})(?:\.0*)?")
# A header row names its columns: the second field is a word, not a number.
_HEADER_RE = re.compile(r"[A-Za-z_ #/-]+")
_SHOWN_CHARS = 80


def is_ytid(text: str) -> bool:
    """Whether ``text`` is a YouTube id: exactly 11 characters of ``[A-Za-z0-9_-]``."""
    return _YTID_RE.fullmatch(text) is not None


def clip_id(ytid: str, start_s: int) -> str:
    """VGGSound's clip name, ``<ytid>_<start:06d>`` (e.g. ``---g-f_I2yQ_000001``)."""
    return f"{ytid}_{start_s:06d}"


@dataclass(frozen=True)
class Row:
    """One usable CSV row; ``line`` is its 1-based line number in the file."""

    ytid: str
    start_s: int
    label: str
    split: str
    line: int = 0

    @property
    def id(self) -> str:
        return clip_id(self.ytid, self.start_s)


@dataclass(frozen=True)
class Malformed:
    """A row that was left out: where, why, and (the start of) what it said."""

    line: int
    reason: str
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text!r}"


@dataclass
class ParsedCsv:
    """The usable rows of a VGGSound CSV (first occurrence of each clip id), and the rest."""

    rows: list[Row] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    duplicates: int = 0
    header: bool = False
    path: Path | None = None


def read_csv(path: Path) -> ParsedCsv:
    """Parse the VGGSound CSV file at ``path``.

    Parameters
    ----------
    path : Path
        ``vggsound.csv`` or a user's copy of it (LF or CRLF, optional header, UTF-8).

    Returns
    -------
    ParsedCsv

    Raises
    ------
    ConfigError
        When the file does not exist, is a folder or cannot be read; the message says where
        to get it.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"paths.vggsound_csv={path} is a folder: give the CSV file itself "
                          "(vggsound.csv)")
    if not path.is_file():
        raise ConfigError(
            f"paths.vggsound_csv={path} not found: download vggsound.csv from {CSV_SOURCE} "
            "and put it there, or pass --input PATH")
    try:
        # utf-8-sig drops a byte-order mark; a stray bad byte must not stop 199k good rows.
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            parsed = parse_csv(fh)
    except OSError as exc:
        raise ConfigError(f"paths.vggsound_csv={path} cannot be read ({exc.strerror})") from None
    parsed.path = path
    return parsed


def parse_csv(lines: Iterable[str] | str) -> ParsedCsv:
    """Parse VGGSound CSV text into usable rows and malformed ones.

    Parameters
    ----------
    lines : iterable of str, or str
        The file's lines as read with ``newline=""`` (so CRLF and quoted fields parse), or
        the whole text.

    Returns
    -------
    ParsedCsv
        Rows in file order; blank lines are ignored, a first row whose second field is a
        word (``start_seconds``) is taken as a header, a repeated clip id keeps its first row.
    """
    if isinstance(lines, str):
        lines = io.StringIO(lines, newline="")
    reader = csv.reader(lines)
    out = ParsedCsv()
    seen: set[str] = set()
    first = True
    while True:
        line = reader.line_num + 1  # where the row starts (an open quote may span lines)
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. an unterminated quote swallowing a huge field
            out.malformed.append(Malformed(line, f"not CSV ({exc})", ""))
            continue
        if not fields or all(not f.strip() for f in fields):
            continue
        if first:
            first = False
            if len(fields) == 4 and _HEADER_RE.fullmatch(fields[1].strip()):
                out.header = True
                continue
        row = _parse_row(fields, line)
        if isinstance(row, Malformed):
            out.malformed.append(row)
        elif row.id in seen:
            out.duplicates += 1
        else:
            seen.add(row.id)
            out.rows.append(row)
    return out


def _parse_row(fields: list[str], line: int) -> Row | Malformed:
    text = ",".join(fields)
    text = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 1] + "…"
    if len(fields) != 4:
        return Malformed(line, f"expected 4 columns (ytid,start_seconds,label,split), "
                               f"got {len(fields)}", text)
    ytid, start, label, split = (f.strip() for f in fields)
    if not is_ytid(ytid):
        return Malformed(line, "id is not 11 characters of A-Z a-z 0-9 _ -", text)
    match = _START_RE.fullmatch(start)
    if match is None:
        return Malformed(line, "start_seconds is not a whole number of seconds", text)
    if not label:
        return Malformed(line, "empty label", text)
    if split.lower() not in SPLITS:
        return Malformed(line, "split is not train or test", text)
    return Row(ytid, int(match[1]), label, split.lower(), line)


def expand_classes(classes: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each group's labels, with the ``@animals`` shorthand replaced by the 74 animal labels.

    Parameters
    ----------
    classes : mapping of str to list of str
        ``download.classes``: group name -> exact VGGSound labels (or ``@animals``).

    Returns
    -------
    dict of str to list of str
        Labels in the given order, without repeats inside a group.
    """
    groups: dict[str, list[str]] = {}
    for group, labels in classes.items():
        expanded: list[str] = []
        for label in labels:
            expanded += ANIMAL_LABELS if label == ALL_ANIMALS else [label]
        groups[group] = list(dict.fromkeys(expanded))
    return groups


def select_rows(rows: Iterable[Row], classes: Mapping[str, Sequence[str]], *,
                splits: Sequence[str] = SPLITS, max_per_class: int = 0,
                seed: int = 0) -> list[tuple[str, Row]]:
    """The rows to fetch, each with its group, in a seeded random order.

    Parameters
    ----------
    rows : iterable of Row
    classes : mapping of str to list of str
        ``download.classes`` (``@animals`` allowed); a label belongs to one group (the
        config check ensures it; here the first group naming it wins).
    splits : sequence of {"train", "test"}
    max_per_class : int, >= 0
        At most this many rows per VGGSound label, chosen at random; 0 = all.
    seed : int
        Seed of the shuffle. The order does not depend on the CSV's row order, so a re-sorted
        copy of the file gives the same selection; CSV order would hammer one id prefix.

    Returns
    -------
    list of (group, Row)
    """
    label_group: dict[str, str] = {}
    for group, labels in expand_classes(classes).items():
        for label in labels:
            label_group.setdefault(label, group)
    wanted = set(splits)
    chosen = sorted((r for r in rows if r.label in label_group and r.split in wanted),
                    key=lambda r: r.id)
    random.Random(seed).shuffle(chosen)
    if max_per_class > 0:
        taken: dict[str, int] = {}
        capped = []
        for row in chosen:
            if taken.get(row.label, 0) < max_per_class:
                taken[row.label] = taken.get(row.label, 0) + 1
                capped.append(row)
        chosen = capped
    return [(label_group[r.label], r) for r in chosen]
