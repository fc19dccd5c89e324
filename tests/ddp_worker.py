"""Test helper: ``vae.py train ARGS`` in one torchrun process, keeping this rank's weights.

Usage: ``torchrun --nproc_per_node N tests/ddp_worker.py OUT_DIR train ARGS...``. The real
training code runs unchanged; the model it builds is remembered, and once ``vae.main``
returns its weights go to ``OUT_DIR/rank<RANK>.pt`` so a test can compare the replicas.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vae  # noqa: E402
from animalvae.sound import train as train_mod  # noqa: E402


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    built = []
    build_model = train_mod.build_model

    def remember(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append(model)
        return model

    train_mod.build_model = remember
    code = vae.main(argv)
    if built:
        torch.save(built[-1].state_dict(), out / f"rank{os.environ['RANK']}.pt")
    return code


if __name__ == "__main__":
    sys.exit(main())
