"""Stage 5 under torchrun: two gloo processes on the CPU train one model with DDP.

Real torch.distributed: ``torchrun --standalone --nproc_per_node 2`` runs ``vae.py train``
through ``tests/ddp_worker.py``, which keeps each rank's final weights; so do two torchrun
launchers as two nodes (``--nnodes 2``, c10d rendezvous on 127.0.0.1); and the command a user
types, ``torchrun ... vae.py train --run-dir DIR``, trains. The data and model
are the tiny ones of ``vae_runs.py``; ``train.batch_size=5`` over 16 training files makes
batches of 5, 5, 5 and 1, so the ranks get unequal shares and, in the last batch, one rank
none at all.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vae_runs import make_data, read_metrics, write_tiny_config

import vae
from animalvae.training.distributed import DistContext

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_worker.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"      # the command installed with torch
# gloo on the CPU, also where a GPU is present: one GPU cannot hold two ranks, and the runs
# compared with them must use the same kernels
STEPS = ["--set", "train.batch_size=5", "--set", "train.epochs=2", "--set", "train.device=cpu"]


def torchrun(n: int, out: Path, argv: list[str]) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", str(WORKER), str(out), *argv, "-q"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def two_nodes(out: Path, argv: list[str]) -> None:
    """One torchrun launcher per "node", one process each, meeting at a c10d rendezvous."""
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
         str(node), "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
         f"127.0.0.1:{port}", "--rdzv_id", "two-nodes", str(WORKER), str(out), *argv, "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)]
    errors = [launcher.communicate(timeout=300)[1] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], errors[0][-3000:] + \
        errors[1][-3000:]


def weights(path: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(path, weights_only=True)
    return payload.get("model", payload)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 2-process run of 6 steps, the same in one process, the same on two "nodes", and a
    2-process run of 3 steps by the command a user types."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_tiny_config(tmp, data=make_data(tmp / "spectrograms"))
    base = ["train", "--config", str(config), *STEPS]
    paths = {"config": config, "ddp": tmp / "ddp", "single": tmp / "single",
             "nodes": tmp / "nodes", "half": tmp / "half"}
    torchrun(2, paths["ddp"], [*base, "--run-dir", str(paths["ddp"]),
                               "--set", "train.max_steps=6"])
    assert vae.main([*base, "--run", str(paths["single"]), "--set", "train.max_steps=6",
                     "-q"]) == 0
    two_nodes(paths["nodes"], [*base, "--run-dir", str(paths["nodes"]),
                               "--set", "train.max_steps=6"])
    # exactly as the README has it (no "--"): torchrun reads "--run" as its own --run-path
    typed = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "vae.py",
                            "train", "--run-dir", str(paths["half"]), "--set",
                            "train.device=cpu", "--config", str(config), *STEPS,
                            "--set", "train.max_steps=3", "-q"], cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert typed.returncode == 0, typed.stderr[-3000:]
    return paths


@pytest.mark.slow
def test_two_ranks_hold_equal_weights_equal_to_one_process(runs):
    ddp, single = runs["ddp"], runs["single"]
    rank0, rank1 = weights(ddp / "rank0.pt"), weights(ddp / "rank1.pt")
    assert_same(rank0, rank1, atol=0)                 # DDP keeps the replicas identical
    # the same global batches and noise: one process gets there too, up to float rounding
    assert_same(rank0, weights(single / "last.pth"), atol=1e-5)
    assert_same(rank0, weights(ddp / "last.pth"), atol=0)   # what rank 0 saved
    last = torch.load(ddp / "last.pth", weights_only=True)
    assert (last["step"], last["world_size"]) == (6, 2)
    # the logged losses are those of the whole batch, not of rank 0's share
    for a, b in zip(read_metrics(ddp), read_metrics(single), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_nodes_give_the_weights_of_one_process(runs):
    nodes = runs["nodes"]
    assert_same(weights(nodes / "rank0.pt"), weights(nodes / "rank1.pt"), atol=0)
    assert_same(weights(nodes / "rank0.pt"), weights(runs["single"] / "last.pth"), atol=1e-5)
    last = torch.load(nodes / "last.pth", weights_only=True)
    assert (last["step"], last["world_size"]) == (6, 2)


@pytest.mark.slow
def test_the_command_a_user_types_trains(runs):
    half = runs["half"]
    assert (half / "model.pth").stat().st_size > 0
    last = torch.load(half / "last.pth", weights_only=True)
    assert (last["step"], last["world_size"]) == (3, 2)


@pytest.mark.slow
def test_only_rank_0_writes_the_run_folder(runs):
    names = sorted(p.name for p in runs["ddp"].iterdir())
    assert names == sorted(["last.pth", "loss.png", "metrics.csv", "model.pth", "rank0.pt",
                            "rank1.pt", "sampler.pth", "settings.yaml", "split.csv"])
    assert not [p for p in runs["ddp"].iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.slow
def test_resume_under_the_same_world_size_continues_exactly(runs, tmp_path):
    half = tmp_path / "half"
    subprocess.run(["cp", "-r", str(runs["half"]), str(half)], check=True)
    torchrun(2, half, ["train", "--config", str(runs["config"]), *STEPS, "--run-dir",
                       str(half), "--resume", "--set", "train.max_steps=6"])
    assert_same(weights(half / "rank0.pt"), weights(runs["ddp"] / "rank0.pt"), atol=1e-6)
    assert_same(weights(half / "rank1.pt"), weights(half / "rank0.pt"), atol=0)


@pytest.mark.slow
def test_resume_under_another_world_size_says_so_and_goes_on(runs, tmp_path, capsys):
    half = tmp_path / "half"
    subprocess.run(["cp", "-r", str(runs["half"]), str(half)], check=True)
    code = vae.main(["train", "--config", str(runs["config"]), *STEPS, "--run", str(half),
                     "--resume", "--set", "train.max_steps=6", "-q"])
    assert code == 0
    err = capsys.readouterr().err
    assert "trained on 2 process(es), this one on 1" in err
    assert "equal within float rounding" in err
    assert_same(weights(half / "last.pth"), weights(runs["single"] / "last.pth"), atol=1e-5)


@pytest.mark.slow
def test_other_commands_refuse_to_run_under_torchrun(runs, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = vae.main(["generate", "--config", str(runs["config"]), "--run", str(runs["ddp"])])
    err = capsys.readouterr().err
    assert code == 2 and "vae.py generate runs as one process, but torchrun started 2" in err
    assert not (runs["ddp"] / "samples").exists()


@pytest.mark.parametrize("n, world, expected", [
    (5, 2, [([0, 2, 4], 1.2), ([1, 3], 0.8)]),
    (1, 2, [([0], 2.0), ([0], 0.0)]),        # rank 1 joins with a zero-weight row
    (4, 1, [([0, 1, 2, 3], 1.0)]),
])
def test_shard_weights_make_the_mean_of_ranks_the_batch_mean(n, world, expected):
    for rank, (rows, weight) in enumerate(expected):
        got_rows, got_weight = DistContext(rank, world, torch.device("cpu")).shard(n)
        assert got_rows.tolist() == rows
        assert got_weight == pytest.approx(weight)
