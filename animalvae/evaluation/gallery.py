"""The run folder's ``index.html``: every sample's player and spectrogram, grouped, offline.

The page is rebuilt from what is on disk under ``<run>/samples/`` after every ``generate``,
``reconstruct``, ``interpolate`` and ``evaluate``, so it never lists a file that is gone.
Links are relative and URL-quoted, there is no script and no external resource: the folder
can be zipped, moved, and opened from disk in any browser.

Layout it reads (written by :mod:`animalvae.sound.generate`)::

    samples/<group>_<k>.wav|png                           generated
    samples/reconstruct/<group>/<id>_original.wav|png     held-out file (through Griffin-Lim)
    samples/reconstruct/<group>/<id>_reconstruction.wav|png
    samples/interpolate/<a>__<b>/<k>.wav|png              latent line from a to b
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import quote

from ..stage import atomic_write_text
from ..training.run_folder import EVALUATION, GALLERY, IMAGE_RUN, LOSS_PLOT, SAMPLES

__all__ = ["write_gallery", "GALLERY", "SAMPLES", "PAGE_STYLE", "natural_key", "href"]

#: The CSS of every gallery page (the image gallery adds its own rules after it).
PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 1rem; }
.row { display: flex; flex-wrap: wrap; gap: 0.8rem; }
figure { margin: 0; padding: 0.5rem; background: #fff; border: 1px solid #ddd; border-radius: 6px; }
figure img { display: block; width: 320px; max-width: 100%; height: auto; }
figure audio { display: block; width: 320px; max-width: 100%; margin-top: 0.3rem; }
figcaption { font-size: 0.8rem; color: #555; margin-top: 0.2rem; }
table { border-collapse: collapse; }
td, th { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; }
.note { color: #666; font-size: 0.85rem; }
"""


