"""The benchmark scripts that no CI run would otherwise execute still run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_its_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu",
                           "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for step in ("3 detect", "4 features", "5 generate", "5 train", "DDP"):
        assert any(row.startswith(f"| {step}") for row in rows), (step, done.stdout)
    assert sum(row.startswith("| DDP") for row in rows) == 2      # 1 and 2 gloo processes
    assert not out.exists()                                        # --small writes no figures


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_gpu_check_without_cuda_stops_with_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr
