"""``<run>/images/index.html``: the sound <-> image model's page, rebuilt from disk.

One row per entry folder under ``samples/`` (:mod:`animalvae.image.sound_to_image` writes them):
the sound's player and spectrogram, the true frame or the input picture, and the generated
images; then ``metrics.json``. Like the run's own gallery (:mod:`animalvae.evaluation.gallery`):
relative, URL-quoted links, no script, no external resource, so it opens from disk and the
folder can be moved.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..stage import atomic_write_text
from ..training.run_folder import EVALUATION, GALLERY, SAMPLES
from .gallery import PAGE_STYLE, href, natural_key, write_gallery

__all__ = ["write_image_gallery"]

_SECTIONS = (("val", "Held-out pairs: the sound, the true frame, images made from the sound"),
             ("files", "Your recordings: images made from each"),
             ("from_images", "Sounds made from pictures"),
             ("prior", "Samples per group: one z, both halves"))
_EXTRA_STYLE = ".entry { margin-bottom: 1rem; } figure img.px { width: 128px; " \
               "image-rendering: pixelated; }"


def _img(path: Path, root: Path, caption: str) -> str:
    return (f'<figure><img class="px" src="{href(path, root)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _sound(folder: Path, root: Path) -> str:
    wav, png = folder / "sound.wav", folder / "sound.png"
    if not wav.is_file():
        return ""
    picture = (f'<img src="{href(png, root)}" alt="spectrogram of the sound">'
               if png.is_file() else "")
    return (f'<figure>{picture}<audio controls preload="none" src="{href(wav, root)}"></audio>'
            f"<figcaption>sound</figcaption></figure>")


def _entry(folder: Path, root: Path) -> str:
    parts = [_sound(folder, root)]
    for name, caption in (("frame.png", "true frame"), ("image.png", "picture")):
        if (folder / name).is_file():
            parts.append(_img(folder / name, root, caption))
    for png in sorted(folder.glob("generated_*.png"), key=lambda p: natural_key(p.stem)):
        parts.append(_img(png, root, f"from the sound #{png.stem.rpartition('_')[2]}"))
    return (f'<div class="entry"><h3>{html.escape(folder.relative_to(root / SAMPLES).as_posix())}'
            f'</h3><div class="row">{"".join(parts)}</div></div>')


def _read_metrics(path: Path) -> dict:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _variety_note(metrics: dict) -> str:
    """A line on how much the images of one sound differ, beside images of different sounds."""
    within, across = metrics.get("variety_within_sound"), metrics.get("variety_across_sounds")
    if not isinstance(within, float) or not isinstance(across, float):
        return ""
    return (f'<p class="note">Images of one sound differ by {within:.1f} on average (mean '
            f"absolute pixel difference, 0-255), images of different sounds by {across:.1f}: "
            "variety within one sound is what the sound leaves open (pose, background, "
            "light), variety across sounds what it tells.</p>")


def _metrics(metrics: dict) -> str:
    if not metrics:
        return ""
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>"
        f"{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
        for k, v in metrics.items() if isinstance(v, (int, float, str)))
    return f"<h2>Evaluation (metrics.json)</h2><table>{rows}</table>"


def write_image_gallery(run_dir: Path) -> Path:
    """(Re)write ``run_dir/index.html`` from ``run_dir/samples/`` and ``metrics.json``.

    The run folder's own page (``run_dir/../index.html``), when there is one, is rebuilt too,
    so that it links to this one.

    Returns
    -------
    Path
        The page.
    """
    run_dir = Path(run_dir)
    metrics = _read_metrics(run_dir / EVALUATION)
    sections = []
    for kind, heading in _SECTIONS:
        base = run_dir / SAMPLES / kind
        entries = sorted({p.parent for p in base.rglob("*.png")}, key=lambda p: natural_key(
            p.relative_to(base).as_posix())) if base.is_dir() else []
        if entries:
            note = _variety_note(metrics) if kind == "val" else ""
            sections.append(f"<h2>{heading}</h2>{note}"
                            + "".join(_entry(e, run_dir) for e in entries))
    if not sections:
        sections.append("<p>No images yet: run <code>vae.py sound-to-image</code>.</p>")
    sections.append(_metrics(metrics))
    title = f"{html.escape(run_dir.parent.name)}: sound → image"
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{PAGE_STYLE}{_EXTRA_STYLE}</style></head><body>"
            f"<h1>{title}</h1><p class=\"note\">Images are made from the sound alone (no group "
            "label). Spectrograms: time left to right, frequency bottom to top. Audio: "
            f"Griffin-Lim, peak-normalised.</p>{''.join(sections)}</body></html>\n")
    path = run_dir / GALLERY
    atomic_write_text(path, page)
    if (run_dir.parent / GALLERY).is_file():
        write_gallery(run_dir.parent)
    return path
