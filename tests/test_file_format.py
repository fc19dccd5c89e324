"""The versioned files of stage 5 (animalvae.training.file_format): a file of an older version
loads through its kind's one upgrade function and gives the same model; a newer or unknown one
is refused with one line naming the file."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from animalvae.config import ModelConfig, SoundImageConfig
from animalvae.errors import ConfigError
from animalvae.image.model import (
    SoundImageVAE,
    load_pairs_model,
    pairs_payload,
    upgrade_pairs_checkpoint,
)
from animalvae.sound.model import (
    VAE,
    checkpoint_payload,
    load_model,
    read_checkpoint,
    upgrade_checkpoint,
)
from animalvae.sound.sampler import upgrade_sampler
from animalvae.spectrogram import SpectrogramSpec
from animalvae.training.file_format import library_versions

SPEC = SpectrogramSpec(kind="stft", sample_rate=8000, n_fft=128, hop_length=64, n_frames=32)


def _version_1_model_pth(model: VAE, config: ModelConfig) -> dict:
    """A ``model.pth`` as version 1 wrote it (``git show 02f633e:animalvae/vae/model.py``'s
    checkpoint_payload), from before ``decoder_norm``, ``latent_frames`` and
    ``pitch_candidates`` existed and with the prior and texture inside (before sampler.pth)."""
    old_config = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in ("decoder_norm", "latent_frames", "repeat_edges",
                               "pitch_candidates", "pitch_temperature")}
    return {"format": "animalvae.vae/1",
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_config": old_config, "spec": SPEC.to_dict(), "groups": ["a", "b"],
            "shape": list(model.shape), "config": {}, "versions": library_versions(),
            "epoch": 3, "step": 12, "val_loss": 0.5,
            "prior": {"weights": torch.ones(2, 1), "means": torch.zeros(2, 1, 8),
                      "variances": torch.ones(2, 1, 8), "spread": torch.tensor([1.0, 2.0])},
            "texture": torch.full((2, 4, 4), 0.1)}


def test_a_version_1_model_pth_loads_through_the_upgrade_and_gives_the_same_outputs(tmp_path):
    config = ModelConfig(latent_dim=8, channels=[4, 8], embed_dim=4, decoder_norm="group",
                         latent_frames=0, repeat_edges=False, pitch_candidates=0)
    torch.manual_seed(0)
    model = VAE(config, SPEC.shape, 2).eval()
    torch.save(_version_1_model_pth(model, config), tmp_path / "model.pth")

    loaded = load_model(tmp_path / "model.pth")
    assert loaded.info["epoch"] == 3 and loaded.groups == ["a", "b"]
    assert loaded.model.config == config                  # GroupNorm, one code, no comb
    x, y = torch.rand(3, 1, *SPEC.shape), torch.tensor([0, 1, 0])
    z = torch.randn(3, 8)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded.model.encode(x, y),
                                                     model.encode(x, y)))
        assert torch.equal(loaded.model.decode(z, y), model.decode(z, y))

    data = read_checkpoint(tmp_path / "model.pth")
    assert data["format"] == "animalvae.vae/3" and "prior" not in data
    sampler = upgrade_sampler(data["sampler"], tmp_path / "model.pth")  # carried over
    assert sampler["format"] == "animalvae.sampler/2"
    assert sampler["settings"] == {"legacy": True}
    assert torch.equal(sampler["spread"], torch.tensor([1.0, 2.0]))
    assert "spread" not in sampler["prior"] and torch.equal(sampler["texture"],
                                                            torch.full((2, 4, 4), 0.1))


def test_a_version_2_model_pth_decodes_as_it_was_trained_without_repeated_edges(tmp_path):
    config = ModelConfig(latent_dim=16, channels=[4, 8], embed_dim=4, latent_frames=8,
                         repeat_edges=False, pitch_candidates=0)
    torch.manual_seed(0)
    model = VAE(config, SPEC.shape, 2).eval()
    payload = checkpoint_payload(model, spec=SPEC, groups=["a", "b"], config={})
    del payload["model_config"]["repeat_edges"]        # version 2 did not know the key
    torch.save({**payload, "format": "animalvae.vae/2"}, tmp_path / "model.pth")

    loaded = load_model(tmp_path / "model.pth")
    assert loaded.model.config == config                  # no repeated edges: as trained
    z, y = torch.randn(3, 16), torch.tensor([0, 1, 0])
    with torch.no_grad():
        assert torch.equal(loaded.model.decode(z, y), model.decode(z, y))


def test_a_version_1_sampler_gets_todays_key_names_and_no_number_spread(tmp_path):
    settings = {"train.prior": "gmm", "train.seed": 0, "generate.restore_peak": True}
    renamed = {"train.prior_fit": "gmm", "train.seed": 0, "generate.restore_peak": True}
    old = {"format": "animalvae.sampler/1", "prior": None, "spread": None, "texture": None}
    number = upgrade_sampler({**old, "settings": {**settings, "generate.spread": 1.5}},
                             tmp_path / "sampler.pth")
    assert number["settings"] == renamed                  # a number needs no fit
    fit = upgrade_sampler({**old, "settings": {**settings, "generate.spread": "fit"}},
                          tmp_path / "sampler.pth")
    assert fit["settings"] == {**renamed, "generate.spread": "fit"}
    assert fit["format"] == number["format"] == "animalvae.sampler/2"


def test_a_version_2_image_model_loads_through_the_upgrade(tmp_path):
    config = SoundImageConfig(latent_dim=4, sound_channels=[4, 8], image_channels=[4, 8])
    torch.manual_seed(0)
    model = SoundImageVAE(config, SPEC.shape, 16).eval()
    codes = {"a": (torch.zeros(4), torch.ones(4))}
    residuals = {"a": (torch.zeros(4), torch.randn(3, 4))}
    payload = pairs_payload(model, spec=SPEC, groups=["a"], group_codes=codes,
                            residuals=residuals, config={})
    assert payload["format"] == "animalvae.sound_image/3"
    # version 2 saved the sound_image settings under the keys' earlier names
    earlier = dict(payload["model_config"], candidates=100)
    earlier["temperature"] = earlier.pop("draw_temperature")
    torch.save({**payload, "format": "animalvae.sound_image/2", "model_config": earlier},
               tmp_path / "model.pth")
    loaded = load_pairs_model(tmp_path / "model.pth")
    assert loaded.model.config == config
    sound = torch.rand(2, 1, *SPEC.shape)
    with torch.no_grad():
        mu, _ = model.posterior(sound=sound)
        assert torch.equal(loaded.model.decode_image(loaded.model.posterior(sound=sound)[0]),
                           model.decode_image(mu))


@pytest.mark.parametrize("upgrade, kind, current", [
    (upgrade_checkpoint, "vae", 3), (upgrade_sampler, "sampler", 2),
    (upgrade_pairs_checkpoint, "sound_image", 3)])
def test_a_newer_unknown_or_too_old_version_is_refused_naming_the_file(tmp_path, upgrade, kind,
                                                                      current):
    path = tmp_path / "x.pth"
    with pytest.raises(ConfigError, match=rf"^{path} is a \S+ of format 'animalvae\.{kind}/"
                                          rf"{current + 1}', newer than this version of "
                                          r"animalvae reads .*; update animalvae$"):
        upgrade({"format": f"animalvae.{kind}/{current + 1}"}, path)
    with pytest.raises(ConfigError, match=rf"^{path} is a \S+ of format 'animalvae\.{kind}/0', "
                                          "too old to upgrade"):
        upgrade({"format": f"animalvae.{kind}/0"}, path)
    for other in ("animalvae.spectrogram/1", f"animalvae.{kind}/two", None):
        with pytest.raises(ConfigError, match=rf"^{path} is not a \S+ written by this version "
                                              rf"of vae\.py train \(format {other!r}"):
            upgrade({"format": other}, path)
    with pytest.raises(ConfigError, match="format 'list'"):
        upgrade([1, 2], path)
