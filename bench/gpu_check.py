#!/usr/bin/env python3
"""GPU check: the stage 3, 4 and 5 hot paths on CUDA (float32 vs bf16) and DDP on every GPU.

One script for a CUDA machine, done in a few minutes; it prints a Markdown section (GPU
named) for docs/benchmarks.md and writes it to ``bench/results/gpu.md`` (``--out``):

- stage 3: PANNs ``Cnn14_DecisionLevelMax`` (random weights, the cost of the real ones) on
  10 s clips at 32 kHz, batch 32, float32 and bf16 autocast: clips/s, for panns_inference's
  module and for stage 3's :class:`animalvae.cnn14.Cnn14Detector` (contiguous, as
  ``panns.load_detector`` builds it off the CPU, and channels-last);
- stage 4: :class:`animalvae.spectrogram.Spectrogram` at the default settings on 3 s
  segments, batch 64: clips/s; Griffin-Lim (:class:`InverseSpectrogram`, 32 iterations);
- stage 5: one optimiser step of the default VAE on 512 x 256 spectrograms, batch 32, float32
  and bf16 autocast (``vae.py train`` runs float32: bf16 was slower on an H200): spectrograms/s;
- DDP: ``vae.py train`` under ``torchrun --standalone --nproc_per_node G`` (G = 1 and every
  GPU present) on generated spectrograms; spectrograms/s of the last epoch (metrics.csv).

``--device cpu --small`` runs the same code on the CPU with tiny sizes (gloo, 2 processes):
a check of the script itself, not a figure. Without CUDA and without ``--device cpu`` it
stops with one line.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from animalvae import panns  # noqa: E402
from animalvae.cnn14 import Cnn14Detector  # noqa: E402
from animalvae.config import ModelConfig, TrainConfig  # noqa: E402
from animalvae.sound.losses import ReconstructionLoss  # noqa: E402
from animalvae.sound.model import VAE  # noqa: E402
from animalvae.sound.train import pitch_term, vae_loss  # noqa: E402
from animalvae.spectrogram import InverseSpectrogram, Spectrogram, SpectrogramSpec, save_spec  # noqa: E402


def timed(fn: Callable[[], object], *, device: torch.device, repeats: int) -> float:
    """Best seconds of ``repeats`` calls after one warm-up, the device synchronised."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def check_detection(device: torch.device, batch: int, seconds: float, repeats: int) -> list[str]:
    """panns_inference's module and stage 3's :class:`Cnn14Detector` (both layouts), float32
    and bf16 autocast: which one ``detect_stage`` should run on this device."""
    stock = panns.build_model()
    models = {"panns_inference module": stock.to(device)}
    for channels_last in (False, True):
        detector = Cnn14Detector(stock.state_dict(), channels_last=channels_last)
        layout = "channels-last" if channels_last else "contiguous"
        models[f"Cnn14Detector, {layout}"] = detector.to(device).eval()
    x = torch.randn(batch, int(seconds * panns.SAMPLE_RATE), device=device) * 0.1
    rows = []
    for name, model in models.items():
        for bf16 in (False, True):
            def forward(model: torch.nn.Module = model, bf16: bool = bf16) -> None:
                with torch.inference_mode(), autocast(device, bf16):
                    model(x)
            s = timed(forward, device=device, repeats=repeats)
            rows.append(f"| 3 detect: {name} forward, {seconds:g} s clips, batch {batch}, "
                        f"{'bf16' if bf16 else 'float32'} | {batch / s:.1f} clips/s |")
    return rows


def check_features(device: torch.device, spec: SpectrogramSpec, batch: int,
                   repeats: int) -> list[str]:
    forward = Spectrogram(spec).to(device)
    y = torch.randn(batch, spec.n_samples, device=device) * 0.1
    with torch.inference_mode():
        s = timed(lambda: forward(y), device=device, repeats=repeats)
        x = forward(y[:16])
        inverse = InverseSpectrogram(spec, n_iter=32).to(device)
        s_gl = timed(lambda: inverse(x), device=device, repeats=repeats)
    return [f"| 4 features: STFT to [0, 1], {spec.shape}, batch {batch} | {batch / s:.0f} "
            "clips/s |",
            f"| 5 generate: Griffin-Lim, 32 iterations, batch {len(x)} | {len(x) / s_gl:.1f} "
            "clips/s |"]


