"""One output folder, many processes: ``--shard K/N``, manifest parts, and the folder lock.

Stages 1-4 can split their items into N shards by a stable hash of the item id, so that N
processes (the tasks of a Slurm job array, one per GPU, ...) fill one output folder on a
shared filesystem:

- **Shards.** :meth:`Shard.owns` keeps the ids whose CRC-32 is ``K - 1`` modulo N: the same
  split on every machine and in every rerun, with no list to hand out.
- **Manifest parts.** A shard writes its rows to ``manifest.shard-K-of-N.csv`` beside
  ``manifest.csv`` and never touches another shard's file, so no row is lost when shards
  write at the same time (and no file lock is needed, which shared filesystems do not all
  honour). Readers merge ``manifest.csv`` and the parts, the most recently written last
  (:func:`manifest_parts`); a plain run folds the parts into ``manifest.csv`` and removes them.
- **The folder lock.** Every run leaves ``.lock`` (a plain run) or ``.lock.shard-K-of-N`` in
  the folder while it works, holding its host, process id, start time and command. A run
  refuses to start, with one line naming the holder, when a live run could be doing the same
  items: a plain run conflicts with every other run, a shard with a plain run, with the same
  shard, and with any shard of another N. A lock is not live when its process is gone (same
  host) or when it has not been refreshed for :data:`STALE_AFTER_S` (another host: a
  killed machine cannot clean up after itself); the holder refreshes it every
  :data:`HEARTBEAT_S`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["Shard", "parse_shard", "FolderLock", "manifest_parts", "part_name",
           "HEARTBEAT_S", "STALE_AFTER_S"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0          # the holder touches its lock file this often
STALE_AFTER_S = 15 * 60.0   # a lock not touched for this long is left by a dead run
_LOCK = ".lock"
_PART_RE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.csv$")
_LOCK_RE = re.compile(r"^\.lock(?:\.shard-(\d+)-of-(\d+))?$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, as ``--shard K/N`` writes it)."""

    index: int
    count: int

    def owns(self, item_id: str) -> bool:
        """Whether the item with this id belongs to this shard (stable across runs and hosts)."""
        return zlib.crc32(item_id.encode("utf-8")) % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> :class:`Shard`; an argparse ``type`` (1 <= K <= N).

    Raises
    ------
    argparse.ArgumentTypeError
        When ``text`` is not ``K/N`` with integers 1 <= K <= N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (e.g. 2/8: the second of 8 "
                                         "shards)")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be between 1 and N={count}")
    return Shard(index, count)


def part_name(shard: Shard) -> str:
    """The file name of a shard's manifest part, ``manifest.shard-K-of-N.csv``."""
    return f"manifest.shard-{shard.index}-of-{shard.count}.csv"


def manifest_parts(folder: Path) -> list[Path]:
    """The shard manifest parts in ``folder``, oldest write first (later ones win a merge)."""
    found = []
    for path in Path(folder).glob("manifest.shard-*.csv"):
        if _PART_RE.match(path.name):
            try:
                found.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:  # folded into manifest.csv by a plain run just now
                continue
    return [path for _, _, path in sorted(found)]


# --------------------------------------------------------------------------------------------
# The folder lock
# --------------------------------------------------------------------------------------------

def _lock_name(shard: Shard | None) -> str:
    return _LOCK if shard is None else f"{_LOCK}.shard-{shard.index}-of-{shard.count}"


def _conflicts(mine: Shard | None, theirs: Shard | None) -> bool:
    """Whether two runs could do the same items (and so must not run at once)."""
    if mine is None or theirs is None:
        return True
    return mine == theirs or mine.count != theirs.count


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@dataclass(frozen=True)
class _Holder:
    path: Path
    shard: Shard | None
    host: str
    pid: int
    started: float
    command: str

    def describe(self) -> str:
        since = datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc)
        what = "a plain run" if self.shard is None else f"shard {self.shard}"
        if self.pid < 0:  # see _read_holder: a lock file that cannot be read
            return f"{what} holds it (its lock file, written {since:%H:%M:%S} UTC, is unreadable)"
        return (f"{what} ({self.command}) holds it: pid {self.pid} on {self.host} since "
                f"{since:%Y-%m-%d %H:%M:%S} UTC")


