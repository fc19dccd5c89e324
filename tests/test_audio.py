"""animalvae.audio: the reading, resampling, padding and level helpers every stage shares."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from media import make_wav, tone

from animalvae import audio
from animalvae.errors import ItemFailed


def test_rms_dbfs():
    assert audio.rms_dbfs(np.zeros(100)) == -np.inf
    assert audio.rms_dbfs(np.zeros(0)) == -np.inf
    assert audio.rms_dbfs(np.ones(10)) == pytest.approx(0.0)
    assert audio.rms_dbfs(tone(1.0, amplitude=1.0)) == pytest.approx(-3.01, abs=0.01)


def test_wav_rms_dbfs_reads_in_blocks_and_agrees_with_rms_dbfs(tmp_path):
    y = tone(1.0, amplitude=0.5)
    path = make_wav(tmp_path / "a.wav", y)
    assert audio.wav_rms_dbfs(path, block_frames=1000) == pytest.approx(
        audio.rms_dbfs(sf.read(path, dtype="float64")[0]), abs=1e-9)


def test_pad_audio_zeros_and_repeat():
    y = np.array([1, 2, 3], dtype=np.int16)
    np.testing.assert_array_equal(audio.pad_audio(y, 7, mode="zeros"), [1, 2, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(audio.pad_audio(y, 7, mode="repeat"), [1, 2, 3, 1, 2, 3, 1])
    assert audio.pad_audio(y, 2) is y
    with pytest.raises(ValueError, match="must be 'zeros' or 'repeat'"):
        audio.pad_audio(y, 7, mode="loop")


def test_read_mono_keeps_int16_exactly_and_averages_channels(tmp_path):
    mono = (np.arange(-500, 500) * 7).astype(np.int16)
    path = tmp_path / "mono.wav"
    sf.write(path, mono, 8000, subtype="PCM_16")
    y, sr, total = audio.read_mono(path, keep_int16=True)
    assert (y.dtype, sr, total) == (np.int16, 8000, 1000)
    np.testing.assert_array_equal(y, mono)

    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.25)], axis=1)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 16000)
    y, sr, total = audio.read_mono(path, keep_int16=True,
                                   max_frames=lambda rate: rate // 100)    # 10 ms
    assert (y.dtype, sr, total, len(y)) == (np.float32, 16000, 800, 160)
    np.testing.assert_allclose(y, 0.125, atol=1e-4)


@pytest.mark.parametrize(("content", "reason"), [
    (b"not audio at all", "cannot read audio"),
    (None, "no samples"),
    ("nan", r"non-finite samples \(NaN or Inf\)"),
])
def test_read_mono_names_what_is_wrong(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    if content is None:
        sf.write(path, np.zeros(0, np.float32), 8000, subtype="FLOAT")
    elif content == "nan":
        sf.write(path, np.array([0.1, np.nan, 0.2], np.float32), 8000, subtype="FLOAT")
    else:
        path.write_bytes(content)
    with pytest.raises(ItemFailed, match=reason):
        audio.read_mono(path)


def test_resample_changes_the_rate_and_keeps_a_tone():
    y = tone(1.0, sample_rate=44100, frequency=1000.0, amplitude=0.5)
    out = audio.resample(y, 44100, 32000)
    assert out.dtype == np.float32 and len(out) == 32000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 1000            # 1 Hz bins: the tone stays at 1 kHz
    assert audio.resample(y, 44100, 44100) is y
