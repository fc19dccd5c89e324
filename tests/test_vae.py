"""Stage 5: the VAE, its training loop, model.pth, and generate/reconstruct/interpolate/evaluate.

Everything runs on the tiny generated spectrograms and tiny model of ``tests/vae_runs.py``, so
the whole file takes seconds on a CPU.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor
from vae_runs import BANDS, COMMON, SPEC, make_data, read_metrics, run_vae, write_tiny_config

import vae
from animalvae.config import ModelConfig, TrainConfig, load_config
from animalvae.errors import ConfigError
from animalvae.sound import train as train_mod
from animalvae.sound.losses import ReconstructionLoss
from animalvae.sound.model import VAE, SubPixelConvTranspose2d, kl_divergence, load_model
from animalvae.spectrogram import SpectrogramSpec, save_spec
from animalvae.stage import Item
from animalvae.training import dataset as dataset_mod
from animalvae.training import loop


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    y, sr = sf.read(path, dtype="float32")
    assert np.isfinite(y).all() and np.abs(y).max() > 0.1, f"{path} is silent or not finite"
    return y, sr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One conditional run shared by the read-only tests: (config path, run folder)."""
    tmp = tmp_path_factory.mktemp("trained")
    config = write_tiny_config(tmp, epochs=8)
    assert vae.main(["train", "--config", str(config), "-q"]) == 0
    return config, tmp / "runs" / "default"


# --------------------------------------------------------------------------------------------
# Model and loss
# --------------------------------------------------------------------------------------------

def test_vae_shapes_and_the_encoder_alone():
    model = VAE(ModelConfig(latent_dim=8, channels=[4, 8, 16], embed_dim=4, latent_frames=0,
                            pitch_candidates=0), (64, 32), 3)
    x, y = torch.rand(5, 1, 64, 32), torch.tensor([0, 1, 2, 1, 0])
    x_hat, mu, logvar, logits = model(x, y)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (5, 8)
    assert 0 <= x_hat.min() and x_hat.max() <= 1
    assert logits is None                                    # no pitch comb: no pitch logits
    assert train_mod.pitch_term(None, x, None, weight=0.3) == 0  # and no pitch term
    assert model.encoder.features(x).shape == (5, 16 * 8 * 4)  # no label needed
    assert model.encoder.feature_shape == (16, 8, 4)
    with pytest.raises(ValueError, match="conditional"):
        model.encoder(x)


def test_a_latent_with_a_time_axis_keeps_each_code_at_its_time():
    # channel norm: no statistic spans positions, so the decoder's locality is exact
    config = ModelConfig(latent_dim=16, channels=[4, 8, 16], embed_dim=4, latent_frames=8,
                         decoder_norm="channel")
    model = VAE(config, (64, 32), 2).eval()
    assert model.encoder.feature_shape == (16, 8, 8)    # time halved twice, to 8 positions
    x, y = torch.rand(3, 1, 64, 32), torch.tensor([0, 1, 0])
    x_hat, mu, logvar, _ = model(x, y)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (3, 16)
    # z is (values per position, position) flattened: changing the codes of the first
    # position changes the first frames of the output and leaves the last ones as they were
    z = torch.randn(1, 16)
    moved = z.view(1, 2, 8).clone()
    moved[:, :, 0] += 3.0
    with torch.no_grad():
        a = model.decode(z, y[:1])[0, 0]
        b = model.decode(moved.flatten(1), y[:1])[0, 0]
    assert (a[:, :4] - b[:, :4]).abs().max() > 1e-3
    assert torch.equal(a[:, -8:], b[:, -8:])


@pytest.mark.parametrize("pitch_candidates", [0, 16])
def test_a_code_that_is_the_same_at_every_time_decodes_with_no_stripe_at_the_edges(
        pitch_candidates):
    # nothing in such a code tells one time from another: every frame of its spectrogram
    # repeats the interior's period (8 frames per position), the first and last ones too,
    # as long as the repeated edge positions keep the convolutions' zero padding out of reach
    # of every frame kept after each layer
    def decode(repeat_edges: bool) -> Tensor:
        torch.manual_seed(0)
        config = ModelConfig(latent_dim=32, channels=[4, 8, 16, 32], embed_dim=4,
                             latent_frames=8, repeat_edges=repeat_edges,
                             pitch_candidates=pitch_candidates)
        model = VAE(config, (64, 64), 2).eval()
        z = torch.randn(1, 4, 1).expand(1, 4, 8).flatten(1)     # (values, position) flat
        with torch.no_grad():
            return model.decode(z, torch.tensor([0]))[0, 0]    # (64, 64)

    def off_period(x: Tensor) -> float:
        return (x - x[:, 24:32].repeat(1, 8)).abs().max().item()

    assert off_period(decode(repeat_edges=True)) < 1e-6
    assert off_period(decode(repeat_edges=False)) > 0.05          # the stripes it removes


