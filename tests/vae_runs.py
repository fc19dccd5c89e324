"""Shared by the stage-5 test files: a tiny stage-4 folder, a tiny config, `vae.py` in process.

The spectrograms are 64 x 32 (written with ``save_spec``) and the model tiny (channels [4, 8],
latent 8), so a training run takes seconds on a CPU. The two groups have very different patterns
(a bright low band vs a bright high band), which makes "the group label steers generation"
checkable after a short training run.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

import vae
from animalvae.spectrogram import SpectrogramSpec, save_spec

#: the flags every ``vae.py`` sub-command takes
COMMON = {"--config", "--set", "--run-dir", "--run", "-v", "--verbose", "-q", "--quiet", "-h",
          "--help"}

SPEC = SpectrogramSpec(kind="stft", sample_rate=8000, n_fft=128, hop_length=64, n_frames=32)
BANDS = {"birds": slice(40, 56), "dogs": slice(4, 16)}   # rows that are bright, per group
TINY = """
paths:
  spectrograms: {data}
  runs: {runs}
model:
  latent_dim: 8
  channels: [4, 8]
  embed_dim: 4
  conditional: {conditional}
  latent_frames: 8        # one value per time position: the default layout, small
  pitch_candidates: 0     # no comb: these 64 rows hold too few harmonics (tests/test_harmonic.py)
train:
  epochs: {epochs}
  batch_size: 4
  lr: 0.005
  warmup_steps: 2
  kl_warmup_epochs: 1
  beta: 1.0
  val_fraction: 0.2
generate:
  count: 2
  griffin_lim_iters: 4
"""


def make_data(folder: Path, *, per_group: int = 10, spec: SpectrogramSpec = SPEC,
              seed: int = 0) -> Path:
    """A stage-4 folder: normalizer.json + <group>/<id>.npy with group-specific patterns."""
    rng = np.random.default_rng(seed)
    save_spec(folder, spec)
    for group, band in BANDS.items():
        (folder / group).mkdir(parents=True, exist_ok=True)
        for i in range(per_group):
            a = rng.uniform(0.0, 0.15, spec.shape)
            rows = np.arange(spec.n_bins)[band.start * spec.n_bins // 64:
                                          band.stop * spec.n_bins // 64]
            a[rows] += rng.uniform(0.6, 0.8) * (0.8 + 0.2 * np.sin(
                np.arange(spec.n_frames) / rng.uniform(1.5, 4.0)))
            np.save(folder / group / f"{group}-{i:02d}.npy", np.clip(a, 0, 1).astype(np.float16))
    return folder


def write_tiny_config(tmp: Path, *, epochs: int = 3, conditional: bool = True,
                      data: Path | None = None) -> Path:
    data = data or make_data(tmp / "spectrograms")
    path = tmp / "config.yaml"
    path.write_text(TINY.format(data=data, runs=tmp / "runs", epochs=epochs,
                                conditional=str(conditional).lower()))
    return path


def run_vae(argv: list[str], capsys) -> tuple[int, str]:
    code = vae.main([*argv, "-q"])
    return code, capsys.readouterr().err


def read_metrics(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
