"""Checkpoints that resume exactly, and the run folder that holds them.

A run folder (``paths.runs/<train.name>``) holds ``model.pth`` (the best weights, see
:mod:`animalvae.sound.model` for the format), ``last.pth`` (the latest state, for ``--resume``),
``split.csv``, ``metrics.csv``, ``loss.png``, ``settings.yaml`` and, after ``vae.py
generate``, ``samples/`` and ``index.html``. Checkpoints are plain data (loadable with
``torch.load(..., weights_only=True)``), written atomically; ``last.pth`` also carries every
RNG state (torch, CUDA, numpy, Python) so a resumed run draws the same numbers.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..stage import atomic_path
from .run_folder import LAST, MODEL, RUN_FILES, SAMPLES

__all__ = ["rng_state", "set_rng_state", "seed_everything", "save_checkpoint", "check_run_dir",
           "clear_run_dir"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Checkpoints: plain data (weights_only-loadable), written atomically
# --------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every RNG state of this process as plain data (tensors, ints, lists) for ``last.pth``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states that :func:`rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (all CUDA devices too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically (a crash leaves the old file)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# --------------------------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------------------------



def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Check that ``run_dir`` can take this run; changes nothing.

    Parameters
    ----------
    run_dir : Path
        The run folder (need not exist for a fresh run).
    resume : bool
        The run continues from ``run_dir/last.pth``.
    force : bool
        A fresh run may replace a run already in ``run_dir``.

    Raises
    ------
    ConfigError
        ``resume`` without ``last.pth``, or a fresh run without ``force`` in a folder that
        holds ``last.pth`` or ``model.pth``.
    """
    if resume:
        if not (run_dir / LAST).is_file():
            raise ConfigError(f"--resume: {run_dir / LAST} not found (nothing to continue; "
                              "train without --resume)")
        return
    if not force and ((run_dir / LAST).exists() or (run_dir / MODEL).exists()):
        raise ConfigError(f"run folder {run_dir} already holds a training run: continue it "
                          "with --resume, start over with --force, or name a new run with "
                          "--set train.name=NAME")


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's outputs, ``samples/`` included (log which).

    Called by a fresh run only once its data and model check out, so a bad ``--input`` or
    setting leaves the old run be.
    """
    removed = [name for name in (*RUN_FILES, SAMPLES) if (run_dir / name).exists()]
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / SAMPLES).is_dir():
        shutil.rmtree(run_dir / SAMPLES)
    if removed:
        log.info("--force: removed the earlier run's %s from %s", ", ".join(removed), run_dir)