@pytest.mark.parametrize("frames, message", [
    (3, r"latent_frames=3 must be a power of two that divides model\.latent_dim=12"),
    (8, r"latent_frames=8 must be a power of two that divides model\.latent_dim=12"),
    (-1, r"latent_frames=-1 must be >= 0")])
def test_latent_frames_that_cannot_split_the_latent_are_config_errors(frames, message):
    assert re.search(message, "; ".join(ModelConfig(latent_dim=12, latent_frames=frames)._check()))


def test_latent_frames_beyond_what_the_blocks_leave_is_a_config_error():
    with pytest.raises(ConfigError, match=r"latent_frames=2 does not fit 32 spectrogram frames "
                                          r"and 3 stride-2 blocks .* between 4 and 32"):
        VAE(ModelConfig(latent_dim=8, channels=[4, 8, 16], latent_frames=2), (64, 32), 2)
    with pytest.raises(ConfigError, match=r"latent_frames=64 does not fit"):
        VAE(ModelConfig(latent_dim=64, channels=[4, 8, 16], latent_frames=64), (64, 32), 2)


@pytest.mark.parametrize("kernel, stride", [((4, 4), (2, 2)), ((4, 3), (2, 1))])
def test_sub_pixel_layer_is_the_transposed_convolution_it_replaces(kernel, stride):
    torch.manual_seed(0)
    fast = SubPixelConvTranspose2d(3, 2, kernel, stride=stride, padding=1)
    plain = torch.nn.ConvTranspose2d(3, 2, kernel, stride=stride, padding=1)
    plain.load_state_dict(fast.state_dict())              # the same keys and shapes
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    y_fast, y_plain = fast(x), plain(x)
    assert y_fast.shape == y_plain.shape == (2, 2, 6 * stride[0], 5 * stride[1])
    assert torch.allclose(y_fast, y_plain, atol=1e-5)
    grad = torch.randn_like(y_plain)
    g_fast = torch.autograd.grad(y_fast, [x, fast.weight, fast.bias], grad)
    g_plain = torch.autograd.grad(y_plain, [x, plain.weight, plain.bias], grad)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_fast, g_plain))
    with pytest.raises(ValueError, match="3-tap"):
        SubPixelConvTranspose2d(3, 2, (6, 6), stride=(2, 2), padding=1)


def test_indivisible_shape_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.channels=\[4, 8, 16\] .* divisible by 2\*\*3"):
        VAE(ModelConfig(latent_dim=8, channels=[4, 8, 16], latent_frames=0), (64, 36), 2)


def test_kl_is_the_gaussian_kl():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0, 1))
    torch.testing.assert_close(kl_divergence(mu, logvar), expected)
    assert kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0


def test_loss_terms_and_schedules():
    x = torch.rand(2, 1, 8, 4)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    mu[:, 0] = 1.0                                     # KL 0.5 nats in dimension 0 only
    terms = train_mod.vae_loss(x, x, mu, logvar, reconstruction=ReconstructionLoss("l1"), beta=2.0)
    assert terms.recon == 0 and terms.kl.item() == pytest.approx(0.5)
    assert terms.loss.item() == pytest.approx(2.0 * 0.5 / 32)
    lrs = [loop.lr_at(s, lr=1.0, warmup_steps=4, total_steps=20) for s in range(21)]
    assert lrs[:4] == sorted(lrs[:4]) and max(lrs) == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(0.1) and lrs[4:] == sorted(lrs[4:], reverse=True)
    assert [loop.beta_at(s, beta=2.0, warmup_steps=4) for s in (0, 2, 4, 9)] == \
        [0.0, 1.0, 2.0, 2.0]
    assert loop.beta_at(0, beta=2.0, warmup_steps=0) == 2.0


def test_spectral_convergence_weighs_loud_pixels_and_joins_the_loss():
    from animalvae.sound.losses import spectral_loss

    x = torch.full((1, 1, 8, 8), 0.5)                    # -40 dB everywhere
    x[0, 0, 2, 3] = 1.0                                  # one peak at 0 dB
    dim_peak, dim_floor = x.clone(), x.clone()
    dim_peak[0, 0, 2, 3] = 0.75                          # the peak 20 dB too low
    dim_floor[0, 0, 5, 5] = 0.25                         # a quiet pixel 20 dB too low
    # the same per-pixel error, but only the lost peak is a large spectral error
    assert (dim_peak - x).abs().sum() == (dim_floor - x).abs().sum()
    peak = spectral_loss(dim_peak, x, top_db=80.0, scales=(1,))
    floor = spectral_loss(dim_floor, x, top_db=80.0, scales=(1,))
    assert peak > 0.5 > 0.01 > floor > 0
    # the coarser scales see the same error spread over pooled cells
    assert spectral_loss(dim_peak, x, top_db=80.0, scales=(1, 2, 4)) > 0
    mu, logvar = torch.zeros(1, 3), torch.zeros(1, 3)
    plain = train_mod.vae_loss(dim_peak, x, mu, logvar, reconstruction=ReconstructionLoss("l1"),
                               beta=1.0)
    both = train_mod.vae_loss(dim_peak, x, mu, logvar, beta=1.0,
                              reconstruction=ReconstructionLoss("l1", spectral_weight=0.5))
    assert both.recon == plain.recon                     # recon stays the per-pixel figure
    assert both.loss.item() == pytest.approx(
        plain.loss.item() + 0.5 * spectral_loss(dim_peak, x, top_db=80.0).item())


