"""The adversarial second phase (animalvae/vae/adversarial.py and its hook in vae/train.py).

Tiny spectrograms and model from tests/test_vae.py; every run takes a few seconds on a CPU.
"""

from __future__ import annotations

import pytest
import torch
from test_distributed import STEPS, assert_same, torchrun, weights
from test_vae import make_data, read_metrics, run_vae, write_tiny_config

import vae
from animalvae.config import ModelConfig, TrainConfig
from animalvae.vae.adversarial import (
    AdversarialPhase,
    PatchDiscriminator,
    adversarial_step,
    discriminator_loss,
    generator_loss,
)
from animalvae.vae.losses import ReconstructionLoss
from animalvae.vae.model import VAE, load_model

EPOCHS = 3


def _split(weights: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith(part + ".")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same data and seed trained without (``plain``) and with two adversarial epochs.

    The tiny config of tests/test_vae.py sets ``train.adversarial_epochs: 0``.
    """
    tmp = tmp_path_factory.mktemp("adversarial")
    config = write_tiny_config(tmp, epochs=EPOCHS, data=make_data(tmp / "spectrograms"))
    plain, adv = tmp / "plain", tmp / "adv"
    assert run_vae_quiet(["train", "--config", str(config), "--run", str(plain)]) == 0
    assert run_vae_quiet(["train", "--config", str(config), "--run", str(adv),
                          "--set", "train.adversarial_epochs=2"]) == 0
    return config, plain, adv


def run_vae_quiet(argv: list[str]) -> int:
    return vae.main([*argv, "-q"])


# --------------------------------------------------------------------------------------------
# The discriminator, the losses and one step
# --------------------------------------------------------------------------------------------

def test_hinge_and_feature_matching_losses():
    assert discriminator_loss(torch.full((2, 1, 4, 4), 2.0),
                              torch.full((2, 1, 4, 4), -3.0)).item() == 0     # both beyond margin
    assert discriminator_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)).item() == 2
    features = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    adversarial, matching = generator_loss(torch.full((2, 1, 4, 4), 0.5), features, features)
    assert adversarial.item() == -0.5 and matching.item() == 0
    shifted = [f + 0.25 for f in features]
    assert generator_loss(torch.zeros(1), features, shifted)[1].item() == pytest.approx(0.25)


def test_the_discriminator_is_a_patch_map_that_depends_on_the_group():
    disc = PatchDiscriminator([4, 8], n_groups=2)
    x = torch.rand(2, 1, 64, 32)
    logits, features = disc(x, torch.tensor([0, 0]))
    assert logits.shape == (2, 1, 16, 8) and [f.shape[1] for f in features] == [4, 8]
    assert not torch.equal(logits, disc(x, torch.tensor([1, 1]))[0])


def tiny_phase() -> tuple[VAE, AdversarialPhase]:
    """A seeded tiny VAE (64 x 32 spectrograms, 2 groups) and its adversarial phase."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=8, channels=[4, 8], embed_dim=4, latent_frames=0),
                (64, 32), 2)
    return model, AdversarialPhase.create(model, channels=[4, 8], lr=1e-3, seed=0,
                                          device=torch.device("cpu"))


def test_one_step_trains_the_decoder_and_discriminator_but_not_the_encoder():
    model, phase = tiny_phase()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    disc_before = {k: v.clone() for k, v in phase.discriminator.state_dict().items()}
    figures = adversarial_step(phase, torch.rand(4, 1, 64, 32), torch.tensor([0, 1, 0, 1]),
                               torch.randn(4, 8), reconstruction=ReconstructionLoss("l1"),
                               adversarial_weight=0.1,
                               feature_matching_weight=1.0, grad_clip=1.0)
    after = model.state_dict()
    for key, value in _split(before, "encoder").items():
        assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[k], v) for k, v in _split(before, "decoder").items())
    assert any(not torch.equal(phase.discriminator.state_dict()[k], v)
               for k, v in disc_before.items())
    assert set(figures) == {"d_loss", "g_loss", "recon_loss", "recon", "adversarial",
                            "matching", "kl"}
    assert phase.step == 1 and all(torch.isfinite(v) for v in figures.values())
    assert figures["recon_loss"] == figures["recon"]           # plain L1: the same figure


