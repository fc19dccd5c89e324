"""The benchmark scripts that no CI run would otherwise execute still run, and the
quality bench's Markdown names the command that remakes it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


def _bench_quality() -> ModuleType:
    """bench/bench_quality.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_quality",
                                                  ROOT / "bench" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: One row of the quality bench's first table.
FIGURES = {"ceiling": 1.0, "samples": 0.9, "reconstructions": 1.0, "samples_vs": 0.9,
           "reconstructions_vs": 1.0, "worst_group_samples": 0.8, "min_diversity": 0.7,
           "min_nearest_training": 1.1, "min_sharpness_samples": 0.9,
           "min_sharpness_reconstructions": 0.75, "frechet": 100.0, "frechet_rec": 90.0,
           "frechet_real": 80.0}


def test_bench_quality_section_names_the_command_that_remakes_it():
    bq = _bench_quality()
    figures = FIGURES
    plain = bq.section("data", {"defaults": figures}, {"defaults": (100.0, 190.0)}, 50,
                       ["defaults"], [0])
    assert plain.startswith("## quality: generated sounds vs real recordings\n")
    assert "| defaults | 100 / 190 | 1.00 |" in plain
    assert plain.rstrip().endswith("--variants defaults`")
    titled = bq.section("data", {"defaults, seed 1": figures},
                        {"defaults, seed 1": (100.0, 190.0)}, 50, ["defaults"], [1],
                        title="levers, three seeds", results_file="bench/results/levers.md")
    assert titled.startswith("## quality: levers, three seeds\n")
    assert titled.rstrip().endswith("--variants defaults --seeds 1 --title 'levers, three seeds'"
                                     " --results bench/results/levers.md`")


def test_source_split_alternates_each_groups_sources_by_size(tmp_path):
    bq = _bench_quality()
    rows = (["dogs/a1.wav,dogs,A", "dogs/a2.wav,dogs,A", "dogs/a3.wav,dogs,A",
             "dogs/b1.wav,dogs,B", "dogs/b2.wav,dogs,B", "dogs/c1.wav,dogs,C",
             "cats/x1.wav,cats,X", "cats/y1.wav,cats,Y"])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,group,source_repo\n" + "\n".join(rows) + "\n")
    fold0 = bq.source_split(manifest, 0)
    assert fold0["train"] == {"dogs": ["dogs/a1.wav", "dogs/a2.wav", "dogs/a3.wav",
                                       "dogs/c1.wav"], "cats": ["cats/x1.wav"]}
    assert fold0["judge"] == {"dogs": ["dogs/b1.wav", "dogs/b2.wav"], "cats": ["cats/y1.wav"]}
    fold1 = bq.source_split(manifest, 1)                 # the sides swap
    assert fold1["train"] == fold0["judge"] and fold1["judge"] == fold0["train"]


def test_bench_quality_section_adds_the_judges_table_and_the_fold():
    bq = _bench_quality()
    figures = FIGURES
    row = {"overall": {"ceiling": 0.9, "samples_vs_ceiling": 0.5,
                       "reconstructions_vs_ceiling": 1.0},
           "groups": {"cats": {"samples_vs_ceiling": 0.25, "reconstructions_vs_ceiling": 1.0,
                               "diversity": 0.8, "nearest_training": 0.9},
                      "dogs": {"samples_vs_ceiling": 0.75, "reconstructions_vs_ceiling": 0.5,
                               "diversity": 1.0, "nearest_training": 1.2}},
           "frechet": {"samples": 150.0, "real_train": 90.0}}
    quality = {**row, "embedding": row, "independent": {"embedding": row}}
    judges = {"defaults": bq.all_judges(quality)}
    assert list(judges["defaults"]) == ["log-mel, in sample", "BirdNET, in sample",
                                        "BirdNET, cross-source"]
    text = bq.section("data", {"defaults": figures}, {"defaults": (100.0, 190.0)}, 50,
                      ["defaults"], [0], judges=judges, groups=["cats", "dogs"], fold=0)
    assert ("| defaults | BirdNET, cross-source | 0.90 | 0.25 / 0.75 | 0.50 | 1.00 (0.50) | "
            "150.0 / 90.0 | 0.80 | 0.90 |") in text
    assert text.rstrip().endswith("--variants defaults --cross-source 0`")


def test_bench_quality_reuses_defaults_only_when_every_seed_has_them(tmp_path):
    bq = _bench_quality()
    assert not bq._has_defaults(None, [0])
    assert not bq._has_defaults(tmp_path, [0, 1])
    for seed in (0, 1):
        run = tmp_path / "runs" / f"defaults-seed{seed}"
        run.mkdir(parents=True)
        (run / "model.pth").write_bytes(b"")
    assert bq._has_defaults(tmp_path, [0, 1])
    assert not bq._has_defaults(tmp_path, [0, 1, 2])
    assert not bq._has_defaults(tmp_path, [0])          # one seed: the run is "defaults"
    # the command of such a bench names the work folder the weights came from
    text = bq.section("data", {"spread-1.5, seed 0": FIGURES}, {"spread-1.5, seed 0": None}, 50,
                      ["spread-1.5"], [0, 1])
    assert "--audio DIR --work WORK --variants spread-1.5 --seeds 0,1" in text
    assert "--work" not in bq.section("data", {"defaults": FIGURES}, {"defaults": None}, 50,
                                      ["defaults", "spread-1.5"], [0])