def test_modulation_term_asks_for_the_fluctuation_not_the_timing():
    from animalvae.sound.losses import modulation_loss

    # a trill: one band pulsing every 8 frames over a quiet floor
    x = torch.full((1, 1, 16, 64), 0.2)
    x[0, 0, 4:8, ::8] = 0.9
    late = torch.roll(x, 4, dims=3)                     # the same trill, half a period late
    blob = x.mean(dim=3, keepdim=True).expand_as(x)     # its average over time: no pulses
    # per pixel, a decoder unsure of the timing does best with the blob ...
    assert (blob - x).abs().mean() < (late - x).abs().mean()
    # ... which the modulation term scores as missing all the fluctuation, the late trill none
    assert modulation_loss(late, x).item() < 1e-5
    assert modulation_loss(blob, x).item() == pytest.approx(1.0)
    both = ReconstructionLoss("l1", modulation_weight=1.0)
    assert both(late, x)[0] < both(blob, x)[0]
    assert both(blob, x)[1] == (blob - x).abs().mean()  # the logged figure stays per pixel
    # a silent target is scored against a floor, not its own zero fluctuation
    silent = torch.zeros_like(x)
    near = 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    assert 0 < modulation_loss(near, silent).item() < 2
    # a height the bands do not divide: the top band takes the rows left over
    assert modulation_loss(late[:, :, :15], x[:, :, :15]).item() < 1e-5
    assert modulation_loss(blob[:, :, :15], x[:, :, :15]).item() == pytest.approx(1.0)
    # tapered (train.modulation_taper): a shift in time is near free, no fluctuation scores 1
    ramp = torch.linspace(0, 1, 64).expand(1, 1, 16, 64)
    flat = ramp.mean(dim=3, keepdim=True).expand_as(ramp)
    tapered = ReconstructionLoss.from_config(TrainConfig(modulation_taper=True), top_db=80.0)
    assert tapered.modulation_taper and not ReconstructionLoss().modulation_taper
    plain_term = ReconstructionLoss("l1", modulation_weight=1.0)
    tapered_term = ReconstructionLoss("l1", modulation_weight=1.0, modulation_taper=True)
    tapered_loss, tapered_pixel = tapered_term(ramp, flat)
    torch.testing.assert_close(tapered_loss - tapered_pixel,
                               modulation_loss(ramp, flat, taper=True))
    assert tapered_loss != plain_term(ramp, flat)[0]
    assert (modulation_loss(flat, ramp, taper=True) == 1.0) and (
        modulation_loss(late, x, taper=True).item() < 0.01)


def test_split_is_stratified_repeatable_and_disjoint():
    items = [Item(f"{g}{i}", g, f"/x/{g}{i}.npy") for g, n in (("a", 10), ("b", 5), ("c", 1))
             for i in range(n)]
    train, val = dataset_mod.split_items(items, val_fraction=0.2, seed=0)
    assert {it.id for it in train}.isdisjoint({it.id for it in val})
    assert len(train) + len(val) == 16
    assert sorted(it.group for it in val) == ["a", "a", "b"]   # c has one file: training only
    assert dataset_mod.split_items(items, val_fraction=0.2, seed=0) == (train, val)
    assert dataset_mod.split_items(items, val_fraction=0.2, seed=1)[1] != val


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def test_training_writes_the_run_and_the_loss_falls(trained):
    _, run = trained
    for name in ("model.pth", "last.pth", "metrics.csv", "loss.png", "split.csv",
                 "settings.yaml"):
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    # the per-pixel error; the modulation term trades some of it on this noisy floor for
    # the floor's fluctuation (0.48 of the first epoch's without it, 0.70 with it)
    assert rows[-1]["train_recon"] < 0.8 * rows[0]["train_recon"]
    assert rows[-1]["val_recon"] < 0.8 * rows[0]["val_recon"]
    assert rows[-1]["val_loss"] < rows[1]["val_loss"]
    assert all(r["train_kl"] > 0 and r["val_kl"] > 0 for r in rows)   # both terms logged
    assert rows[0]["beta"] < rows[1]["beta"] == 1.0 and rows[-1]["lr"] < rows[1]["lr"]
    with (run / "split.csv").open() as fh:
        split = list(csv.DictReader(fh))
    val = [r for r in split if r["split"] == "val"]
    assert sorted(r["group"] for r in val) == ["birds", "birds", "dogs", "dogs"]
    assert len({r["id"] for r in split}) == 20


