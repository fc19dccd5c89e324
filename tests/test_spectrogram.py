"""The representation and its inverse: shapes, range, librosa agreement, round trips, spec files."""

import dataclasses
import json

import librosa
import numpy as np
import pytest
import torch
from media import animal_call, tone

from animalvae.config import FeaturesConfig
from animalvae.errors import ConfigError
from animalvae.spectrogram import (
    NORMALIZER,
    InverseSpectrogram,
    Spectrogram,
    SpectrogramSpec,
    describe_differences,
    load_spec,
    save_spec,
    spectral_convergence,
)

SPEC = SpectrogramSpec()
MEL = SpectrogramSpec(kind="mel")


def calls(n: int, spec: SpectrogramSpec = SPEC) -> torch.Tensor:
    return torch.from_numpy(np.stack([animal_call(spec.seconds, spec.sample_rate, seed=i)
                                      for i in range(n)]))


def test_defaults_give_the_documented_shape():
    assert SPEC.shape == (512, 256) and SPEC.n_samples == 96000 and SPEC.seconds == 3.0
    assert MEL.shape == (128, 256) and MEL.n_bins == 128


@pytest.mark.parametrize("spec", [SPEC, MEL], ids=["stft", "mel"])
def test_forward_shape_range_and_batch_dims(spec):
    y = calls(3, spec).reshape(3, 1, -1)
    x = Spectrogram(spec)(y)
    assert x.shape == (3, 1, *spec.shape) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() == 1
    assert (x.amin(dim=(-2, -1)) == 0).all()  # quiet bins reach the floor
    single = Spectrogram(spec)(y[1, 0])
    torch.testing.assert_close(single, x[1, 0], atol=1e-5, rtol=0)


def test_forward_rejects_the_wrong_length():
    with pytest.raises(ValueError, match=r"expected 96000 samples .* got shape \(2, 95999\)"):
        Spectrogram(SPEC)(torch.zeros(2, 95999))


def test_magnitude_matches_librosa_stft():
    y = animal_call(seed=3)
    ours = Spectrogram(SPEC).magnitude(torch.from_numpy(y)).numpy()
    ref = np.abs(librosa.stft(y, n_fft=1024, hop_length=375, window="hann", center=True,
                              pad_mode="reflect"))[:, :-1] * (2 / 512)
    assert ours.shape == ref.shape == (513, 256)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-3)


def test_full_scale_sine_peaks_at_0_db_and_silence_maps_to_0():
    fw = Spectrogram(SPEC)
    sine = torch.from_numpy(tone(3.0, 32000, frequency=1000.0, amplitude=1.0))  # on bin 32
    assert fw.peak_db(sine).item() == pytest.approx(0.0, abs=0.05)
    assert fw.peak_db(0.01 * sine).item() == pytest.approx(-40.0, abs=0.05)
    zeros = torch.zeros(SPEC.n_samples)
    assert fw.peak_db(zeros).item() == -100.0 and fw(zeros).max() == 0


@pytest.mark.parametrize("dtype, max_db_error", [(torch.float32, 1e-3), (torch.float16, 0.05)])
def test_normalisation_round_trip_without_per_file_statistics(dtype, max_db_error):
    y = calls(2)
    fw, inv = Spectrogram(SPEC), InverseSpectrogram(SPEC)
    x = fw(y).to(dtype)
    # The inverse knows nothing of the clip: it puts the peak at 0 dB.
    expected = fw.magnitude(y) / 10 ** (fw.peak_db(y)[:, None, None] / 20)
    kept = expected[..., :-1, :] > 10 ** (-SPEC.top_db / 20)  # inside the range, below Nyquist
    got = inv.magnitude(x)
    assert got.shape == (2, 513, 256) and (got[..., -1, :] == 0).all()
    error_db = (20 * torch.log10(got / expected))[..., :-1, :][kept]
    assert error_db.abs().max() < max_db_error
    floored = got[..., :-1, :][~kept]
    assert floored.max() <= 10 ** (-SPEC.top_db / 20) * 1.01  # clipped to the floor


def test_griffin_lim_round_trip_of_an_animal_like_call():
    torch.manual_seed(0)
    y = calls(2)
    fw, inv = Spectrogram(SPEC), InverseSpectrogram(SPEC, n_iter=32, momentum=0.99)
    x = fw(y).half()                                       # as stored on disk
    y_hat = inv(x)
    assert y_hat.shape == y.shape and y_hat.dtype == torch.float32
    assert torch.isfinite(y_hat).all()
    reference = fw.magnitude(y) / 10 ** (fw.peak_db(y)[:, None, None] / 20)
    sc = spectral_convergence(reference, fw.magnitude(y_hat))
    assert sc.shape == (2,) and sc.max() < 0.10, sc


