"""Looking at stage 4's output: the preview grid and the Griffin-Lim round-trip check.

:func:`render_preview` draws a few stored spectrograms per group into ``preview.png``;
:func:`round_trip_check` inverts stored arrays and measures how close the sound comes back
(``preprocess_audio_vae.py --check N``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .errors import ItemFailed, ItemSkipped
from .plots import show_spectrogram
from .segments import load_segment
from .spectrogram import (
    MOMENTUM,
    InverseSpectrogram,
    Spectrogram,
    SpectrogramSpec,
    spectral_convergence,
)
from .stage import atomic_path

__all__ = ["round_trip_check", "render_preview"]

log = logging.getLogger(__name__)


def _pick_rows(rows: list[Mapping[str, str]], n: int) -> list[Mapping[str, str]]:
    """Up to ``n`` rows taking the groups in turn, so every group is represented."""
    by_group: dict[str, list[Mapping[str, str]]] = collections.defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["group"], r["id"])):
        by_group[row["group"]].append(row)
    picked: list[Mapping[str, str]] = []
    for rank in range(max(map(len, by_group.values()), default=0)):
        for group in sorted(by_group):
            if rank < len(by_group[group]) and len(picked) < n:
                picked.append(by_group[group][rank])
    return picked


def round_trip_check(output_dir: Path, rows: list[Mapping[str, str]], spec: SpectrogramSpec,
                     *, n: int, n_iter: int = 32, momentum: float = MOMENTUM,
                     silence_dbfs: float = -60.0, device: torch.device | None = None,
                     batch_size: int = 16) -> list[float]:
    """Stored arrays -> Griffin-Lim -> STFT, against the STFT of their source segments.

    Each array is read back as stored (dtype included), inverted with
    :class:`InverseSpectrogram`, and the linear STFT magnitude of the result is compared with
    that of the original segment, both with the clip's peak at 0 dB (the scale the inverse
    restores). The spectral convergence therefore covers the normalisation, the storage type
    and the phase reconstruction together.

    Parameters
    ----------
    output_dir : Path
        Folder of the arrays (their manifest ``output`` paths are relative to it).
    rows : list of mapping
        ``ok`` manifest rows; up to ``n`` are used, the groups taken in turn.
    spec : SpectrogramSpec
    n : int
        How many segments to check.
    n_iter, momentum : int, float
        Griffin-Lim settings.
    silence_dbfs : float
        As in the run (the sources are read the same way).
    device : torch.device or None
        Default CPU.
    batch_size : int
        Segments per Griffin-Lim batch.

    Returns
    -------
    list of float
        One spectral convergence per segment checked (lower is better).
    """
    device = device or torch.device("cpu")
    forward = Spectrogram(spec).to(device)
    inverse = InverseSpectrogram(spec, n_iter=n_iter, momentum=momentum).to(device)
    scores: list[float] = []
    picked = _pick_rows(rows, n)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(0)  # Griffin-Lim's random initial phases: repeatable figures
        for start in range(0, len(picked), batch_size):
            pairs = [pair for r in picked[start:start + batch_size]
                     if (pair := _check_pair(output_dir, r, spec, silence_dbfs)) is not None]
            if not pairs:
                continue
            x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
            y = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)
            reference = forward.magnitude(y) * 10 ** (-forward.peak_db(y) / 20)[:, None, None]
            estimate = forward.magnitude(inverse(x))
            scores += spectral_convergence(reference, estimate).cpu().tolist()
    if scores:
        log.debug("round-trip check: median spectral convergence %.3f over %d segment(s) "
                 "(Griffin-Lim %d iterations, momentum %g; lower is better, <= 0.10 expected "
                 "for stft at the defaults)", float(np.median(scores)), len(scores), n_iter,
                 momentum)
    else:
        log.warning("round-trip check: no spectrograms to check")
    return scores


def _check_pair(output_dir: Path, row: Mapping[str, str], spec: SpectrogramSpec,
                silence_dbfs: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored array and its source segment, or None (with a warning) if one is gone."""
    try:
        x = np.load(output_dir / row["output"])
        y, _ = load_segment(Path(row["source"]), spec, silence_dbfs=silence_dbfs)
    except (ItemFailed, ItemSkipped, OSError, ValueError) as exc:
        log.warning("round-trip check: %s left out: %s", row["id"], exc)
        return None
    return x, y


def render_preview(output_dir: Path, rows: list[Mapping[str, str]], spec: SpectrogramSpec,
                   path: Path, *, per_group: int = 4) -> Path:
    """Draw up to ``per_group`` stored spectrograms of each group into one PNG.

    One row per group (at most 8 groups), time in seconds across, frequency in Hz up
    (mel: the band centres' frequencies as tick labels). Written atomically.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    by_group: dict[str, list[Mapping[str, str]]] = collections.defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["group"], r["id"])):
        if len(by_group[row["group"]]) < per_group:
            by_group[row["group"]].append(row)
    groups = sorted(by_group)[:8]
    cols = max(len(by_group[g]) for g in groups)
    # A fixed layout in inches (constrained_layout would double the time of the whole call).
    panel_w, panel_h, gap_w, gap_h = 3.0, 1.9, 0.15, 0.55
    left, right, top, bottom = 0.85, 1.2, 0.35, 0.55
    width = left + cols * panel_w + (cols - 1) * gap_w + right
    height = top + len(groups) * panel_h + (len(groups) - 1) * gap_h + bottom
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap_w / panel_w, hspace=gap_h / panel_h)
    axes = fig.subplots(len(groups), cols, squeeze=False, sharey=True)
    image = None
    for r, group in enumerate(groups):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(by_group[group]):
                ax.set_axis_off()
                continue
            row = by_group[group][c]
            x = np.load(output_dir / row["output"]).astype(np.float32)
            image = show_spectrogram(ax, x, spec, xlabel=r == len(groups) - 1,
                                     ylabel=c == 0)
            ax.set_title(f"{group}: {row['id']}", fontsize=8)
    if image is not None:
        bar = fig.add_axes((1 - (right - 0.25) / width, bottom / height, 0.12 / width,
                            1 - (top + bottom) / height))
        fig.colorbar(image, cax=bar).set_label(f"0 = peak - {spec.top_db:g} dB, 1 = peak",
                                               fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path
