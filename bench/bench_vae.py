#!/usr/bin/env python3
"""Stage 5 speed: VAE training throughput vs the original architecture, and Griffin-Lim.

Training, on random spectrograms in memory (speed does not depend on the values), one optimiser
step = forward + loss + backward + clip + AdamW step, timed after a warm-up:

- ours: :class:`animalvae.sound.model.VAE` at the default config (``model.*``, ``train.batch_size``)
  on whole 3 s spectrograms (512 x 256), with :func:`animalvae.sound.train.vae_loss`;
- ours with ``model.channels: [16, 32, 64, 128, 256]`` (wider, one block fewer), to show what
  the default choice buys;
- ours with the decoder's last layer computed by ``nn.ConvTranspose2d`` (the same weights),
  to show what computing it as a sub-pixel convolution buys;
- ours with ``model.repeat_edges: false`` (the decoder meets its zero padding at a clip's ends),
  to show what repeating the code's edge positions costs;
- original: the ``VAE.py`` architecture of the original scripts, re-implemented here layer for
  layer (a 512-channel 5x5 first conv, BatchNorm, hard-coded 32*31*3 flatten, mirrored
  transposed convs), on its 512 x 64 crops (64 frames of hop 512 at 48 kHz = 0.68 s),
  batch 2, summed squared error + 1e-5 * KL, Adam.

Throughput is reported as samples/s and as audio-seconds/s (samples/s times the seconds one
spectrogram covers), the fair unit when the two models see different lengths. Methods are
timed in interleaved rounds and the best round counts (the machine is shared: other work only
ever slows a round down), with torch's default threads and again with one thread, which is
less disturbed by other processes.

Griffin-Lim, 16 generated animal-like calls as default-config spectrograms, equal iterations
(32) and momentum (0.99): ours (:class:`animalvae.spectrogram.InverseSpectrogram`, one batched
call, torch) vs ``librosa.griffinlim`` one spectrogram at a time. Both results are also scored
by spectral convergence against the input, so speed is not bought with quality.

Prints a Markdown section and writes it to ``bench/results/vae.md``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from animalvae.config import ModelConfig, load_config  # noqa: E402
from animalvae.sound.losses import ReconstructionLoss  # noqa: E402
from animalvae.sound.model import VAE  # noqa: E402
from animalvae.sound.train import pitch_term, vae_loss  # noqa: E402
from animalvae.spectrogram import (  # noqa: E402
    InverseSpectrogram,
    Spectrogram,
    SpectrogramSpec,
    spectral_convergence,
)

ORIGINAL_SECONDS = 64 * 512 / 48000  # 64 frames, hop 512, 48 kHz
ROUNDS = 3


# --------------------------------------------------------------------------------------------
# The original architecture (VAE.py of the original scripts), layer for layer
# --------------------------------------------------------------------------------------------

class OriginalEncoder(nn.Module):
    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 512, (5, 5), stride=(2, 2))
        self.batch1 = nn.BatchNorm2d(512)
        self.conv2 = nn.Conv2d(512, 256, (3, 3), stride=(2, 2))
        self.batch2 = nn.BatchNorm2d(256)
        self.conv3 = nn.Conv2d(256, 128, (3, 3), stride=(2, 2))
        self.batch3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 64, (2, 2), stride=(2, 2))
        self.batch4 = nn.BatchNorm2d(64)
        self.conv5 = nn.Conv2d(64, 32, (1, 1), stride=(1, 1))
        self.mu = nn.Linear(32 * 31 * 3, latent_dim)
        self.var = nn.Linear(32 * 31 * 3, latent_dim)
        self.kl = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.batch1(self.conv1(x)))
        x = F.relu(self.batch2(self.conv2(x)))
        x = F.relu(self.batch3(self.conv3(x)))
        x = F.relu(self.batch4(self.conv4(x)))
        x = F.relu(self.conv5(x))
        x = torch.flatten(x, start_dim=1)
        mu = self.mu(x)
        sigma = torch.exp(self.var(x))
        z = mu + sigma * torch.randn_like(mu)
        self.kl = (sigma ** 2 + mu ** 2 - torch.log(sigma) - 1 / 2).sum()  # as written there
        return z


class OriginalDecoder(nn.Module):
    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.decoder_lin = nn.Sequential(nn.Linear(latent_dim, 128), nn.ReLU(True),
                                         nn.Linear(128, 32 * 31 * 3), nn.ReLU(True))
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(32, 31, 3))
        self.dec1 = nn.ConvTranspose2d(32, 64, (1, 1), stride=(1, 1))
        self.batch1 = nn.BatchNorm2d(64)
        self.dec2 = nn.ConvTranspose2d(64, 128, (2, 2), stride=(2, 2))
        self.batch2 = nn.BatchNorm2d(128)
        self.dec3 = nn.ConvTranspose2d(128, 256, (3, 3), stride=(2, 2), output_padding=1)
        self.batch3 = nn.BatchNorm2d(256)
        self.dec4 = nn.ConvTranspose2d(256, 512, (3, 3), stride=(2, 2), output_padding=1)
        self.batch4 = nn.BatchNorm2d(512)
        self.dec5 = nn.ConvTranspose2d(512, 1, (5, 5), stride=(2, 2), output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unflatten(self.decoder_lin(x))
        x = F.relu(self.batch1(self.dec1(x)))
        x = F.relu(self.batch2(self.dec2(x)))
        x = F.relu(self.batch3(self.dec3(x)))
        x = F.relu(self.batch4(self.dec4(x)))
        return torch.sigmoid(self.dec5(x))


class OriginalVAE(nn.Module):
    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.encoder = OriginalEncoder(latent_dim)
        self.decoder = OriginalDecoder(latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# --------------------------------------------------------------------------------------------
# Training throughput
# --------------------------------------------------------------------------------------------

def ours_step(model_config: ModelConfig, spec: SpectrogramSpec, batch_size: int,
              reconstruction: ReconstructionLoss, pitch_weight: float,
              n_groups: int = 3, *, plain_last_layer: bool = False) -> Callable[[], None]:
    """One training step of our VAE, as ``train.train`` does it on the CPU (with the pitch
    term when the model has the comb); with ``plain_last_layer``, the decoder's last layer
    computed by ``nn.ConvTranspose2d`` itself instead of as a sub-pixel convolution."""
    model = VAE(model_config, spec.shape, n_groups)
    if plain_last_layer:
        layer = model.decoder.to_image
        plain = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                   stride=layer.stride, padding=layer.padding)
        plain.load_state_dict(layer.state_dict())
        model.decoder.to_image = plain
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.rand(batch_size, 1, *spec.shape)
    y = torch.randint(0, n_groups, (batch_size,))

    def step() -> None:
        x_hat, mu, logvar, logits = model(x, y)
        terms = vae_loss(x_hat, x, mu, logvar, reconstruction=reconstruction, beta=1.0)
        loss = terms.loss + pitch_term(logits, x, model.decoder.combs, weight=pitch_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def original_step(batch_size: int = 2) -> Callable[[], None]:
    """One training step of the original script's loop (loss as written there)."""
    model = OriginalVAE(20)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    x = torch.rand(batch_size, 1, 512, 64)

    def step() -> None:
        x_hat = model(x)
        loss = ((x - x_hat).abs() ** 2).sum() + model.encoder.kl.sum() * 1e-5
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def time_steps(step: Callable[[], None], n: int) -> float:
    """Seconds per step over ``n`` steps."""
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def bench_training(threads: int) -> tuple[list[dict], str]:
    config = load_config()
    spec = SpectrogramSpec.from_config(config.features, config.extract.sample_rate)
    batch = config.train.batch_size
    wide = ModelConfig(latent_dim=config.model.latent_dim, channels=[16, 32, 64, 128, 256],
                       conditional=True, embed_dim=config.model.embed_dim)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reconstruction = ReconstructionLoss.from_config(config.train, top_db=spec.top_db)
    pitch = config.train.pitch_weight
    methods = {
        "ours": (ours_step(config.model, spec, batch, reconstruction, pitch), batch,
                 spec.seconds, 3),
        "ours_plain": (ours_step(config.model, spec, batch, reconstruction, pitch,
                                 plain_last_layer=True), batch, spec.seconds, 3),
        "ours_no_edges": (ours_step(dataclasses.replace(config.model, repeat_edges=False), spec,
                                    batch, reconstruction, pitch), batch, spec.seconds, 3),
        "ours_wide": (ours_step(wide, spec, batch, reconstruction, pitch), batch, spec.seconds,
                      1),
        "original": (original_step(2), 2, ORIGINAL_SECONDS, 4),
    }
    for step, *_ in methods.values():  # warm-up: allocator, first-call kernels
        step()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(ROUNDS):
        for name, (step, _, _, n) in methods.items():
            times[name].append(time_steps(step, n))
    rows = []
    for name, (_, bs, seconds, _) in methods.items():
        per_step = min(times[name])
        rows.append({"name": name, "batch": bs, "seconds": seconds,
                     "samples_s": bs / per_step, "audio_s": bs * seconds / per_step})
    return rows, (f"default config: model.channels={config.model.channels}, "
                  f"latent_dim={config.model.latent_dim}, latent_frames="
                  f"{config.model.latent_frames}, train.spectral_weight="
                  f"{config.train.spectral_weight}, modulation_weight="
                  f"{config.train.modulation_weight}, model.pitch_candidates="
                  f"{config.model.pitch_candidates}, train.pitch_weight={pitch}, "
                  f"train.batch_size={batch}")


