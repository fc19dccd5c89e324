"""The training data: finding the stage-4 arrays, the held-out split, loading, batching.

Reads a stage-4 folder (``paths.spectrograms``: ``<group>/<id>.npy`` + ``normalizer.json``).
The split into ``train`` and ``val`` is made per group, fixed by ``train.seed``, and recorded
in the run folder's ``split.csv``, so ``--resume``, ``reconstruct`` and ``evaluate`` see the
same files. :class:`SpectrogramSet` holds the arrays in memory (float16) when they fit and
reads them per batch otherwise.

The order of the data is a pure function of (seed, epoch) (:func:`epoch_order`), the same in
every process under torchrun; :mod:`animalvae.training.distributed` gives each rank its share of
every batch.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..spectrogram import SpectrogramSpec, load_spec
from ..stage import Item, atomic_path, list_items
from .run_folder import SPLIT

__all__ = ["SpectrogramSet", "find_spectrograms", "split_items", "write_split", "read_split",
           "require_sources", "read_array", "iter_batches", "epoch_order", "first_per_group",
           "SPLIT"]

log = logging.getLogger(__name__)

_MEMORY_SHARE = 0.5         # hold the data in memory when it needs less than this share
_MEMINFO = "/proc/meminfo"  # Linux; elsewhere _available_bytes falls back to sysconf


# --------------------------------------------------------------------------------------------
# Order and batches
# --------------------------------------------------------------------------------------------

def epoch_order(n: int, *, seed: int, epoch: int) -> Tensor:
    """The shuffled indices of ``epoch``: a function of (seed, epoch) only.

    Not a stateful sampler, so resuming needs no sampler state, and every rank under torchrun
    draws the same order (each then takes its share of every batch).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def first_per_group(groups: Sequence[str], n: int) -> list[int]:
    """Positions of the first ``n`` entries of each group in ``groups``, group by group (in
    the order the groups first appear).

    Examples
    --------
    >>> first_per_group(["cats", "dogs", "cats", "cats", "dogs"], 2)
    [0, 2, 1, 4]
    """
    by_group: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        by_group.setdefault(group, []).append(i)
    return [i for members in by_group.values() for i in members[:n]]


def iter_batches(n: int, batch_size: int) -> Iterator[Tensor]:
    """Index tensors ``[0, b), [b, 2b), ...`` covering ``range(n)`` in order."""
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(start + batch_size, n))


# --------------------------------------------------------------------------------------------
# Files: finding, splitting, reading
# --------------------------------------------------------------------------------------------

def split_items(items: Sequence[Item], *, val_fraction: float,
                seed: int) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into (train, val), per group, reproducibly.

    Each group is shuffled with its own seed (``train.seed`` and the group name, so adding a
    group leaves the others' splits alone) and ``round(val_fraction * n)`` of it, at least 1
    and at most ``n - 1``, is held out; a group with one file goes to training only.
    """
    by_group: dict[str, list[Item]] = {}
    for item in sorted(items, key=lambda it: (it.group, it.id)):
        by_group.setdefault(item.group, []).append(item)
    train, val = [], []
    for group, members in by_group.items():
        rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
        order = rng.permutation(len(members))
        n_val = min(max(round(val_fraction * len(members)), 1), len(members) - 1)
        val += [members[i] for i in sorted(order[:n_val])]
        train += [members[i] for i in sorted(order[n_val:])]
    return train, val


def _limit_items(items: list[Item], limit: int) -> list[Item]:
    """The first ``limit`` items, taken round-robin over groups so a smoke run keeps them all."""
    by_group: dict[str, list[Item]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item)
    picked: list[Item] = []
    queues = [iter(v) for v in by_group.values()]
    while len(picked) < limit and queues:
        for queue in list(queues):
            item = next(queue, None)
            if item is None:
                queues.remove(queue)
            elif len(picked) < limit:
                picked.append(item)
    return picked


def find_spectrograms(folder: Path, *,
                      limit: int | None = None) -> tuple[SpectrogramSpec, list[Item]]:
    """The stage-4 spectrograms in ``folder`` and the spec they were made with.

    Parameters
    ----------
    folder : Path
        A stage-4 output folder (``<group>/<id>.npy`` + ``normalizer.json``).
    limit : int or None
        At most this many files, taken round-robin over groups (a smoke run keeps them all).

    Raises
    ------
    ConfigError
        When ``normalizer.json`` is missing or fewer than 2 files are found (one is held out).
    """
    items = list_items(folder, [".npy"], what="spectrogram")
    spec = load_spec(folder)
    if limit is not None:
        items = _limit_items(items, limit)
    if len(items) < 2:
        raise ConfigError(f"{folder} has {len(items)} spectrogram(s): training needs at least 2 "
                          "(one is held out for validation)")
    return spec, items


def write_split(path: Path, train: list[Item], val: list[Item]) -> None:
    """Record the split as ``path`` (``split.csv``: ``id, group, split, path``), atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "group", "split", "path"])
        for name, part in (("train", train), ("val", val)):
            for item in part:
                writer.writerow([item.id, item.group, name, str(Path(item.source).resolve())])


