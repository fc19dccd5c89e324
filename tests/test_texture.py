"""The texture noise (animalvae.sound.texture, fit by animalvae.sound.sampler): fitting the
roughness a decoder smooths away, adding it back, and its life in sampler.pth (train,
fit-sampler, generate, reconstruct)."""

from __future__ import annotations

import soundfile
import torch
from vae_runs import write_tiny_config

import vae
from animalvae.sound.texture import TEXTURE, TextureFit, add_texture, fine_detail, texture_tables


def fit_texture(pairs, *, n_groups: int, bands: int, levels: int) -> torch.Tensor:
    """A :class:`TextureFit` over ``pairs`` of (real, decoded, labels) batches."""
    fit = TextureFit(n_groups, bands=bands, levels=levels)
    for real, decoded, labels in pairs:
        fit.add(real, decoded, labels)
    return fit.table()


def smooth_and_rough(n: int, *, sigma: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectrograms ``(n, 64, 32)``: a smooth ramp at mid level, and the same with iid noise
    of standard deviation ``sigma`` on every pixel (what a real clip's roughness adds)."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.4, 0.6, 32).expand(n, 64, 32).clone()
    return ramp, ramp + sigma * torch.randn(ramp.shape, generator=gen)


def test_fine_detail_of_a_constant_or_a_plane_is_zero_inside():
    flat = torch.full((2, 8, 8), 0.3)
    detail, level = fine_detail(flat)
    assert detail.abs().max() < 1e-6 and torch.allclose(level, flat)
    plane = torch.arange(8.0)[None, None, :].expand(1, 8, 8) / 8
    assert fine_detail(plane)[0][:, :, 1:-1].abs().max() < 1e-6   # edges average fewer pixels


def test_fit_recovers_the_noise_a_smooth_decoder_lost():
    smooth, rough = smooth_and_rough(16, sigma=0.05)
    labels = torch.zeros(16, dtype=torch.long)
    table = fit_texture([(rough, smooth, labels)], n_groups=2, bands=4, levels=10)
    assert table.shape == (2, 4, 10)
    seen = table[0, :, 4:6]                            # the ramp's levels, 0.4-0.6
    # within 0.0015: without the 9/8 gain (the noise's own share of the 3x3 mean) it is 0.047
    torch.testing.assert_close(seen, torch.full_like(seen, 0.05), atol=0.0015, rtol=0)
    assert table[1].abs().max() == 0                   # a group with no clips gets no noise
    assert table[0, :, :3].abs().max() == 0            # nor a level no real pixel reaches
    # a decoder as rough as the data needs none
    same = fit_texture([(rough, rough, labels)], n_groups=1, bands=4, levels=10)
    assert same.abs().max() == 0


def test_added_texture_restores_the_roughness_it_was_fit_on():
    smooth, rough = smooth_and_rough(16, sigma=0.05)
    labels = torch.zeros(16, dtype=torch.long)
    table = fit_texture([(rough, smooth, labels)], n_groups=1, bands=4, levels=10)
    restored = add_texture(smooth, texture_tables(table, labels), seed=3)
    real_rough = fine_detail(rough)[0][:, 1:-1, 1:-1].std()
    torch.testing.assert_close(fine_detail(restored)[0][:, 1:-1, 1:-1].std(), real_rough,
                               atol=0.001, rtol=0)
    assert torch.equal(add_texture(smooth, texture_tables(table, labels), seed=3), restored)
    assert not torch.equal(add_texture(smooth, texture_tables(table, labels), seed=4), restored)
    assert torch.equal(add_texture(smooth, texture_tables(table, labels), scale=0), smooth)
    loud = add_texture(torch.ones(2, 64, 32), texture_tables(torch.full((1, 4, 10), 0.5),
                                                           torch.zeros(2, dtype=torch.long)))
    assert loud.min() >= 0 and loud.max() <= 1      # kept on the representation's [0, 1]


def test_blended_tables_mix_the_groups_like_an_interpolation():
    texture = torch.stack([torch.zeros(2, 3), torch.ones(2, 3)])            # (G=2, 2, 3)
    blend = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    tables = texture_tables(texture, blend)
    assert torch.equal(tables[0], texture[0])
    torch.testing.assert_close(tables[1], torch.full((2, 3), 0.75))
    assert torch.equal(texture_tables(texture, torch.tensor([1, 0])), texture.flip(0))


def test_training_fits_a_texture_that_every_decoding_command_adds(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=2)
    # a spread given as a number: then the texture's scale is no setting of the sampler's
    # fit, and changing it below refits nothing
    base = ["--config", str(config), "-q", "--set", "generate.spread=1.3"]
    assert vae.main(["train", *base]) == 0
    run = tmp_path / "runs" / "default"
    data = torch.load(run / "sampler.pth", weights_only=True)
    table = data[TEXTURE]
    assert table.shape[0] == 2 and table.dim() == 3 and (table >= 0).all()
    # the fitted table is zero in the cells where the decoder is already as rough as the real
    # clips, and a tiny model's few samples may fall in those alone: a table with noise in
    # every cell makes what each command adds visible whatever the sample
    torch.save({**data, TEXTURE: torch.full_like(table, 0.05)}, run / "sampler.pth")

    def first_sample(*settings: str) -> torch.Tensor:
        assert vae.main(["generate", *base, "--count", "1", *settings]) == 0
        return torch.from_numpy(soundfile.read(run / "samples" / "dogs_0.wav")[0])

    textured, plain = first_sample(), first_sample("--set", "generate.texture=0")
    assert not torch.equal(textured, plain) and torch.equal(first_sample(), textured)

    reconstructed = run / "samples" / "reconstruct" / "dogs"
    assert vae.main(["reconstruct", *base, "--count", "1"]) == 0
    textured = [soundfile.read(p)[0] for p in sorted(reconstructed.glob("*_reconstruction.wav"))]
    assert vae.main(["reconstruct", *base, "--count", "1", "--set", "generate.texture=0"]) == 0
    plain = [soundfile.read(p)[0] for p in sorted(reconstructed.glob("*_reconstruction.wav"))]
    assert len(textured) == 1 and (textured[0] != plain[0]).any()

    data = torch.load(run / "sampler.pth", weights_only=True)
    data[TEXTURE] = torch.ones(5, 2)
    torch.save(data, run / "sampler.pth")
    assert vae.main(["generate", *base]) == 2
    assert "its texture does not fit the model" in capsys.readouterr().err
    assert vae.main(["fit-sampler", *base]) == 0             # which replaces it
    torch.testing.assert_close(torch.load(run / "sampler.pth", weights_only=True)[TEXTURE],
                               table)


def test_an_unconditional_model_pools_its_clips_into_one_table(tmp_path):
    config = write_tiny_config(tmp_path, epochs=1, conditional=False)
    assert vae.main(["train", "--config", str(config), "-q"]) == 0
    table = torch.load(tmp_path / "runs" / "default" / "sampler.pth", weights_only=True)[TEXTURE]
    assert table.abs().max() > 0 and torch.equal(table[0], table[1])


def test_generate_texture_must_not_be_negative(tmp_path, capsys):
    config = write_tiny_config(tmp_path, epochs=1)
    assert vae.main(["generate", "--config", str(config), "--set", "generate.texture=-1"]) == 2
    assert "generate.texture=-1" in capsys.readouterr().err