def test_model_pth_round_trips_with_weights_only(trained):
    _, run = trained
    data = torch.load(run / "model.pth", weights_only=True)
    assert data["groups"] == ["birds", "dogs"] and data["shape"] == [64, 32]
    assert SpectrogramSpec.from_dict(data["spec"]) == SPEC
    assert data["model_config"]["channels"] == [4, 8] and "torch" in data["versions"]
    assert data["config"]["train"]["epochs"] == 8
    last = torch.load(run / "last.pth", weights_only=True)
    assert {"optimizer", "rng", "epoch", "step", "best_val", "scheduler"} <= set(last)
    loaded = load_model(run / "model.pth")
    x = torch.rand(2, 1, 64, 32)
    mu, _ = loaded.model.encode(x, torch.tensor([0, 1]))
    model = VAE(ModelConfig(latent_dim=8, channels=[4, 8], embed_dim=4, latent_frames=8,
                            pitch_candidates=0), (64, 32), 2)
    model.load_state_dict(data["model"])
    torch.testing.assert_close(model.encode(x, torch.tensor([0, 1]))[0], mu)


def test_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    data = make_data(tmp_path / "spectrograms")
    config = write_tiny_config(tmp_path, epochs=3, data=data)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_vae(["train", "--config", str(config), "--run", str(whole)], capsys)[0] == 0
    # 16 training files, batch 4: stop in the middle of epoch 2, then go on
    assert run_vae(["train", "--config", str(config), "--run", str(parts),
                    "--set", "train.max_steps=6"], capsys)[0] == 0
    first = torch.load(parts / "last.pth", weights_only=True)
    assert (first["epoch"], first["batch"], first["step"]) == (1, 2, 6)
    assert run_vae(["train", "--config", str(config), "--run", str(parts), "--resume"],
                   capsys)[0] == 0
    a = torch.load(whole / "last.pth", weights_only=True)
    b = torch.load(parts / "last.pth", weights_only=True)
    assert a["step"] == b["step"] == 12
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6)
    for key, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][key]["exp_avg"], state["exp_avg"],
                                   rtol=0, atol=1e-6)
    assert a["best_val"] == pytest.approx(b["best_val"], abs=1e-7)
    whole_rows = read_metrics(whole)
    parts_rows = [r for r in read_metrics(parts) if r["epoch"] == int(r["epoch"])]
    assert [r["val_loss"] for r in parts_rows] == pytest.approx(
        [r["val_loss"] for r in whole_rows], abs=1e-6)
    assert [r["train_loss"] for r in parts_rows] == pytest.approx(
        [r["train_loss"] for r in whole_rows], abs=1e-6)


def test_resume_with_other_loss_settings_starts_the_best_epoch_afresh(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=2)
    run = tmp_path / "runs" / "default"
    assert run_vae(["train", "--config", str(config), "--set", "train.max_steps=4"],
                   capsys)[0] == 0
    assert torch.load(run / "last.pth", weights_only=True)["loss"]["modulation_weight"] == 0.5
    # a much larger weight: every new validation loss is worse than the recorded best
    code, err = run_vae(["train", "--config", str(config), "--resume",
                         "--set", "train.modulation_weight=50"], capsys)
    assert code == 0 and "other reconstruction-loss settings" in err
    model = torch.load(run / "model.pth", weights_only=True)
    last = torch.load(run / "last.pth", weights_only=True)
    assert model["step"] == last["step"] == 8                  # the new epoch is the best
    assert last["loss"]["modulation_weight"] == 50


def test_a_used_run_folder_needs_resume_or_force(trained, capsys):
    config, _ = trained
    code, err = run_vae(["train", "--config", str(config)], capsys)
    assert code == 2 and "already holds a training run" in err and "--resume" in err


