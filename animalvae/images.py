"""Stage 4, image half: video frames and your own pictures -> square RGB images for the
sound -> image model.

Reads every frame stage 3 paired with a segment (the ``frame`` column of
``paths.detections/manifest.csv``; the item keeps the segment's id) and the pictures in
``features.extra_image_dirs`` (``<dir>/<group>/*.jpg|jpeg|png|webp|bmp``, like ImageNet's
class folders; the id is the file name's stem) as *unpaired* images. Writes
``paths.spectrograms/images/<group>/<id>.png``: the picture centre-cropped to a square and
resized (OpenCV, area interpolation) to ``features.image_size`` pixels, 8-bit RGB, with a
``manifest.csv`` there (columns ``paired``, ``width``, ``height``, ``mode`` (the picture's own),
``converted``, ``size``). A segment without a frame (an audio-only recording) simply has no
image: it trains as unpaired sound.

Converted, and said so in the ``converted`` column (ImageNet, where the original authors took
their pictures, holds both kinds): grayscale (``L``, ``LA``, ``1``) to three equal channels;
CMYK through its embedded ICC profile to sRGB (Pillow's ImageCms, perceptual intent), or, with
no usable profile, by Pillow's plain formula (``R = 255 - min(255, C + K)``, ...). Colour
modes (``RGB``, ``RGBA``, palette) become RGB as they are.

What is refused, each as a ``failed`` row with a one-line reason (nothing else is lost):
unreadable or corrupt files, truncated files, 16-bit or float images (their range is not
known, so any scaling to 8 bits would be a guess), pictures smaller than :data:`MIN_SIDE`
pixels on a side, and pictures of more than :data:`MAX_PIXELS` pixels (decoding them would
take gigabytes; the header is read first, so a 20000 x 20000 file costs nothing).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import ConfigError, ItemFailed
from .stage import Item, Stage, StageOptions, Summary, atomic_path, read_manifest, run_stage

__all__ = ["ImagesStage", "load_image", "load_picture", "square_resize", "list_image_items",
           "run", "read_image", "write_png",
           "IMAGES", "IMAGE_EXTENSIONS", "MIN_SIDE", "MAX_PIXELS"]

log = logging.getLogger(__name__)

#: Sub-folder of ``paths.spectrograms`` that holds the prepared images and their manifest.
IMAGES = "images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: Pictures with a shorter side are refused: nothing of the scene is left in them.
MIN_SIDE = 16
#: Pictures with more pixels are refused before decoding (8-bit RGB: 150 MB at this size).
MAX_PIXELS = 50_000_000
_COLOUR_MODES = {"RGB", "RGBA", "P", "PA", "RGBX"}      # converted to RGB without loss of hue
_GRAY_MODES = {"L", "LA", "1", "La"}


def _mode_problem(mode: str, rawmode: str) -> str | None:
    """Why an image of this PIL mode (and tile raw mode) is refused, or None."""
    if mode in _GRAY_MODES or mode == "CMYK":
        return None
    if mode.startswith("I") or mode == "F" or ";16" in rawmode or rawmode.endswith("16B"):
        return (f"16-bit or float image (mode {mode}{', ' + rawmode if rawmode else ''}): "
                "save it as 8-bit RGB")
    if mode not in _COLOUR_MODES:
        return f"unsupported image mode {mode}"
    return None


def load_image(path: Path) -> np.ndarray:
    """Read one picture as 8-bit RGB (:func:`load_picture` without the conversion note)."""
    return load_picture(path)[0]


def load_picture(path: Path) -> tuple[np.ndarray, str, str]:
    """Read one picture as 8-bit RGB, converting or refusing as :mod:`animalvae.images` lists.

    Parameters
    ----------
    path : Path

    Returns
    -------
    rgb : np.ndarray [shape=(height, width, 3), dtype=uint8]
    mode : str
        The picture's own PIL mode (``RGB``, ``L``, ``CMYK``, ...).
    converted : str
        How it became RGB: ``""`` (it was colour), ``grayscale to 3 equal channels``,
        ``CMYK via its ICC profile`` or ``CMYK without a profile (Pillow's formula)``.

    Raises
    ------
    ItemFailed
        With a one-line reason: unreadable, corrupt, truncated, 16-bit or float, too small
        or too large.
    """
    image = _open(path)
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ItemFailed(f"too large ({width}x{height} px = {width * height / 1e6:.0f} "
                             f"megapixels; at most {MAX_PIXELS / 1e6:.0f})")
        if min(width, height) < MIN_SIDE:
            raise ItemFailed(f"too small ({width}x{height} px; at least {MIN_SIDE} px a side)")
        rawmode = image.tile[0][3][0] if image.tile and isinstance(image.tile[0][3], tuple) \
            else (image.tile[0][3] if image.tile else "")
        if problem := _mode_problem(image.mode, str(rawmode or "")):
            raise ItemFailed(problem)
        try:
            image.load()           # a truncated file raises here (never padded with grey)
        except (OSError, SyntaxError, ValueError) as exc:
            text = " ".join(str(exc).split())
            kind = "truncated image" if "truncated" in text else "corrupt image"
            raise ItemFailed(f"{kind} ({text[:120]})") from None
        mode = image.mode
        rgb, converted = _to_rgb(image)
    return np.asarray(rgb, dtype=np.uint8), mode, converted


def _open(path: Path):
    """``PIL.Image.open`` with its failures as one-line ItemFailed reasons (header only)."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise ItemFailed(f"missing: {path} is not a file")
    try:
        with warnings.catch_warnings():
            # PIL warns, then raises DecompressionBombError well above MAX_PIXELS; the
            # header alone gives the size, which is checked before any decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError:
        raise ItemFailed("not an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:   # PIL's parsers raise these on junk
        raise ItemFailed(f"corrupt image ({' '.join(str(exc).split())[:120]})") from None
    except Image.DecompressionBombError as exc:      # PIL's own limit, far above ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise ItemFailed(f"too large ({size}; at most {MAX_PIXELS / 1e6:.0f})") from None


def _to_rgb(image: Any) -> tuple[Any, str]:
    """A loaded PIL image as RGB, and how it was converted (:func:`load_picture`)."""
    if image.mode in _GRAY_MODES:
        return image.convert("L").convert("RGB"), "grayscale to 3 equal channels"
    if image.mode == "CMYK":
        icc = image.info.get("icc_profile")
        if icc:
            from PIL import ImageCms

            try:
                source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                rgb = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"),
                                                outputMode="RGB")
                return rgb, "CMYK via its ICC profile"
            except (ImageCms.PyCMSError, OSError, ValueError) as exc:
                log.warning("%s: its ICC profile is unusable (%s); converting without it",
                            getattr(image, "filename", "picture"), " ".join(str(exc).split()))
                return image.convert("RGB"), "CMYK without a usable profile (Pillow's formula)"
        return image.convert("RGB"), "CMYK without a profile (Pillow's formula)"
    return image.convert("RGB"), ""


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size`` x ``size`` (area interpolation).

    Parameters
    ----------
    image : np.ndarray [shape=(height, width, 3), dtype=uint8]
    size : int
        Side of the result in pixels.

    Returns
    -------
    np.ndarray [shape=(size, size, 3), dtype=uint8]
    """
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top:top + side, left:left + side]
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interpolation)


def read_image(path: Path, size: int) -> np.ndarray:
    """A prepared image (a stage-4 ``.png``) as RGB uint8 ``(size, size, 3)``.

    Raises
    ------
    ConfigError
        When the file is unreadable or not of that size (stage 4 ran with another
        ``features.image_size``).
    """
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"{path}: cannot read it as an image; rerun preprocess_audio_vae.py "
                          "with --force")
    if bgr.shape[:2] != (size, size):
        raise ConfigError(f"{path} is {bgr.shape[1]}x{bgr.shape[0]} px, but the model's images "
                          f"are {size}x{size}: rerun preprocess_audio_vae.py with the same "
                          "features.image_size, or train a new model")
    return np.ascontiguousarray(bgr[..., ::-1])


class ImagesStage(Stage):
    """Frames and extra pictures -> ``<group>/<id>.png``, square RGB of ``size`` pixels.

    Parameters
    ----------
    size : int
        Side of the prepared images, in pixels.
    """

    name = "images"
    unit = "image"
    suffix = ".png"
    columns = ("paired", "width", "height", "mode", "converted", "size")
    executor = "thread"

    def __init__(self, size: int):
        self.size = size

    def is_done(self, output: Path, row: Mapping[str, str] | None) -> bool:
        """Made at the current size (the row's ``size`` column) and still on disk."""
        return (row is not None and row.get("size") == f"{self.size}x{self.size}"
                and super().is_done(output, row))

    def process(self, item: Item, output: Path) -> dict[str, Any]:
        image, mode, converted = load_picture(Path(item.source))
        write_png(output, square_resize(image, self.size))
        return {"paired": item.upstream.get("paired", "no"), "width": image.shape[1],
                "height": image.shape[0], "mode": mode, "converted": converted,
                "size": f"{self.size}x{self.size}"}


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB picture as a PNG, atomically.

    Parameters
    ----------
    image : np.ndarray [shape=(H, W, 3), uint8, RGB]

    Raises
    ------
    OSError
        When OpenCV cannot write the file.
    """
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(image[..., ::-1])):
            raise OSError(f"cannot write {path}")


def list_image_items(detections: Path, extra_dirs: list[Path]) -> list[Item]:
    """Stage 3's frames (paired, keyed by the segment's id) and the extra pictures (unpaired).

    Raises
    ------
    ConfigError
        When an extra picture's id is also a segment's id, or two extra pictures share one.
    """
    items: dict[str, Item] = {}
    for row in read_manifest(detections).values():
        if row.get("status") == "ok" and row.get("frame"):
            items[row["id"]] = Item(row["id"], row.get("group", ""),
                                    Path(detections) / row["frame"], row.get("label", ""),
                                    {"paired": "yes"})
    clashes = []
    for folder in extra_dirs:
        for path in sorted(Path(folder).glob("*/*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS \
                    or path.name.startswith("."):
                continue
            if path.stem in items:
                clashes.append(f"features.extra_image_dirs: {path} and {items[path.stem].source} "
                               f"have the same id {path.stem!r}; rename one (ids must be unique)")
                continue
            items[path.stem] = Item(path.stem, path.parent.name, path, path.parent.name,
                                    {"paired": "no"})
    if clashes:
        raise ConfigError(clashes[:5])
    return sorted(items.values(), key=lambda it: (it.group, it.id))


def run(config: Config, options: StageOptions | None = None, *,
        workers: int = 1) -> Summary | None:
    """Prepare every frame and extra picture into ``paths.spectrograms/images``.

    ``options`` are stage 4's (``--force``, ``--limit``, ``--shard``: a shard prepares the
    pictures of its own ids, so shards of stage 4 share this folder as they share the arrays').

    Returns
    -------
    Summary or None
        None when there is nothing to prepare (no frames, no extra pictures).
    """
    items = list_image_items(config.paths.detections, config.features.extra_image_dirs)
    if not items:
        log.info("images: no frames in %s and no features.extra_image_dirs: the sound -> "
                 "image model has nothing to learn from", config.paths.detections)
        return None
    options = options or StageOptions()
    return run_stage(ImagesStage(config.features.image_size), items,
                     config.paths.spectrograms / IMAGES, force=options.force,
                     limit=options.limit, workers=workers, progress=options.progress,
                     shard=options.shard)