def natural_key(text: str) -> list:
    """A sort key that orders the numbers inside ``text`` by value (``s_2`` before ``s_10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def href(path: Path, root: Path) -> str:
    """``path`` as a URL-quoted, HTML-escaped link relative to ``root`` (the page's folder)."""
    return html.escape(quote(path.relative_to(root).as_posix()))


def _figure(wav: Path, root: Path, caption: str) -> str:
    png = wav.with_suffix(".png")
    img = (f'<img src="{href(png, root)}" alt="spectrogram of {html.escape(caption)}">'
           if png.is_file() else "")
    return (f"<figure>{img}<audio controls preload=\"none\" src=\"{href(wav, root)}\"></audio>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _generated(samples: Path, root: Path) -> list[str]:
    by_group: dict[str, list[Path]] = {}
    for wav in samples.glob("*.wav"):
        group, sep, k = wav.stem.rpartition("_")
        if sep and k.isdigit() and not wav.name.startswith("."):
            by_group.setdefault(group, []).append(wav)
    parts = []
    for group in sorted(by_group):
        figures = [_figure(w, root, w.stem) for w in sorted(by_group[group],
                                                            key=lambda p: natural_key(p.stem))]
        parts.append(f"<h3>{html.escape(group)}</h3><div class=\"row\">{''.join(figures)}</div>")
    return parts


def _reconstructions(folder: Path, root: Path) -> list[str]:
    parts = []
    for group_dir in sorted(p for p in folder.glob("*") if p.is_dir()):
        pairs = []
        for original in sorted(group_dir.glob("*_original.wav"), key=lambda p: p.name):
            item = original.name.removesuffix("_original.wav")
            rebuilt = original.with_name(f"{item}_reconstruction.wav")
            figures = _figure(original, root, f"{item}: original")
            if rebuilt.is_file():
                figures += _figure(rebuilt, root, f"{item}: reconstruction")
            pairs.append(figures)
        if pairs:
            parts.append(f"<h3>{html.escape(group_dir.name)}</h3>"
                         f"<div class=\"row\">{''.join(pairs)}</div>")
    return parts


def _interpolations(folder: Path, root: Path) -> list[str]:
    parts = []
    for line in sorted(p for p in folder.glob("*") if p.is_dir()):
        wavs = sorted(line.glob("[0-9]*.wav"), key=lambda p: natural_key(p.stem))
        if wavs:
            a, _, b = line.name.partition("__")
            figures = [_figure(w, root, f"step {w.stem}") for w in wavs]
            parts.append(f"<h3>{html.escape(a)} → {html.escape(b)}</h3>"
                         f"<div class=\"row\">{''.join(figures)}</div>")
    return parts


def _metrics_table(path: Path) -> str:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in metrics.items() if isinstance(v, (int, float, str)))
    return f"<h2>Evaluation (metrics.json)</h2><table>{rows}</table>" if rows else ""


# The quality figures' columns: (key in metrics.json's "quality" rows, heading).
_QUALITY_COLUMNS = (
    ("ceiling", "accuracy, real held-out"), ("samples", "accuracy, samples"),
    ("reconstructions", "accuracy, reconstructions"), ("diversity", "diversity"),
    ("nearest_training", "nearest-training ratio"), ("sharpness_samples", "sharpness, samples"),
    ("sharpness_reconstructions", "sharpness, reconstructions"))


def _quality_table(path: Path) -> str:
    """The per-group sample-quality table of metrics.json (see animalvae.evaluation.quality)."""
    try:
        quality = json.loads(path.read_text(encoding="utf-8"))["quality"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in _QUALITY_COLUMNS)
    rows = "".join(
        f"<tr><th>{html.escape(str(name))}</th>"
        + "".join(f"<td>{html.escape(_fmt(row.get(key, float('nan'))))}</td>"
                  for key, _ in _QUALITY_COLUMNS)
        + "</tr>"
        for name, row in [*quality.get("groups", {}).items(), ("all", quality.get("overall", {}))])
    frechet = quality.get("frechet", {})
    note = (f"Judged on {quality.get('samples_per_group', '?')} samples per group. Accuracy: "
            "a classifier of log-mel statistics fit on the run's real training clips. "
            "Diversity, nearest-training ratio and sharpness are relative to real clips through "
            "the same Griffin-Lim (1 = like real clips). Fréchet distance to real held-out "
            f"clips: samples {_fmt(frechet.get('samples'))}, reconstructions "
            f"{_fmt(frechet.get('reconstructions'))}, real training clips "
            f"{_fmt(frechet.get('real_train'))}.")
    if "panns" in quality:
        p = quality["panns"]
        note += (f" PANNs: FAD samples {_fmt(p['fad_samples'])} (real training clips "
                 f"{_fmt(p['fad_real_train'])}); share of samples whose top AudioSet class is "
                 f"one of their group's {_fmt(p['top_class_share_overall'])}.")
    return (f"<h2>Sample quality</h2><table><tr><th>group</th>{head}</tr>{rows}</table>"
            f"<p class=\"note\">{html.escape(note)}</p>" + _judges_table(quality))


# The other judges of metrics.json's quality section: (where, title).
_JUDGES = ((("embedding",), "BirdNET embedding, fit on the run's training clips"),
           (("independent", "logmel"), "log-mel statistics, fit on independent recordings"),
           (("independent", "embedding"), "BirdNET embedding, fit on independent recordings"))


def _judges_table(quality: dict) -> str:
    """Samples and reconstructions against each other judge's ceiling, and its FAD."""
    found = []
    for keys, title in _JUDGES:
        figures = quality
        for key in keys:
            figures = figures.get(key, {}) if isinstance(figures, dict) else {}
        if figures:
            found.append((title, figures))
    if not found:
        return ""
    groups = list(found[0][1].get("groups", {}))
    head = "".join(f"<th>samples ÷ ceiling, {html.escape(g)}</th>" for g in groups)
    rows = "".join(
        f"<tr><th>{html.escape(title)}</th><td>{_fmt(f['overall'].get('ceiling'))}</td>"
        + "".join(f"<td>{_fmt(f['groups'].get(g, {}).get('samples_vs_ceiling'))}</td>"
                  for g in groups)
        + f"<td>{_fmt(f['overall'].get('reconstructions_vs_ceiling'))}</td>"
        f"<td>{_fmt(f['frechet'].get('samples'))} / {_fmt(f['frechet'].get('real_train'))}</td>"
        "</tr>" for title, f in found)
    note = ("Other judges: a classifier on a pretrained network's embedding (BirdNET V2.4, "
            "evaluation only), and judges fit on independent recordings (vae.py evaluate "
            "--judge-dir), whose ceiling is their accuracy on this run's real clips. Fréchet "
            "distance of samples to the judge's real reference, beside that of real clips.")
    return (f"<h3>Other judges</h3><table><tr><th>judge</th><th>real ceiling</th>{head}"
            f"<th>reconstructions ÷ ceiling</th><th>Fréchet samples / real</th></tr>{rows}"
            f"</table><p class=\"note\">{html.escape(note)}</p>")


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_gallery(run_dir: Path, *, title: str = "") -> Path:
    """(Re)write ``run_dir/index.html`` from the files under ``run_dir/samples``.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    title : str
        Page heading; default: the run folder's name.

    Returns
    -------
    Path
        The page.
    """
    run_dir = Path(run_dir)
    samples = run_dir / SAMPLES
    sections = []
    if samples.is_dir():
        for heading, parts in (
                ("Generated", _generated(samples, run_dir)),
                ("Reconstructions of held-out files", _reconstructions(samples / "reconstruct",
                                                                       run_dir)),
                ("Interpolations", _interpolations(samples / "interpolate", run_dir))):
            if parts:
                sections.append(f"<h2>{heading}</h2>{''.join(parts)}")
    if not sections:
        sections.append("<p>No samples yet: run <code>vae.py generate</code>.</p>")
    if (run_dir / IMAGE_RUN / GALLERY).is_file():   # the sound -> image model's own page
        sections.append(f'<h2>Sound → image</h2><p><a href="{IMAGE_RUN}/{GALLERY}">Images '
                        "made from sounds, and sounds from pictures</a></p>")
    if (run_dir / LOSS_PLOT).is_file():
        sections.append(f'<h2>Training</h2><img src="{LOSS_PLOT}" alt="loss curves" '
                        'style="max-width: 100%">')
    sections.append(_quality_table(run_dir / EVALUATION))
    sections.append(_metrics_table(run_dir / EVALUATION))
    name = html.escape(title or run_dir.name)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{name}</title><style>{PAGE_STYLE}</style></head><body>"
            f"<h1>{name}</h1><p class=\"note\">Spectrograms: time left to right, frequency "
            f"bottom to top. Audio: Griffin-Lim, peak-normalised.</p>"
            f"{''.join(sections)}</body></html>\n")
    path = run_dir / GALLERY
    atomic_write_text(path, page)
    return path