def test_resume_without_last_pth(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    code, err = run_vae(["train", "--config", str(config), "--resume"], capsys)
    assert code == 2 and "last.pth not found" in err


def test_limit_caps_the_files_and_keeps_every_group(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=1)
    assert run_vae(["train", "--config", str(config), "--limit", "6"], capsys)[0] == 0
    with (tmp_path / "runs" / "default" / "split.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["group"] for r in rows} == {"birds", "dogs"}


@pytest.mark.parametrize("case, message", [
    ("missing", r"spectrogram folder .* does not exist"),
    ("empty", r"has no \.npy files"),
    ("no_normalizer", r"normalizer\.json not found"),
    ("one_file", r"training needs at least 2"),
    ("bad_array", r"has shape \(3, 3\), but the model's spectrograms are \(64, 32\)"),
])
def test_bad_training_input_is_a_clear_error(tmp_path, capsys, case, message):
    data = tmp_path / "spectrograms"
    if case != "missing":
        data.mkdir()
    if case in ("no_normalizer", "one_file", "bad_array"):
        (data / "dogs").mkdir()
        np.save(data / "dogs" / "a.npy", np.zeros((64, 32), np.float16))
    if case in ("one_file", "bad_array"):
        save_spec(data, SPEC)
    if case == "bad_array":
        np.save(data / "dogs" / "b.npy", np.zeros((3, 3), np.float16))
    config = write_tiny_config(tmp_path, data=data)
    code, err = run_vae(["train", "--config", str(config)], capsys)
    assert code == 2 and re.search(message, err), err
    assert "Traceback" not in err


def test_a_nan_loss_stops_with_the_step(tmp_path, capsys, monkeypatch):
    config = write_tiny_config(tmp_path)
    real = train_mod.vae_loss
    calls = []

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the third training step (validation comes after step 4)
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(train_mod, "vae_loss", poisoned)
    code, err = run_vae(["train", "--config", str(config)], capsys)
    assert code == 1 and "Traceback" not in err     # a failed run, not a settings error
    assert "vae.py: error: training diverged: the loss is nan at epoch 1, step 3" in err
    assert not isinstance(loop.TrainingDiverged("x"), ConfigError)


def test_force_starts_over_only_once_the_new_data_checks_out(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=1)
    run = tmp_path / "runs" / "default"
    assert run_vae(["train", "--config", str(config)], capsys)[0] == 0
    assert run_vae(["generate", "--config", str(config), "--count", "1"], capsys)[0] == 0
    assert run_vae(["evaluate", "--config", str(config)], capsys)[0] == 0
    before = {name: (run / name).stat().st_mtime_ns for name in ("model.pth", "last.pth")}
    # a typo in --input: nothing of the earlier run may be lost
    code, err = run_vae(["train", "--config", str(config), "--force", "--input",
                         str(tmp_path / "typo_dir")], capsys)
    assert code == 2 and "does not exist" in err
    assert {name: (run / name).stat().st_mtime_ns for name in before} == before
    for name in ("split.csv", "metrics.csv", "metrics.json", "index.html",
                 "samples/dogs_0.wav"):
        assert (run / name).is_file(), name
    # starting over for real: the old model's samples and gallery go with it
    assert run_vae(["train", "--config", str(config), "--force"], capsys)[0] == 0
    assert (run / "model.pth").stat().st_mtime_ns != before["model.pth"]
    assert not (run / "samples").exists() and not (run / "index.html").exists()
    assert not (run / "metrics.json").exists()
    assert [r["epoch"] for r in read_metrics(run)] == [1.0]


# --------------------------------------------------------------------------------------------
# Using a trained run
# --------------------------------------------------------------------------------------------

def test_generate_writes_audio_pictures_and_the_gallery(trained, capsys):
    config, run = trained
    assert run_vae(["generate", "--config", str(config), "--count", "3"], capsys)[0] == 0
    for group in ("birds", "dogs"):
        for k in range(3):
            y, sr = read_wav(run / "samples" / f"{group}_{k}.wav")
            assert sr == SPEC.sample_rate and len(y) == SPEC.n_samples
            assert (run / "samples" / f"{group}_{k}.png").is_file()
    assert run_vae(["generate", "--config", str(config), "--group", "dogs", "--count", "1"],
                   capsys)[0] == 0
    assert not (run / "samples" / "dogs_2.wav").exists()     # the older dogs_* were replaced
    assert (run / "samples" / "birds_2.wav").exists()        # other groups are kept
    from PIL import Image
    with Image.open(run / "samples" / "dogs_0.png") as picture:   # time across, axes drawn
        assert picture.size == (400, 240)
    page = (run / "index.html").read_text()
    assert "height: auto" in page                                 # pictures keep their aspect
    links = re.findall(r'src="([^"]+)"', page)
    assert "samples/dogs_0.wav" in links and "samples/birds_2.png" in links
    assert all(not link.startswith("/") and (run / link).is_file() for link in links)
    code, err = run_vae(["generate", "--config", str(config), "--group", "cows"], capsys)
    assert code == 2 and "group 'cows' is not one this model was trained on" in err


def test_conditional_generation_honours_the_group(trained):
    _, run = trained
    loaded = load_model(run / "model.pth")
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = {g: loaded.model.decode(z, torch.full((16,), loaded.groups.index(g)))[:, 0]
             for g in BANDS}
    for group, band in BANDS.items():
        other = next(g for g in BANDS if g != group)
        # the group's own bright band is brighter than the same rows decoded for the other group
        assert x[group][:, band].mean() > x[other][:, band].mean() + 0.1, group


def test_reconstruct_uses_held_out_files_only(trained, capsys):
    config, run = trained
    assert run_vae(["reconstruct", "--config", str(config)], capsys)[0] == 0
    with (run / "split.csv").open() as fh:
        val = {r["id"] for r in csv.DictReader(fh) if r["split"] == "val"}
    pairs = sorted((run / "samples" / "reconstruct").glob("*/*_original.wav"))
    assert len(pairs) == 4 and {p.name.removesuffix("_original.wav") for p in pairs} == val
    for original in pairs:
        read_wav(original)
        read_wav(original.with_name(original.name.replace("_original", "_reconstruction")))
    assert "reconstruct/dogs/" in (run / "index.html").read_text()


def test_interpolate_between_a_spectrogram_and_a_wav(trained, tmp_path, capsys):
    config, run = trained
    data = run.parent.parent / "spectrograms"
    t = np.arange(SPEC.n_samples) / SPEC.sample_rate
    wav = tmp_path / "birds" / "-odd id.wav"   # a hostile name; the folder names the group
    wav.parent.mkdir()
    sf.write(wav, 0.5 * np.sin(2 * np.pi * 3000 * t[: SPEC.n_samples // 2]), 16000)
    code, _ = run_vae(["interpolate", "--config", str(config), str(data / "dogs" / "dogs-00.npy"),
                       str(wav), "--steps", "5"], capsys)
    assert code == 0
    folder = run / "samples" / "interpolate" / "dogs-00__-odd_id"
    assert sorted(p.name for p in folder.glob("*.wav")) == [f"{k}.wav" for k in range(5)]
    for path in folder.glob("*.wav"):
        read_wav(path)
    with pytest.raises(SystemExit) as stopped:   # argparse rejects it before any work
        run_vae(["interpolate", "--config", str(config), str(wav), str(wav), "--steps", "1"],
                capsys)
    assert stopped.value.code == 2
    assert "--steps: 1 must be >= 2 (both ends are included)" in capsys.readouterr().err
    stray = tmp_path / "elsewhere" / "x.npy"
    stray.parent.mkdir()
    np.save(stray, np.zeros((64, 32), np.float16))
    code, err = run_vae(["interpolate", "--config", str(config), str(stray), str(wav)], capsys)
    assert code == 2 and "cannot tell its group" in err


def test_evaluate_writes_metrics_json(trained, capsys):
    config, run = trained
    assert run_vae(["evaluate", "--config", str(config)], capsys)[0] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["files"] == 4 and metrics["latent_dim"] == 8
    for key in ("val_loss", "val_recon", "val_kl_nats", "val_elbo_nats",
                "log_spectral_distance_db", "spectral_convergence",
                "spectral_convergence_griffin_lim_only"):
        assert np.isfinite(metrics[key]), key
    assert metrics["val_elbo_nats"] < 0 < metrics["log_spectral_distance_db"]
    assert len(metrics["kl_per_dim"]) == 8 and 0 <= metrics["active_units"] <= 8
    assert sum(metrics["kl_per_dim"]) == pytest.approx(metrics["val_kl_nats"], rel=1e-4)
    assert "Evaluation (metrics.json)" in (run / "index.html").read_text()


def test_unconditional_model(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=1, conditional=False)
    assert run_vae(["train", "--config", str(config)], capsys)[0] == 0
    assert run_vae(["generate", "--config", str(config)], capsys)[0] == 0
    run = tmp_path / "runs" / "default"
    read_wav(run / "samples" / "all_1.wav")
    code, err = run_vae(["generate", "--config", str(config), "--group", "dogs"], capsys)
    assert code == 2 and "unconditional" in err


# --------------------------------------------------------------------------------------------
# Bad model files and mismatched data
# --------------------------------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content, message", [
    ("garbage", r"is not a model\.pth written by vae\.py train \(not a PyTorch checkpoint "
                r"\(damaged or another format\)\)$"),
    ("text", r"model\.pth is not a model\.pth written by vae\.py train \(not a PyTorch "
             r"checkpoint \(damaged or another format\)\)$"),
    ("empty", r"is not a model\.pth written by vae\.py train \(not a PyTorch checkpoint "
              r"\(empty file\)\)$"),
    ("random", r"is not a model\.pth written by vae\.py train \(not a PyTorch checkpoint "
               r"\(damaged or another format\)\)$"),
    ("pickle", r"is not a model\.pth written by vae\.py train \(cannot load it safely"),
    ("other", r"is not a model\.pth written by this version of vae\.py train \(format None"),
    ("newer", r"model\.pth is a model\.pth of format 'animalvae\.vae/4', newer than this "
              r"version of animalvae reads \('animalvae\.vae/3'\); update animalvae$"),
    ("older", r"model\.pth is a model\.pth of format 'animalvae\.vae/0', too old to upgrade "
              r"to 'animalvae\.vae/3'; retrain$"),
    ("image", r"is not a model\.pth written by this version of vae\.py train \(format "
              r"'animalvae\.sound_image/3', expected 'animalvae\.vae/3'\); retrain$"),
    ("missing", r"model\.pth not found: train first"),
])
def test_a_bad_model_pth_is_a_clear_error(tmp_path, capsys, content, message):
    config = write_tiny_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    if content == "garbage":
        (run / "model.pth").write_bytes(b"not a checkpoint at all")
    elif content == "text":
        (run / "model.pth").write_text("epochs: 10\nlatent_dim: 32\n# a config, not weights\n")
    elif content == "empty":
        (run / "model.pth").write_bytes(b"")
    elif content == "random":
        (run / "model.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "pickle":
        torch.save({"format": _Evil()}, run / "model.pth")
    elif content == "other":
        torch.save({"weights": torch.zeros(2)}, run / "model.pth")
    elif content in ("newer", "older", "image"):
        tag = {"newer": "animalvae.vae/4", "older": "animalvae.vae/0",
               "image": "animalvae.sound_image/3"}[content]
        torch.save({"format": tag, "model": {}}, run / "model.pth")
    code, err = run_vae(["generate", "--config", str(config), "--run", str(run)], capsys)
    assert code == 2 and re.search(message, err.strip()), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "file an issue" not in err
    assert "this must never run" not in capsys.readouterr().out


def test_weights_that_do_not_fit_their_config(trained, tmp_path, capsys):
    config, run = trained
    data = torch.load(run / "model.pth", weights_only=True)
    data["model_config"]["latent_dim"] = 16
    (tmp_path / "bad").mkdir()
    torch.save(data, tmp_path / "bad" / "model.pth")
    code, err = run_vae(["generate", "--config", str(config), "--run", str(tmp_path / "bad")],
                        capsys)
    assert code == 2 and "weights do not fit its model config" in err


def test_mismatched_spectrograms_are_a_clear_error(trained, tmp_path, capsys):
    config, run = trained
    wrong = tmp_path / "dogs" / "wrong.npy"
    wrong.parent.mkdir()
    np.save(wrong, np.zeros((128, 32), np.float16))
    code, err = run_vae(["interpolate", "--config", str(config), str(wrong), str(wrong)], capsys)
    assert code == 2 and "has shape (128, 32), but the model's spectrograms are (64, 32)" in err
    # the run's held-out folder re-made with other features settings
    other = tmp_path / "copy"
    shutil_copy_run(run, other)
    data = run.parent.parent / "spectrograms"
    moved = tmp_path / "moved"
    make_data(moved, per_group=10, spec=SpectrogramSpec(sample_rate=8000, n_fft=128,
                                                        hop_length=32, n_frames=32))
    rewrite_split(other, data, moved)
    code, err = run_vae(["evaluate", "--config", str(config), "--run", str(other)], capsys)
    assert code == 2 and ("made with other settings than the model's (model -> data: "
                          "hop_length: 64 -> 32)") in err, err
    assert "Traceback" not in err
    # interpolate checks a .npy against its data folder's normalizer.json too
    npy = sorted(moved.glob("*/*.npy"))[0]
    code, err = run_vae(["interpolate", "--config", str(config), str(npy), str(npy)], capsys)
    assert code == 2 and "(model -> data: hop_length: 64 -> 32)" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_an_stft_folder_whose_n_mels_differs_is_the_same_representation(trained, tmp_path,
                                                                         capsys):
    """Stage 4 ignores n_mels for stft arrays; reconstruct and interpolate agree with it."""
    config, run = trained
    data = run.parent.parent / "spectrograms"
    normalizer = data / "normalizer.json"
    saved = normalizer.read_text()
    spec = json.loads(saved)
    assert spec["kind"] == "stft"
    normalizer.write_text(json.dumps({**spec, "n_mels": spec["n_mels"] // 2}))
    try:
        code, err = run_vae(["reconstruct", "--config", str(config), "--count", "1"], capsys)
        assert code == 0, err
        npy = sorted(data.glob("dogs/*.npy"))[0]
        code, err = run_vae(["interpolate", "--config", str(config), str(npy), str(npy),
                             "--steps", "2"], capsys)
        assert code == 0, err
    finally:
        normalizer.write_text(saved)


@pytest.mark.parametrize("suffix", [".npy", ".wav"])
def test_interpolate_refuses_nan_or_inf_input(trained, tmp_path, capsys, suffix):
    config, _ = trained
    bad = tmp_path / "dogs" / f"bad{suffix}"
    bad.parent.mkdir()
    if suffix == ".npy":
        a = np.zeros((64, 32), np.float16)
        a[3, 4] = np.nan
        np.save(bad, a)
    else:
        y = np.zeros(4000, np.float32)
        y[10] = np.inf
        sf.write(bad, y, 8000, subtype="FLOAT")
    code, err = run_vae(["interpolate", "--config", str(config), str(bad), str(bad)], capsys)
    assert code == 2 and (f"{bad} holds NaN or Inf" in err if suffix == ".npy" else
                          f"{bad}: not usable as a spectrogram (.npy) or a segment (non-finite"
                          in err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_resume_refuses_other_model_settings(trained, tmp_path, capsys):
    config, run = trained
    other = tmp_path / "copy"
    shutil_copy_run(run, other)
    code, err = run_vae(["train", "--config", str(config), "--run", str(other), "--resume",
                         "--set", "model.latent_dim=16"], capsys)
    assert code == 2 and "model settings differ" in err


def shutil_copy_run(run: Path, dest: Path) -> None:
    import shutil
    dest.mkdir()
    for name in ("model.pth", "last.pth", "split.csv"):
        shutil.copy(run / name, dest / name)


def rewrite_split(run: Path, old: Path, new: Path) -> None:
    path = run / "split.csv"
    path.write_text(path.read_text().replace(str(old.resolve()), str(new.resolve())))


def test_config_defaults_build_a_model_for_the_default_spectrograms():
    config = load_config()
    spec = SpectrogramSpec.from_config(config.features, config.extract.sample_rate)
    model = VAE(config.model, spec.shape, 3)
    assert model.shape == (512, 256)


@pytest.mark.parametrize("epoch_done", [True, False])
def test_ctrl_c_during_training_says_whether_to_resume(tmp_path, capsys, monkeypatch,
                                                       epoch_done):
    config = write_tiny_config(tmp_path)

    def interrupted(config, run_dir, **kwargs):
        if epoch_done:
            run_dir.mkdir(parents=True)
            (run_dir / "last.pth").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train", interrupted)
    code, err = run_vae(["train", "--config", str(config)], capsys)
    assert code == 130
    assert ("holds the last finished epoch; continue with: vae.py train --resume" in err) \
        == epoch_done
    assert ("no epoch had finished, so there is nothing to resume" in err) != epoch_done


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

FLAGS = {   # each sub-command's own flags, beyond COMMON
    "train": {"--input", "--limit", "--force", "--resume"},
    "generate": {"--group", "--count"},
    "reconstruct": {"--count"},
    "interpolate": {"--steps"},
    "evaluate": {"--limit", "--judge-dir"},
    "fit-sampler": set(),
}


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_each_command_takes_only_the_flags_it_uses(command, capsys):
    with pytest.raises(SystemExit) as info:
        vae.main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text.split("options:", 1)[1]))
    assert flags == COMMON | FLAGS[command], flags ^ (COMMON | FLAGS[command])
    assert "Exit codes: 0 done" in text
    assert ("1 training diverged" in text) == (command == "train")
    for unused in ({"--input", "--force", "--workers", "--limit"} - FLAGS[command]):
        with pytest.raises(SystemExit) as info:
            vae.main([command, *(["a", "b"] if command == "interpolate" else []), unused,
                      "1"])
        assert info.value.code == 2
        assert f"unrecognized arguments: {unused}" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbosity_flags_go_before_or_after_the_command(where):
    argv = ["-v", "-v", "train"] if where == "before" else ["train", "-vv"]
    assert vae.build_parser().parse_args(argv).verbose == 2
    argv = ["-q", "evaluate"] if where == "before" else ["evaluate", "-q"]
    args = vae.build_parser().parse_args(argv)
    assert args.quiet is True and args.verbose == 0
    args = vae.build_parser().parse_args(["generate"])
    assert args.quiet is False and args.verbose == 0


def test_a_typo_in_the_config_file_names_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    code, err = run_vae(["train", "--config", str(bad)], capsys)
    assert code == 2 and "train.epochz: unknown key" in err and "Traceback" not in err


def test_available_memory_counts_the_page_cache(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100000 kB\nMemAvailable:  6000000 kB\n")
    monkeypatch.setattr(dataset_mod, "_MEMINFO", str(meminfo))
    assert dataset_mod._available_bytes() == 6000000 * 1024
    monkeypatch.setattr(dataset_mod, "_MEMINFO", str(tmp_path / "none"))   # not Linux
    fallback = dataset_mod._available_bytes()
    assert fallback is None or fallback > 0


def test_data_too_big_for_memory_is_read_per_batch(tmp_path, monkeypatch):
    data = make_data(tmp_path / "spectrograms", per_group=3)
    items = [Item(p.stem, p.parent.name, p) for p in sorted(data.glob("*/*.npy"))]
    in_memory = dataset_mod.SpectrogramSet(items, ["birds", "dogs"], SPEC.shape)
    monkeypatch.setattr(dataset_mod, "_available_bytes", lambda: 1)
    on_disk = dataset_mod.SpectrogramSet(items, ["birds", "dogs"], SPEC.shape)
    assert in_memory.x is not None and on_disk.x is None
    idx = torch.tensor([4, 0, 2])
    for a, b in zip(in_memory.batch(idx, torch.device("cpu")),
                    on_disk.batch(idx, torch.device("cpu"))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