# --------------------------------------------------------------------------------------------
# Griffin-Lim: batched torch vs librosa per sample
# --------------------------------------------------------------------------------------------

def bench_griffin_lim(n: int = 16, n_iter: int = 32) -> dict:
    import librosa

    from animalvae.demo.synth import clip_audio

    spec = SpectrogramSpec()
    rng = np.random.default_rng(0)
    groups = ("dogs", "cats", "birds")
    y = np.stack([clip_audio(groups[i % 3], seconds=spec.seconds, sr=spec.sample_rate,
                             rng=rng)[0][:spec.n_samples] for i in range(n)])
    forward = Spectrogram(spec)
    x = forward(torch.from_numpy(y))                                # (n, 512, 256)
    inverse = InverseSpectrogram(spec, n_iter=n_iter, momentum=0.99)
    S = (inverse.magnitude(x) * (inverse.window.sum() / 2.0)).numpy()  # (n, 513, 256)
    S = np.concatenate([S, S[..., -1:]], axis=-1)                 # the frame stage 4 dropped

    def ours() -> np.ndarray:
        torch.manual_seed(0)
        return inverse(x).numpy()

    def per_sample() -> np.ndarray:
        return np.stack([librosa.griffinlim(
            S[i], n_iter=n_iter, hop_length=spec.hop_length, win_length=spec.n_fft,
            n_fft=spec.n_fft, window="hann", center=True, momentum=0.99, init="random",
            random_state=0, length=spec.n_samples) for i in range(n)])

    per_sample()  # warm-up (librosa/numba first calls)
    ours()
    threads = torch.get_num_threads()
    t_ours, t_one, t_lib = [], [], []
    for _ in range(3):
        start = time.perf_counter()
        y_ours = ours()
        t_ours.append(time.perf_counter() - start)
        torch.set_num_threads(1)  # also one thread, like numpy's FFT in librosa
        start = time.perf_counter()
        ours()
        t_one.append(time.perf_counter() - start)
        torch.set_num_threads(threads)
        start = time.perf_counter()
        y_lib = per_sample()
        t_lib.append(time.perf_counter() - start)

    def convergence(waves: np.ndarray) -> float:
        again = forward(torch.from_numpy(waves.astype(np.float32)))
        lin = lambda v: torch.pow(10.0, (v - 1.0) * spec.top_db / 20.0)  # noqa: E731
        return spectral_convergence(lin(x), lin(again)).mean().item()

    return {"n": n, "n_iter": n_iter, "ours_s": min(t_ours), "ours_one_s": min(t_one),
            "librosa_s": min(t_lib), "threads": threads,
            "sc_ours": convergence(y_ours), "sc_librosa": convergence(y_lib)}