def read_split(run_dir: Path) -> tuple[list[Item], list[Item]]:
    """The (train, val) items recorded in ``run_dir/split.csv``.

    Raises
    ------
    ConfigError
        When the file is missing or malformed.
    """
    path = Path(run_dir) / SPLIT
    if not path.is_file():
        raise ConfigError(f"{path} not found: this run folder was not made by vae.py train")
    parts: dict[str, list[Item]] = {"train": [], "val": []}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("split") not in parts or not row.get("id") or not row.get("path"):
                raise ConfigError(f"{path}: malformed row {row}; retrain with --force")
            parts[row["split"]].append(Item(row["id"], row["group"], Path(row["path"]),
                                            row["group"]))
    return parts["train"], parts["val"]


def require_sources(items: Sequence[Item], run_dir: Path, *, role: str, why: str) -> None:
    """Raise a one-line ConfigError naming the first of ``items`` whose spectrogram is gone.

    ``role`` says where ``split.csv`` lists them (``held out``, ``a training file``) and
    ``why`` what the caller needs them for.
    """
    missing = [it for it in items if not Path(it.source).is_file()]
    if missing:
        raise ConfigError(f"{missing[0].source} ({role} in {Path(run_dir) / SPLIT}) is missing, "
                          f"and {len(missing) - 1} more: {why}")


def _available_bytes() -> int | None:
    """Memory that can be had without swapping, in bytes (None when unknown).

    Linux's ``MemAvailable`` counts the page cache that can be dropped; ``SC_AVPHYS_PAGES``
    (the fallback elsewhere) counts free pages only, which on a busy machine is a fraction.
    """
    try:
        with open(_MEMINFO, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024           # the file says kB
    except (OSError, ValueError, IndexError):  # not Linux, or an old kernel
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def read_array(path: Path, shape: tuple[int, int], *, mmap: bool = False) -> np.ndarray:
    """One stored spectrogram, checked: (n_bins, n_frames), finite (ConfigError naming it)."""
    try:
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it as a .npy array ({exc}); rerun "
                          "preprocess_audio_vae.py with --force") from None
    if a.shape != shape:
        raise ConfigError(f"{path} has shape {a.shape}, but the model's spectrograms are "
                          f"{shape}: the data and the model come from different features "
                          "settings (rerun preprocess_audio_vae.py, or train a new model)")
    if not mmap and not np.isfinite(a).all():
        raise ConfigError(f"{path} holds NaN or Inf values; rerun preprocess_audio_vae.py "
                          "with --force")
    return a


class SpectrogramSet:
    """Spectrograms and their group indices; in memory (float16) when they fit, else on disk.

    Parameters
    ----------
    items : list of Item
        Their ``source`` is a ``.npy`` of shape ``shape``.
    groups : list of str
        Group names; an item's label is its group's index in this list.
    shape : tuple of int
        ``(n_bins, n_frames)``.
    progress : bool
        Show a progress bar while loading.

    Raises
    ------
    ConfigError
        When a file is unreadable, of the wrong shape, or not finite.
    """

    def __init__(self, items: Sequence[Item], groups: Sequence[str], shape: tuple[int, int], *,
                 progress: bool = False):
        from tqdm.auto import tqdm

        self.items = list(items)
        self.shape = tuple(shape)
        self.paths = [Path(it.source) for it in self.items]
        self.y = torch.tensor([list(groups).index(it.group) for it in self.items],
                              dtype=torch.long)                          # (N,)
        need = len(self.items) * math.prod(self.shape) * 2
        avail = _available_bytes()
        self.x: Tensor | None = None
        if avail is None or need < _MEMORY_SHARE * avail:
            x = torch.empty(len(self.items), 1, *self.shape, dtype=torch.float16)  # (N, 1, H, W)
            for i, path in enumerate(tqdm(self.paths, desc="loading", unit="file",
                                          disable=not progress, leave=False)):
                x[i, 0] = torch.from_numpy(read_array(path, self.shape).astype(np.float16))
            self.x = x
        else:
            log.info("%d spectrograms need %.1f GB, more than half the free memory: reading "
                     "them from disk per batch", len(self.items), need / 1e9)
            for path in self.paths:
                read_array(path, self.shape, mmap=True)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """Rows ``idx`` as float32 ``(B, 1, H, W)`` in [0, 1] and ``(B,)`` labels on ``device``."""
        if self.x is not None:
            x = self.x[idx]
        else:
            x = torch.stack([torch.from_numpy(
                read_array(self.paths[i], self.shape).astype(np.float32))[None]
                for i in idx.tolist()])
        return (x.to(device, non_blocking=True).float(),
                self.y[idx].to(device, non_blocking=True))