def _train_step(device: torch.device, spec: SpectrogramSpec, model_config: ModelConfig,
                batch: int, bf16: bool) -> Callable[[], None]:
    """One optimiser step of a fresh VAE, as ``vae.py train`` takes it."""
    torch.manual_seed(0)
    model = VAE(model_config, spec.shape, 3).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, *spec.shape, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    train = TrainConfig()
    reconstruction = ReconstructionLoss.from_config(train, top_db=spec.top_db)

    def step() -> None:
        with autocast(device, bf16):
            x_hat, mu, logvar, logits = model(x, y)
        terms = vae_loss(x_hat.float(), x, mu.float(), logvar.float(),
                         reconstruction=reconstruction, beta=1.0)
        pitch = pitch_term(None if logits is None else logits.float(), x, model.decoder.combs,
                           weight=train.pitch_weight)
        optimizer.zero_grad(set_to_none=True)
        (terms.loss + pitch).backward()
        optimizer.step()
    return step


def check_training(device: torch.device, spec: SpectrogramSpec, model_config: ModelConfig,
                   batch: int, repeats: int) -> list[str]:
    rows = []
    for bf16 in (False, True):
        s = timed(_train_step(device, spec, model_config, batch, bf16), device=device,
                  repeats=repeats)
        rows.append(f"| 5 train: one step, {spec.shape}, batch {batch}, "
                    f"{'bf16 autocast' if bf16 else 'float32'} | {batch / s:.0f} "
                    "spectrograms/s |")
    return rows


def ddp_rate(n_procs: int, workdir: Path, config: Path, device: str) -> float:
    """Spectrograms/s of the last epoch of ``vae.py train`` under torchrun on ``n_procs``."""
    run = workdir / f"run{n_procs}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n_procs}", str(ROOT / "vae.py"), "--", "train", "--config",
           str(config), "--run", str(run), "--set", f"train.device={device}", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if device == "cpu" else "4"}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    with (run / "metrics.csv").open() as fh:
        last = list(csv.DictReader(fh))[-1]
    n_train = sum(1 for row in csv.DictReader((run / "split.csv").open())
                  if row["split"] == "train")
    return n_train / float(last["seconds"])


def check_ddp(device: torch.device, spec: SpectrogramSpec, n_files: int, batch: int,
              epochs: int, world: int) -> list[str]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "spectrograms"
        save_spec(data, spec)
        for group in ("dogs", "cats"):
            (data / group).mkdir(parents=True)
            for i in range(n_files // 2):
                np.save(data / group / f"{group}{i:04d}.npy",
                        rng.random(spec.shape, dtype=np.float32).astype(np.float16))
        config = tmp / "config.yaml"
        config.write_text(f"paths: {{spectrograms: {data}, runs: {tmp}}}\n"
                          f"train: {{epochs: {epochs}, batch_size: {batch}, warmup_steps: 0}}\n")
        if device.type == "cpu":
            config.write_text(config.read_text()
                              + "model: {channels: [4, 8], latent_dim: 8, latent_frames: 0}\n")
        rates = {n: ddp_rate(n, tmp, config, device.type) for n in sorted({1, world})}
    rows = [f"| DDP: vae.py train under torchrun, {n} process(es), global batch {batch} "
            f"| {rate:.0f} spectrograms/s (x{rate / rates[1]:.2f}) |" for n, rate in rates.items()]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (checks the script)")
    p.add_argument("--small", action="store_true", help="tiny sizes: a quick check, no figures")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.md",
                   help="where the Markdown section goes (default: bench/results/gpu.md)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device here; nothing to check (--device cpu --small "
              "checks the script itself)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    small = args.small
    spec = SpectrogramSpec(n_fft=128, hop_length=64, n_frames=32, sample_rate=8000) if small \
        else SpectrogramSpec()
    model_config = ModelConfig(channels=[4, 8], latent_dim=8, latent_frames=0) if small \
        else ModelConfig()
    world = 2 if device.type == "cpu" else torch.cuda.device_count()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    start = time.perf_counter()
    rows = [*check_detection(device, 2 if small else 32, 1.0 if small else 10.0,
                             1 if small else 5),
            *check_features(device, spec, 4 if small else 64, 1 if small else 5),
            *check_training(device, spec, model_config, 4 if small else 32, 1 if small else 10),
            *check_ddp(device, spec, 16 if small else 1280, 4 if small else 32,
                       2 if small else 3, world)]
    text = "\n".join([
        f"## GPU check ({name})", "",
        f"{world} x {name}, torch {torch.__version__}; random inputs and weights (the cost does "
        "not depend on them); best of several timed calls after a warm-up. DDP: the last "
        "epoch of a run on generated spectrograms, validation included.", "",
        "| what | rate |", "|---|---:|", *rows, "",
        f"Command: `.venv/bin/python bench/gpu_check.py` ({time.perf_counter() - start:.0f} s)",
    ]) + "\n"
    print(text)
    if not small:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
