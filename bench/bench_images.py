#!/usr/bin/env python3
"""Stage 5, sound -> image: training throughput (pairs/s) and peak memory on the CPU.

One optimiser step of ``vae.py train-images`` on random pairs in memory (speed does not depend
on the values): :func:`animalvae.image.train.pair_loss` (three posteriors: two
spectrogram decodes and three image decodes per pair), backward, clip, AdamW step; timed after
a warm-up step, best of the rounds (the machine is shared: other work only slows a round).
The baseline is the spectrogram VAE alone (:class:`animalvae.sound.model.VAE`, unconditional,
same spectrograms, batch and latent size, :func:`animalvae.sound.train.vae_loss`): the ratio is
what the image half and the cross terms cost.

Peak memory: each configuration runs in its own process, and the figure is the growth of
its peak resident set (``ru_maxrss``) from just before the model is built to the end of the
timed steps (weights, optimiser state, activations, autograd buffers), so torch's own
import is not counted.

Configurations: ``configs/demo.yaml`` (256 x 128 spectrograms, 32 px images, batch 8) and
``config.yaml`` (512 x 256, 64 px, batch 32), each with the torch threads its
``sound_image.threads`` sets (the baseline alike). Prints a Markdown section and writes it to
``bench/results/images.md``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = 3
ROUNDS = 3


def _measure(config_path: str, kind: str) -> dict:
    """In this process: build, warm up, time ``ROUNDS`` x ``STEPS`` steps; peak RSS growth."""
    import torch

    from animalvae.config import ModelConfig, load_config
    from animalvae.image.model import SoundImageVAE
    from animalvae.image.train import pair_loss
    from animalvae.sound.losses import ReconstructionLoss
    from animalvae.sound.model import VAE
    from animalvae.sound.train import vae_loss

    config = load_config(ROOT / config_path)
    si, f = config.sound_image, config.features
    if si.threads:                     # as vae.py train-images runs it (both methods alike)
        torch.set_num_threads(si.threads)
    shape = (f.n_fft // 2 if f.kind == "stft" else f.n_mels, f.n_frames)
    size, batch = f.image_size, si.batch_size
    torch.manual_seed(0)
    sound = torch.rand(batch, 1, *shape)
    image = torch.rand(batch, 3, size, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "pairs":
        model = SoundImageVAE(si, shape, size)

        def loss_fn():
            return pair_loss(model, sound, image, beta=si.beta, image_weight=si.image_weight)
    else:
        model = VAE(ModelConfig(latent_dim=si.latent_dim, channels=list(si.sound_channels),
                                conditional=False, latent_frames=0, pitch_candidates=0),
                    shape, 1)

        def loss_fn():
            x_hat, mu, logvar = model(sound)
            return vae_loss(x_hat, sound, mu, logvar, reconstruction=ReconstructionLoss("l1"),
                            beta=si.beta).loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=si.lr)

    def step():
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(STEPS):
            step()
        best = min(best, time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"per_s": STEPS * batch / best, "peak_mb": (peak - before) / 1024,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "shape": list(shape), "size": size, "batch": batch,
            "threads": torch.get_num_threads()}


def _run(config_path: str, kind: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", config_path, kind],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    start = time.monotonic()
    rows = []
    for label, path in (("demo (`configs/demo.yaml`)", "configs/demo.yaml"),
                        ("default (`config.yaml`)", "config.yaml")):
        pairs, alone = _run(path, "pairs"), _run(path, "sound")
        rows.append((label, pairs, alone))
    threads = ", ".join(f"{label.split(' ')[0]} {p['threads']}" for label, p, _ in rows)
    lines = ["## Stage 5: sound -> image training throughput and memory (vae.py train-images)",
             "",
             f"Training steps on the CPU (torch threads: {threads}, as `sound_image.threads` "
             "sets them): forward of three posteriors, "
             "loss, backward, clip, AdamW step on random pairs in memory; best of "
             f"{ROUNDS} rounds of {STEPS} steps after a warm-up. Peak memory: growth of the "
             "process's peak resident set from before the model is built to the end (torch's "
             "import not counted). Baseline: the spectrogram VAE alone, same spectrograms, "
             "batch and latent size.",
             "",
             "| config | spectrogram | image | batch | parameters | pairs/s | peak memory | "
             "spectrogram VAE alone: samples/s | its peak memory | pairs/s vs alone |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, p, a in rows:
        lines.append(f"| {label} | {p['shape'][0]}x{p['shape'][1]} | {p['size']} px | "
                     f"{p['batch']} | {p['params_m']:.2f} M | {p['per_s']:.1f} | "
                     f"{p['peak_mb']:.0f} MB | {a['per_s']:.1f} | {a['peak_mb']:.0f} MB | "
                     f"{p['per_s'] / a['per_s']:.2f}x |")
    costs = " and ".join(f"{a['per_s'] / p['per_s']:.1f}x ({label.split(' ')[0]})"
                         for label, p, a in rows)
    lines += ["",
              f"A training pair costs {costs} the time of a spectrogram-VAE sample: each pair "
              "decodes two spectrograms (from the joint and the sound-only posterior) and three "
              "images, and the spectrogram decodes are the larger part.",
              "",
              "Measured on a CPU shared with other work: timings are noisy "
              f"(this run took {time.monotonic() - start:.0f} s).",
              "",
              "Command: `.venv/bin/python bench/bench_images.py`"]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "bench" / "results" / "images.md").write_text(text)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(_measure(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    sys.exit(main())
