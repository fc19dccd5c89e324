"""The sound <-> image model's data: pairs, unpaired sounds, unpaired images, and their split.

Stage 4 writes a spectrogram ``<group>/<id>.npy`` per segment and, beside them in
``images/<group>/<id>.png``, the segment's video frame under the same id plus the pictures of
``features.extra_image_dirs`` (:mod:`animalvae.images`). An id with both is a *pair*; a
spectrogram without an image (an audio-only recording) is an *unpaired sound*; an image
without a spectrogram (an ImageNet-style picture) is an *unpaired image*.

The pairs are split into ``train`` and ``val`` per group, fixed by ``train.seed``
(:func:`animalvae.training.dataset.split_items`: the same rule as the spectrogram VAE's); unpaired
items only train. The split is recorded in the run folder's ``split.csv``
(``id, group, split, sound, image``; ``split`` is ``train``, ``val``, ``sound`` or ``image``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..images import IMAGES, read_image
from ..spectrogram import SpectrogramSpec, load_spec
from ..stage import Item, atomic_path, list_items, read_manifest
from ..training.dataset import SpectrogramSet, split_items
from ..training.run_folder import SPLIT

__all__ = ["PairItems", "find_pairs", "write_pair_split", "read_pair_split", "ImageSet",
           "PairSet"]


@dataclass
class PairItems:
    """What the model trains and validates on. ``image`` paths ride in ``Item.upstream``."""

    train: list[Item]          # pairs (Item.source: the .npy; upstream["image"]: the .png)
    val: list[Item]            # held-out pairs
    sounds: list[Item]         # unpaired spectrograms
    images: list[Item]         # unpaired images (Item.source: the .png)


def _images(folder: Path, size: int) -> dict[str, Item]:
    """The ``ok`` rows of stage 4's image manifest, at ``size`` px, whose file exists."""
    found = {}
    for row in read_manifest(folder).values():
        path = folder / row.get("output", "")
        if (row.get("status") == "ok" and row.get("size") == f"{size}x{size}"
                and path.is_file()):
            found[row["id"]] = Item(row["id"], row["group"], path, row.get("label", ""))
    return found


def find_pairs(folder: Path, *, image_size: int, val_fraction: float, seed: int,
               limit: int | None = None) -> tuple[SpectrogramSpec, PairItems]:
    """Pairs, unpaired sounds and unpaired images in a stage-4 folder, with the pairs split.

    Parameters
    ----------
    folder : Path
        ``paths.spectrograms`` (``<group>/<id>.npy``, ``normalizer.json``, ``images/``).
    image_size : int
        Only images prepared at this size count.
    val_fraction, seed : float, int
        The split of the pairs (``train.val_fraction``, ``train.seed``).
    limit : int or None
        At most this many pairs (a smoke run); unpaired items are then left out.

    Raises
    ------
    ConfigError
        When the folder has no spectrograms, fewer than 2 pairs, or no group with 2 pairs
        (one is held out).
    """
    sounds = {it.id: it for it in list_items(folder, [".npy"], what="spectrogram")}
    spec = load_spec(folder)
    images = _images(Path(folder) / IMAGES, image_size)
    pairs = [Item(i, it.group, it.source, it.label, {"image": str(images[i].source)})
             for i, it in sounds.items() if i in images and images[i].group == it.group]
    if limit is not None:
        pairs = pairs[:limit]
    if len(pairs) < 2:
        raise ConfigError(
            f"{folder} has {len(pairs)} spectrogram(s) with a video frame at "
            f"{image_size} px in {Path(folder) / IMAGES}: the sound -> image model needs at "
            "least 2 pairs (run preprocess_audio_vae.py on stage 3's output, with the same "
            "features.image_size)")
    train, val = split_items(pairs, val_fraction=val_fraction, seed=seed)
    if not val:
        raise ConfigError(f"no group in {folder} has 2 or more pairs, so none can be held "
                          "out for validation; add data")
    extra_sounds = [] if limit is not None else [it for i, it in sounds.items()
                                                 if i not in images]
    extra_images = [] if limit is not None else [it for i, it in images.items()
                                                 if i not in sounds]
    return spec, PairItems(train, val, extra_sounds, extra_images)


def write_pair_split(path: Path, items: PairItems) -> None:
    """Record ``items`` as ``split.csv`` (``id, group, split, sound, image``), atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "group", "split", "sound", "image"])
        for name, part in (("train", items.train), ("val", items.val)):
            for it in part:
                writer.writerow([it.id, it.group, name, str(Path(it.source).resolve()),
                                 str(Path(it.upstream["image"]).resolve())])
        for it in items.sounds:
            writer.writerow([it.id, it.group, "sound", str(Path(it.source).resolve()), ""])
        for it in items.images:
            writer.writerow([it.id, it.group, "image", "", str(Path(it.source).resolve())])


def read_pair_split(run_dir: Path) -> PairItems:
    """The items recorded in ``run_dir/split.csv``.

    Raises
    ------
    ConfigError
        When the file is missing or malformed, or a file it names is gone.
    """
    path = Path(run_dir) / SPLIT
    if not path.is_file():
        raise ConfigError(f"{path} not found: train the model first (vae.py train-images)")
    parts: dict[str, list[Item]] = {"train": [], "val": [], "sound": [], "image": []}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            split = row.get("split")
            if split not in parts or not row.get("id"):
                raise ConfigError(f"{path}: malformed row {row}; retrain with --force")
            files = [row[k] for k in ("sound", "image") if row.get(k)]
            missing = [f for f in files if not Path(f).is_file()]
            if missing:
                raise ConfigError(f"{missing[0]} (listed in {path}) is missing: restore "
                                  "stage 4's output, or retrain with --force")
            source = row["sound"] if split != "image" else row["image"]
            parts[split].append(Item(row["id"], row["group"], Path(source), row["group"],
                                     {"image": row.get("image", "")}))
    return PairItems(parts["train"], parts["val"], parts["sound"], parts["image"])


class ImageSet:
    """Prepared images in memory as uint8 (N, 3, S, S), with their group indices."""

    def __init__(self, paths: list[Path], labels: list[int], size: int):
        array = np.stack([read_image(p, size) for p in paths]) if paths else \
            np.zeros((0, size, size, 3), np.uint8)
        self.x = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()     # (N, 3, S, S)
        self.y = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """Rows ``idx`` as float32 (B, 3, S, S) in [0, 1] and (B,) labels on ``device``."""
        return self.x[idx].to(device).float() / 255.0, self.y[idx].to(device)


class PairSet:
    """Spectrograms and their images, row by row (``items``: pairs from :func:`find_pairs`)."""

    def __init__(self, items: list[Item], groups: list[str], shape: tuple[int, int],
                 size: int, *, progress: bool = False):
        self.items = list(items)
        self.sounds = SpectrogramSet(self.items, groups, shape, progress=progress)
        self.images = ImageSet([Path(it.upstream["image"]) for it in self.items],
                               [groups.index(it.group) for it in self.items], size)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 1, H, W) spectrograms, (B, 3, S, S) images, (B,) group indices."""
        sound, y = self.sounds.batch(idx, device)
        image, _ = self.images.batch(idx, device)
        return sound, image, y