def main() -> int:
    threads = torch.get_num_threads()
    start = time.perf_counter()
    rows, setting = bench_training(threads)
    rows_one, _ = bench_training(1)
    torch.set_num_threads(threads)
    gl = bench_griffin_lim()
    by = {r["name"]: r for r in rows}
    one = {r["name"]: r for r in rows_one}
    base = by["original"]["audio_s"]
    labels = {
        "original": "original `VAE.py` architecture, 512x64 crops (0.68 s), batch 2",
        "ours_wide": "ours, channels [16, 32, 64, 128, 256] (wider, 5 blocks), 512x256, "
                     f"batch {by['ours_wide']['batch']}",
        "ours_plain": "ours, default config with the decoder's last layer as "
                      "`nn.ConvTranspose2d` computes it (not as a sub-pixel convolution)",
        "ours_no_edges": "ours, default config without the repeated edge positions "
                         "(`model.repeat_edges: false`)",
        "ours": f"**ours, default config**, whole 3 s, 512x256, batch {by['ours']['batch']}",
    }
    lines = [
        "## Stage 5: VAE training throughput and Griffin-Lim (vae.py)",
        "",
        f"Training steps on the CPU (forward, loss, backward, clip, optimiser step), {setting}; "
        f"best of {ROUNDS} interleaved rounds after a warm-up, with {threads} thread(s) and "
        "with 1.",
        "",
        "| model | samples/s | audio-seconds/s | vs original | 1 thread: audio-seconds/s "
        "| 1 thread: vs original |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("original", "ours_wide", "ours_plain", "ours_no_edges", "ours"):
        r, r1 = by[name], one[name]
        lines.append(f"| {labels[name]} | {r['samples_s']:.1f} | {r['audio_s']:.1f} | "
                     f"{r['audio_s'] / base:.1f}x | {r1['audio_s']:.1f} | "
                     f"{r1['audio_s'] / one['original']['audio_s']:.1f}x |")
    ratio = by["ours"]["audio_s"] / base
    ratio_one = one["ours"]["audio_s"] / one["original"]["audio_s"]
    lines += [
        "",
        f"Ours at the default config trains on **{ratio:.0f}x** the original's audio-seconds "
        f"per second with {threads} thread(s) and **{ratio_one:.0f}x** with one (goal: >= 50x), "
        "on whole 3 s spectrograms instead of 0.68 s crops.",
        "",
        f"Griffin-Lim, {gl['n']} spectrograms of 3 s (512x256, n_fft 1024, hop 375), "
        f"{gl['n_iter']} iterations, momentum 0.99, best of 3 interleaved rounds:",
        "",
        "| method | seconds | spectrograms/s | spectral convergence | speed-up |",
        "|---|---:|---:|---:|---:|",
        f"| `librosa.griffinlim`, one spectrogram at a time | {gl['librosa_s']:.2f} | "
        f"{gl['n'] / gl['librosa_s']:.1f} | {gl['sc_librosa']:.3f} | 1.0x |",
        f"| ours, `InverseSpectrogram` (torchaudio), one batched call, {gl['threads']} "
        f"thread(s) | {gl['ours_s']:.2f} | {gl['n'] / gl['ours_s']:.1f} | {gl['sc_ours']:.3f} | "
        f"{gl['librosa_s'] / gl['ours_s']:.1f}x |",
        f"| ours, the same, 1 thread | {gl['ours_one_s']:.2f} | {gl['n'] / gl['ours_one_s']:.1f}"
        f" | {gl['sc_ours']:.3f} | {gl['librosa_s'] / gl['ours_one_s']:.1f}x |",
        "",
        f"Measured on {threads} CPU thread(s) shared with other work: timings are noisy "
        f"(this run took {time.perf_counter() - start:.0f} s). On a GPU, ours runs both "
        "training and Griffin-Lim on the device.",
        "",
        "Command: `.venv/bin/python bench/bench_vae.py`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / "vae.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
