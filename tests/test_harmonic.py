"""The harmonic comb output (animalvae/sound/harmonic.py): combs, pitch targets, the decoder
that draws them, and training that teaches the pitch head. Tiny shapes; a few seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from vae_runs import read_metrics, run_vae, write_tiny_config

from animalvae.config import ModelConfig
from animalvae.sound import harmonic
from animalvae.sound.model import VAE, load_model
from animalvae.sound.train import pitch_term


def harmonic_stack(spacing: float, *, n_bins: int = 512, n_frames: int = 16,
                   seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W): a falling envelope with a peak at every multiple of ``spacing`` rows and a
    little noise, as a normalised log spectrogram of a steady call draws it."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n_bins)[:, None]
    envelope = 0.5 * np.exp(-rows / 200.0)
    nearest = np.abs(rows - spacing * np.round(rows / spacing))      # rows to the nearest peak
    peaks = 0.4 * np.exp(-0.5 * nearest ** 2) * (rows >= spacing / 2)
    x = envelope + peaks + rng.uniform(0, 0.05, (n_bins, n_frames))
    return torch.tensor(np.clip(x, 0, 1), dtype=torch.float32)[None, None]


def test_each_comb_peaks_at_every_multiple_of_its_spacing_and_has_zero_mean():
    combs = harmonic.harmonic_combs(40, 512)
    spacings = harmonic.comb_spacings(40)
    assert spacings[0] == pytest.approx(harmonic.MIN_SPACING)
    assert spacings[-1] == pytest.approx(harmonic.MAX_SPACING)
    assert combs.mean(dim=1).abs().max() < 1e-5
    for comb, d in zip(combs, spacings.tolist()):
        for m in range(1, int(510 / d) + 1):
            peak = comb[round(m * d) - 1:round(m * d) + 2].max()       # within a row of m * d
            valley = comb[round((m - 0.5) * d) - 1:round((m - 0.5) * d) + 2].min()
            assert peak > valley + 0.3, (d, m)
        # narrow peaks: a comb of wide spacing is mostly valley
        if d >= 16:
            assert (comb > comb.min() + 0.5 * (comb.max() - comb.min())).float().mean() < 4 / d


def test_the_moving_average_is_avg_pool_without_the_padding():
    x = torch.rand(3, 5, 300, generator=torch.Generator().manual_seed(0))
    for width in (1, 3, 33):
        pooled = F.avg_pool1d(x.reshape(15, 1, 300), width, stride=1, padding=width // 2,
                              count_include_pad=False).reshape(3, 5, 300)
        assert torch.allclose(harmonic.moving_average(x, width), pooled, atol=1e-4), width


def test_the_comb_fit_reads_only_the_rows_it_needs_and_equals_the_whole_height_fit():
    x = torch.rand(2, 1, 512, 8, generator=torch.Generator().manual_seed(0))
    combs = harmonic.harmonic_combs(240, 512)
    frames = x[:, 0].transpose(1, 2)                                   # every row, avg_pool
    envelope = F.avg_pool1d(frames.reshape(16, 1, 512), 33, stride=1, padding=16,
                            count_include_pad=False).reshape(2, 8, 512)
    fine, basis = (frames - envelope)[..., 2:256], combs[:, 2:256]
    whole = torch.einsum("bwh,kh->bkw", fine, basis) / (
        fine.norm(dim=2)[:, None] * basis.norm(dim=1)[:, None])
    assert torch.allclose(harmonic.comb_correlation(x, combs), whole, atol=1e-5)


def test_pitch_targets_find_a_harmonic_stack_and_pass_over_noise():
    # 240 spacings, each 1.5 % from the next: a comb 3 % off misses the 20th harmonic by
    # more than a peak's width, and a comb at 5 times the spacing then fits better
    combs = harmonic.harmonic_combs(240, 512)
    spacings = harmonic.comb_spacings(240)
    for spacing in (4.5, 6.3, 10.4, 23.0, 70.0, 110.0):
        index, weight = harmonic.pitch_targets(harmonic_stack(spacing), combs)
        found = spacings[index]
        assert torch.all((found / spacing - 1).abs() < 0.03), (spacing, found)
        assert torch.all(weight == 1.0)
    noise = torch.rand(4, 1, 512, 16, generator=torch.Generator().manual_seed(0))
    _, weight = harmonic.pitch_targets(noise, combs)
    assert weight.mean() < 0.05                      # no clear pitch in noise: not taught


def decoder_with_a_fixed_pitch(k: int) -> VAE:
    """A tiny VAE whose decoder always picks comb ``k`` and draws it at a large gain over a
    flat base."""
    model = VAE(ModelConfig(latent_dim=8, channels=[4, 8], embed_dim=4, latent_frames=8,
                            pitch_candidates=24), (512, 32), 2)
    with torch.no_grad():
        last = model.decoder.pitch.net[-1]
        last.weight.zero_()
        last.bias.fill_(-50.0)
        last.bias[k] = 50.0
        model.decoder.to_image.weight.zero_()
        model.decoder.to_image.bias.copy_(torch.tensor([0.0, 5.0]))
    return model


def test_the_decoder_draws_the_comb_of_the_pitch_it_picks():
    k = 7
    model = decoder_with_a_fixed_pitch(k).eval()
    d = float(harmonic.comb_spacings(24)[k])
    with torch.no_grad():
        x = model.decode(torch.randn(2, 8), torch.tensor([0, 1]))
    assert x.shape == (2, 1, 512, 32) and 0 <= x.min() and x.max() <= 1
    for m in range(1, int(500 / d)):
        peak, valley = x[:, 0, round(m * d)], x[:, 0, round((m + 0.5) * d)]
        assert torch.all(peak > valley + 0.3), m
    # and the comb of the picked pitch fits what was drawn best
    index, weight = harmonic.pitch_targets(x, model.decoder.combs)
    assert torch.all(index == k) and torch.all(weight == 1.0)


def test_the_forward_pass_returns_the_pitch_logits_it_drew_the_comb_from():
    model = VAE(ModelConfig(latent_dim=8, channels=[4, 8], embed_dim=4, latent_frames=8,
                            pitch_candidates=24), (512, 32), 2).eval()
    x, y, noise = torch.rand(3, 1, 512, 32), torch.tensor([0, 1, 0]), torch.randn(3, 8)
    with torch.no_grad():
        x_hat, mu, logvar, logits = model(x, y, noise=noise)
        z = mu + torch.exp(0.5 * logvar) * noise
        drawn, drawn_logits = model.decoder.draw(z, model.decoder.condition(y))
    assert logits.shape == (3, 24, 8)
    assert torch.allclose(drawn, x_hat) and torch.allclose(drawn_logits, logits)


def test_the_pitch_loss_teaches_the_head_the_spacing_of_each_clip():
    torch.manual_seed(0)
    spacings = [5.0, 9.0, 17.0, 33.0]
    x = torch.cat([harmonic_stack(s, n_frames=32, seed=i) for i, s in enumerate(spacings)])
    y = torch.zeros(len(x), dtype=torch.long)
    model = VAE(ModelConfig(latent_dim=32, channels=[4, 8, 16], embed_dim=4, latent_frames=8,
                            pitch_candidates=240), (512, 32), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        noise = torch.zeros(len(x), 32)
        logits = model(x, y, noise=noise).pitch_logits
        loss = pitch_term(logits, x, model.decoder.combs, weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.9 * math.log(240)             # about uniform at the start
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        mu, _ = model.encode(x, y)
        picked = model.decoder.draw(mu, model.decoder.condition(y))[1].argmax(dim=1)
    found = harmonic.comb_spacings(240)[picked].median(dim=1).values
    assert torch.allclose(found, torch.tensor(spacings), rtol=0.03), found


def test_the_pitch_loss_is_a_mean_over_clips_so_torchrun_can_share_a_batch_out():
    # DDP averages the ranks' gradients of their shares' losses, each weighted by its share
    # of the batch (DistContext.shard): that is the whole batch's loss only for a per-clip mean
    combs = harmonic.harmonic_combs(240, 512)
    x = torch.cat([harmonic_stack(s, seed=i) for i, s in enumerate((5.0, 9.0, 17.0, 33.0))]
                  + [torch.rand(1, 1, 512, 16, generator=torch.Generator().manual_seed(0))])
    probs = torch.softmax(torch.randn(5, 240, 16, generator=torch.Generator().manual_seed(1)), 1)
    whole = harmonic.pitch_loss(probs, x, combs)
    shares = [harmonic.pitch_loss(probs[a:b], x[a:b], combs) * (b - a) for a, b in ((0, 3), (3, 5))]
    assert whole > 0 and torch.allclose(whole, sum(shares) / 5)


def test_samples_draw_the_comb_at_generate_pitch_temperature_reconstructions_at_the_models():
    from animalvae.config import Config
    from animalvae.sound.sampler import Sampler, restore_peak

    model = decoder_with_a_fixed_pitch(7).eval()
    with torch.no_grad():                      # a head that prefers high spacings, not surely
        model.decoder.pitch.net[-1].bias.copy_(torch.linspace(0.0, 6.0, 24))
    config = Config()
    assert config.generate.sample_pitch_temperature != model.decoder.pitch_temperature
    z, groups = torch.randn(3, 8), torch.tensor([0, 1, 0])
    cond = model.decoder.condition(groups)
    sampled = Sampler({}).decode(model, z, groups, config, sampled=True)
    encoded = Sampler({}).decode(model, z, groups, config)
    with torch.no_grad():
        at_generate = model.decoder(
            z, cond, pitch_temperature=config.generate.sample_pitch_temperature)
        at_model = model.decoder(z, cond)
    assert torch.equal(sampled, restore_peak(at_generate[:, 0]))
    assert torch.equal(encoded, restore_peak(at_model[:, 0]))
    assert (sampled - encoded).abs().max() > 0.05      # the temperature shows in the comb


def test_training_with_the_pitch_comb_runs_end_to_end(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=2)
    comb = ["--set", "model.pitch_candidates=24"]
    # the same run with the pitch term weighted 0: every figure but the pitch term equal
    assert run_vae(["train", "--config", str(config), *comb, "--run", str(tmp_path / "w0"),
                    "--set", "train.pitch_weight=0"], capsys)[0] == 0
    pitch = [*comb, "--set", "train.pitch_weight=0.3"]
    assert run_vae(["train", "--config", str(config), *pitch], capsys)[0] == 0
    run = tmp_path / "runs" / "default"
    rows, unweighted = read_metrics(run), read_metrics(tmp_path / "w0")
    assert len(rows) == 2 and all(math.isfinite(r["val_loss"]) for r in rows)
    # the pitch term is in the loss that is trained and validated (cross-entropy > 0)
    assert rows[0]["train_loss"] > unweighted[0]["train_loss"] + 0.01
    assert rows[0]["val_loss"] > unweighted[0]["val_loss"] + 0.01
    loaded = load_model(run / "model.pth")
    assert loaded.model.config.pitch_candidates == 24
    assert loaded.model.decoder.combs.shape == (24, 64)
    assert run_vae(["generate", "--config", str(config), *pitch], capsys)[0] == 0
    assert len(list((run / "samples").glob("*.wav"))) == 4
    # the loss settings (pitch weight included) are recorded for --resume
    assert torch.load(run / "last.pth", weights_only=True)["loss"]["pitch_weight"] == 0.3


def test_pitch_settings_are_checked():
    from animalvae.config import GenerateConfig

    problems = "; ".join(ModelConfig(pitch_candidates=-1, pitch_temperature=0)._check())
    assert "model.pitch_candidates=-1 must be >= 0" in problems
    assert "model.pitch_temperature=0 must be > 0" in problems
    assert "generate.sample_pitch_temperature=0 must be > 0" in "; ".join(
        GenerateConfig(sample_pitch_temperature=0)._check())