@pytest.mark.slow
def test_mel_inverse_is_consistent_with_the_filterbank():
    y = calls(1, MEL)
    fw, inv = Spectrogram(MEL), InverseSpectrogram(MEL, n_iter=1)
    x = fw(y)
    S = inv.magnitude(x)
    assert S.shape == (1, 513, 256) and torch.isfinite(S).all() and S.min() >= 0
    # Projecting the recovered linear magnitude back onto the mel bands gives x again.
    M = fw.mel(S)
    target = 10 ** ((x - 1) * MEL.top_db / 20)
    assert spectral_convergence(target, M).item() < 0.1
    assert inv(x).shape == (1, MEL.n_samples)


def test_inverse_rejects_the_wrong_shape_and_bad_options():
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 512, 256\), got shape \(1, 511"):
        InverseSpectrogram(SPEC).magnitude(torch.zeros(1, 511, 256))
    with pytest.raises(ValueError, match="momentum=1.0 must be in"):
        InverseSpectrogram(SPEC, momentum=1.0)
    with pytest.raises(ValueError, match="n_iter=0 must be"):
        InverseSpectrogram(SPEC, n_iter=0)


def test_spectral_convergence():
    a = torch.rand(3, 4, 5)
    assert spectral_convergence(a, a).abs().max() == 0
    assert spectral_convergence(a, torch.zeros_like(a)).allclose(torch.ones(3))
    assert spectral_convergence(a, 1.1 * a).allclose(torch.full((3,), 0.1))


def test_spec_from_config_and_dict_round_trip():
    spec = SpectrogramSpec.from_config(FeaturesConfig(kind="mel", top_db=60.0), 16000)
    assert spec.kind == "mel" and spec.sample_rate == 16000 and spec.top_db == 60.0
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["shape"] == [128, 256] and "peak" in d["normalization"]
    assert SpectrogramSpec.from_dict(d) == spec


@pytest.mark.parametrize("change, message", [
    ({"n_fft": 1000}, "n_fft=1000 must be a power of two"),
    ({"kind": "cqt"}, "kind='cqt' must be 'stft' or 'mel'"),
    ({"top_db": -3}, r"top_db=-3\.0 must be a number > 0"),
    ({"hop_length": "375"}, "hop_length='375' must be an integer > 0"),
    ({"shape": [256, 256]}, r"shape=\[256, 256\] does not match"),
    ({"format": "other/2"}, "format='other/2'"),
])
def test_spec_from_dict_rejects_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        SpectrogramSpec.from_dict({**SPEC.to_dict(), **change})


def test_spec_from_dict_names_missing_keys():
    d = SPEC.to_dict()
    del d["n_fft"], d["top_db"]
    with pytest.raises(ConfigError, match="lacks n_fft, top_db"):
        SpectrogramSpec.from_dict(d)


def test_save_and_load_spec(tmp_path):
    path = save_spec(tmp_path, MEL)
    assert path == tmp_path / NORMALIZER and load_spec(tmp_path) == MEL
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("text, message", [
    (None, "not found: run preprocess_audio_vae.py"),
    ("{not json", "cannot read it as JSON"),
    ('{"kind": "stft"}', "lacks sample_rate"),
    ('[1, 2]', "must be a mapping"),
])
def test_load_spec_errors_name_the_file(tmp_path, text, message):
    if text is not None:
        (tmp_path / NORMALIZER).write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_spec(tmp_path)
    assert str(tmp_path / NORMALIZER) in str(info.value)


def test_differences_is_the_one_comparison_of_representations():
    stft = SpectrogramSpec()
    assert stft.differences(dataclasses.replace(stft, n_mels=64)) == {}   # stft: n_mels unused
    assert stft.differences(dataclasses.replace(stft, hop_length=250)) == {
        "hop_length": (375, 250)}
    mel = SpectrogramSpec(kind="mel", n_mels=128)
    assert mel.differences(dataclasses.replace(mel, n_mels=64)) == {"n_mels": (128, 64)}
    assert describe_differences(stft.differences(mel)) == "kind: stft -> mel, n_mels: - -> 128"