def _read_holder(path: Path) -> _Holder | None:
    """The run that holds lock file ``path``; None when there is none or it is not live."""
    match = _LOCK_RE.match(path.name)
    if not match:
        return None
    shard = Shard(int(match[1]), int(match[2])) if match[1] else None
    try:
        touched = path.stat().st_mtime
        info = json.loads(path.read_text(encoding="utf-8"))
        holder = _Holder(path, shard, str(info["host"]), int(info["pid"]),
                         float(info["started"]), str(info.get("command", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # half-written by a run killed at that instant (or not ours): live only while fresh
        if time.time() - touched > STALE_AFTER_S:
            return None
        return _Holder(path, shard, "?", -1, touched, "unknown")
    if holder.host == socket.gethostname():
        return holder if _pid_alive(holder.pid) else None
    return None if time.time() - touched > STALE_AFTER_S else holder


class FolderLock:
    """Hold an output folder for one run (or one shard of it) while it works.

    Use as a context manager: entering takes the lock or raises :class:`ConfigError`;
    leaving removes the lock file. ``alone`` tells whether no other run (e.g. another shard)
    was working in the folder when the lock was taken, and ``taken_at`` when that was, as the
    folder's filesystem tells time (the lock file's mtime): a run alone may remove what
    interrupted runs left behind before that moment (their temporary files).

    Parameters
    ----------
    folder : Path
        The output folder (created if missing).
    shard : Shard or None
        This run's shard; None for a plain run over all items.

    Raises
    ------
    ConfigError
        On entering, when a live run holds the folder for items this run would do too.
    """

    def __init__(self, folder: Path, shard: Shard | None = None):
        self.folder = Path(folder)
        self.shard = shard
        self.path = self.folder / _lock_name(shard)
        self.alone = False
        self.taken_at = 0.0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._refuse(self._holders())     # a live holder of our own lock name is refused too
        self.path.unlink(missing_ok=True)  # so whatever is left there is a dead run's
        started = self._create()
        self.taken_at = self.path.stat().st_mtime
        # Two runs that started at the same instant both got this far: the earlier one wins.
        others = [h for h in self._holders() if h.path != self.path]
        me = (started, socket.gethostname(), os.getpid())
        earlier = [h for h in others if _conflicts(self.shard, h.shard)
                   and (h.started, h.host, h.pid) < me]
        if earlier:
            self.path.unlink(missing_ok=True)
            self._refuse(earlier)
        self.alone = not others
        self._beat = threading.Thread(target=self._heartbeat, name="lock-heartbeat",
                                      daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.path.unlink(missing_ok=True)

    def _holders(self) -> list[_Holder]:
        """Every live run with a lock file in the folder."""
        return [h for path in self.folder.glob(".lock*") if (h := _read_holder(path))]

    def _refuse(self, holders: list[_Holder]) -> None:
        for holder in holders:
            if _conflicts(self.shard, holder.shard):
                raise ConfigError(
                    f"{self.folder} is in use: {holder.describe()}; wait for it to finish "
                    f"(if that run is gone for good, delete {holder.path})")

    def _create(self) -> float:
        """Write this run's lock file (exclusively); its start time."""
        started = time.time()
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": started,
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # the same shard, started an instant ago
            self._refuse(self._holders())
            raise ConfigError(f"{self.folder} is in use by another run ({self.path}); try "
                              "again in a moment") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        return started

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError as exc:  # the folder went away or became read-only
                log.warning("cannot refresh the lock %s: %s", self.path, exc)