def test_the_step_reports_the_whole_reconstruction_term():
    model, phase = tiny_phase()
    x, y, noise = torch.rand(4, 1, 64, 32), torch.tensor([0, 1, 0, 1]), torch.randn(4, 8)
    model.encoder.eval()                                   # as the step runs it
    with torch.no_grad():
        mu, logvar = model.encoder(x, y)
        x_hat = model.decode(mu + torch.exp(0.5 * logvar) * noise, y)   # the step's first output
    reconstruction = ReconstructionLoss("l1", spectral_weight=1.0, modulation_weight=0.5)
    expected, pixel = reconstruction(x_hat, x)
    figures = adversarial_step(phase, x, y, noise, reconstruction=reconstruction,
                               adversarial_weight=0.1, feature_matching_weight=1.0)
    assert float(figures["recon_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(figures["recon"]) == pytest.approx(float(pixel), rel=1e-5)
    assert figures["recon_loss"] > figures["recon"]


# --------------------------------------------------------------------------------------------
# The phase inside vae.py train
# --------------------------------------------------------------------------------------------

def test_zero_adversarial_epochs_leave_the_vae_run_as_it_was(runs):
    assert TrainConfig().adversarial_epochs == 0         # off by default (measured no better)
    _, plain, _ = runs                                   # the tiny config sets it to 0
    last = torch.load(plain / "last.pth", weights_only=True)
    assert "adversarial" not in last
    assert [r["epoch"] for r in read_metrics(plain)] == [1, 2, 3]


def test_the_phase_changes_only_the_decoder(runs):
    _, plain, adv = runs
    a = torch.load(plain / "model.pth", weights_only=True)
    b = torch.load(adv / "model.pth", weights_only=True)   # plain data: weights_only loads it
    assert set(a["model"]) == set(b["model"])              # no discriminator in model.pth
    for key, value in _split(a["model"], "encoder").items():
        assert torch.equal(b["model"][key], value), key
    assert any(not torch.equal(b["model"][k], v) for k, v in _split(a["model"], "decoder").items())
    assert "prior" in b                                    # fit after the phase
    last = torch.load(adv / "last.pth", weights_only=True)
    assert last["adversarial"]["epoch"] == 2 and last["adversarial"]["discriminator"]
    assert [r["epoch"] for r in read_metrics(adv)] == [1, 2, 3, 4, 5]
    loaded = load_model(adv / "model.pth")
    x = loaded.model.decode(torch.zeros(1, 8), torch.tensor([0]))
    assert x.shape == (1, 1, 64, 32)


def test_resume_within_the_phase_equals_an_uninterrupted_run(runs, tmp_path, capsys):
    config, _, adv = runs
    parts = tmp_path / "parts"
    assert run_vae(["train", "--config", str(config), "--run", str(parts),
                    "--set", "train.adversarial_epochs=1"], capsys)[0] == 0
    assert torch.load(parts / "last.pth", weights_only=True)["adversarial"]["epoch"] == 1
    code, err = run_vae(["train", "--config", str(config), "--run", str(parts), "--resume",
                         "--set", "train.adversarial_epochs=2"], capsys)
    assert code == 0, err
    a = torch.load(adv / "last.pth", weights_only=True)
    b = torch.load(parts / "last.pth", weights_only=True)
    # CUDA's convolution backward kernels are not bitwise deterministic: 8e-6 seen on an H200
    atol = 1e-4 if torch.cuda.is_available() else 1e-6
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=atol)
    for key, value in a["adversarial"]["discriminator"].items():
        torch.testing.assert_close(b["adversarial"]["discriminator"][key], value, rtol=0,
                                   atol=atol)
    assert [r["val_loss"] for r in read_metrics(parts)] == pytest.approx(
        [r["val_loss"] for r in read_metrics(adv)], abs=1e-6)
    # nothing left: a second resume changes nothing
    done = (parts / "last.pth").read_bytes()
    code, err = run_vae(["train", "--config", str(config), "--run", str(parts), "--resume",
                         "--set", "train.adversarial_epochs=2"], capsys)
    assert code == 0 and (parts / "last.pth").read_bytes() == done


def test_resume_with_another_discriminator_is_a_config_error(runs, tmp_path, capsys):
    config, _, adv = runs
    parts = tmp_path / "parts"
    assert run_vae(["train", "--config", str(config), "--run", str(parts),
                    "--set", "train.adversarial_epochs=1"], capsys)[0] == 0
    code, err = run_vae(["train", "--config", str(config), "--run", str(parts), "--resume",
                         "--set", "train.adversarial_epochs=2",
                         "--set", "train.discriminator_channels=[8]"], capsys)
    assert code == 2 and "train.discriminator_channels" in err and "Traceback" not in err


@pytest.mark.slow
def test_under_torchrun_the_phase_gives_what_one_process_gives(tmp_path):
    config = write_tiny_config(tmp_path, data=make_data(tmp_path / "spectrograms"))
    base = ["train", "--config", str(config), *STEPS, "--set", "train.adversarial_epochs=2"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    torchrun(2, ddp, [*base, "--run-dir", str(ddp)])
    assert run_vae_quiet([*base, "--run", str(single)]) == 0
    assert torch.load(ddp / "last.pth", weights_only=True)["adversarial"]["epoch"] == 2
    assert_same(weights(ddp / "model.pth"), weights(single / "model.pth"), atol=1e-5)
    assert_same(weights(ddp / "rank0.pt"), weights(ddp / "rank1.pt"), atol=1e-6)
    assert [r["val_loss"] for r in read_metrics(ddp)] == pytest.approx(
        [r["val_loss"] for r in read_metrics(single)], rel=1e-5)
