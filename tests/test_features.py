"""Stage 4: segments -> .npy spectrograms: outputs, bad input, resume, settings, check, preview."""

import dataclasses
import itertools

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from media import animal_call, make_wav

import preprocess_audio_vae
from animalvae import features, features_check, segments
from animalvae.config import load_config
from animalvae.errors import ConfigError
from animalvae.spectrogram import NORMALIZER, Spectrogram, SpectrogramSpec, load_spec
from animalvae.stage import StageOptions, list_items, read_manifest, write_manifest

OPTS = StageOptions(progress=False)


@pytest.fixture
def detections(tmp_path):
    """A stage-3 folder: segments/<group>/<id>.wav listed in one manifest, some of them bad."""
    root = tmp_path / "detections"
    segments = {
        ("dogs", "-dog_000010"): animal_call(seed=1),           # id starting with "-"
        ("dogs", "dog_000020"): animal_call(seed=2),
        ("cats", "cat_000030"): animal_call(seed=3),
        ("cats", "short_000040"): animal_call(1.5, seed=4),
        ("cats", "quiet_000050"): np.zeros(96000, np.float32),
    }
    rows = []
    for (group, id_), y in segments.items():
        make_wav(root / "segments" / group / f"{id_}.wav", y)
        rows.append({"id": id_, "label": group, "group": group, "status": "ok",
                     "source": f"/clips/{id_}.wav", "output": f"segments/{group}/{id_}.wav"})
    y = animal_call(seed=5)
    y[1000] = np.nan
    (root / "segments/birds").mkdir(parents=True)
    sf.write(root / "segments/birds/nan_000060.wav", y, 32000, subtype="FLOAT")
    rows.append({"id": "nan_000060", "label": "birds", "group": "birds", "status": "ok",
                 "source": "x", "output": "segments/birds/nan_000060.wav"})
    # A stereo 44.1 kHz file of the same call as dog_000020, resampled on the way in.
    make_wav(root / "segments/birds/stereo_000070.wav",
             np.stack([animal_call(3.0, 44100, seed=2)] * 2, axis=1), 44100)
    rows.append({"id": "stereo_000070", "label": "birds", "group": "birds", "status": "ok",
                 "source": "x", "output": "segments/birds/stereo_000070.wav"})
    write_manifest(root, rows, ("frame",))
    return root


@pytest.fixture
def config(write_config, detections, tmp_path):
    def make(extra: str = "", overrides: tuple[str, ...] = ()):
        path = write_config(f"paths:\n  detections: {detections}\n  spectrograms: "
                            f"{tmp_path / 'spec'}\nfeatures:\n  batch_size: 2\n  workers: 2\n"
                            f"  device: cpu\n{extra}")
        return load_config(path, list(overrides))
    return make


def test_writes_normalised_arrays_manifest_normalizer_and_preview(config):
    cfg = config()
    summary = features.run(cfg, OPTS)
    out = cfg.paths.spectrograms
    assert (summary.ok, summary.skipped, summary.failed) == (5, 1, 1)
    rows = read_manifest(out)
    for id_, group in [("-dog_000010", "dogs"), ("cat_000030", "cats"),
                       ("stereo_000070", "birds")]:
        x = np.load(out / group / f"{id_}.npy")
        assert x.shape == (512, 256) and x.dtype == np.float16
        assert np.isfinite(x).all() and x.min() == 0 and x.max() == 1
        assert rows[id_]["output"] == f"{group}/{id_}.npy" and rows[id_]["shape"] == "512x256"
        assert -20 < float(rows[id_]["peak_db"]) < 0 and float(rows[id_]["rms_dbfs"]) < 0
    assert rows["quiet_000050"]["status"] == "skipped"
    assert rows["quiet_000050"]["reason"].startswith("silent")
    assert rows["nan_000060"]["status"] == "failed"
    assert rows["nan_000060"]["reason"].startswith("non-finite samples")
    assert not (out / "cats/quiet_000050.npy").exists()
    assert not (out / "birds/nan_000060.npy").exists()
    assert load_spec(out) == SpectrogramSpec()
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "settings.yaml").is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_short_segment_is_padded_and_stereo_44k_is_resampled(config):
    cfg = config()
    features.run(cfg, OPTS)
    out, rows = cfg.paths.spectrograms, read_manifest(cfg.paths.spectrograms)
    assert float(rows["short_000040"]["padded_s"]) == 1.5
    assert float(rows["cat_000030"]["padded_s"]) == 0
    short = np.load(out / "cats/short_000040.npy").astype(np.float32)
    assert short[:, 140:].max() == 0 and short[:, :120].mean() > 0.2  # 1.5 s = frame 128
    assert rows["stereo_000070"]["source_rate"] == "44100"
    # The same call written at 44.1 kHz in stereo gives the 32 kHz mono array, but for the
    # noise (drawn anew for the other length).
    resampled = np.load(out / "birds/stereo_000070.npy").astype(np.float32)
    native = np.load(out / "dogs/dog_000020.npy").astype(np.float32)
    harmonics = native > 0.6
    assert harmonics.mean() > 0.02 and (resampled > 0.6)[harmonics].mean() > 0.95
    assert np.abs(resampled - native)[harmonics].mean() < 0.02


def test_rerun_keeps_finished_arrays_and_force_redoes_them(config):
    cfg = config()
    features.run(cfg, OPTS)
    out = cfg.paths.spectrograms
    npy = out / "dogs/dog_000020.npy"
    before = npy.stat().st_mtime_ns
    again = features.run(cfg, OPTS)
    assert again.already_done + again.kept_unfinished == 6 and again.ok == 0
    assert npy.stat().st_mtime_ns == before
    npy.write_bytes(b"not an array")                      # a damaged output is redone
    again = features.run(cfg, OPTS)
    assert again.ok == 1 and np.load(npy).shape == (512, 256)
    forced = features.run(cfg, StageOptions(force=True, progress=False))
    assert (forced.ok, forced.skipped, forced.failed) == (5, 1, 1)


def test_limit_then_continue(config):
    cfg = config()
    first = features.run(cfg, StageOptions(limit=2, progress=False))
    assert first.ok + first.skipped + first.failed == 2
    second = features.run(cfg, OPTS)
    assert second.already_done == first.ok + first.skipped    # failures are tried again
    assert first.ok + second.ok == 5 and len(read_manifest(cfg.paths.spectrograms)) == 7


def test_mel_option_and_float32(config):
    cfg = config("  kind: mel\n  dtype: float32\n", ("model.pitch_candidates=0",))
    features.run(cfg, OPTS)
    x = np.load(cfg.paths.spectrograms / "dogs/dog_000020.npy")
    assert x.shape == (128, 256) and x.dtype == np.float32 and 0 <= x.min() and x.max() == 1
    assert load_spec(cfg.paths.spectrograms).kind == "mel"
    assert (cfg.paths.spectrograms / "preview.png").is_file()


def test_mel_features_refuse_the_pitch_comb(config):
    # its combs are evenly spaced rows, as harmonics are in a linear-frequency spectrogram only
    with pytest.raises(ConfigError, match=r"model.pitch_candidates=240 draws harmonic combs, "
                                          r"evenly spaced .* but features.kind is mel"):
        config("  kind: mel\n")


def test_changed_settings_need_force(config):
    features.run(config(), OPTS)
    with pytest.raises(ConfigError, match=rf"{NORMALIZER}: the arrays there were made with "
                                          r"other settings \(top_db: 80.0 -> 60.0\); rerun with"):
        features.run(config("  top_db: 60.0\n"), OPTS)
    summary = features.run(config("  top_db: 60.0\n"), StageOptions(force=True, progress=False))
    assert summary.ok == 5 and load_spec(config().paths.spectrograms).top_db == 60.0


def test_bad_normalizer_json_names_the_file(config):
    cfg = config()
    cfg.paths.spectrograms.mkdir(parents=True)
    (cfg.paths.spectrograms / NORMALIZER).write_text("{oops")
    with pytest.raises(ConfigError, match=rf"{cfg.paths.spectrograms / NORMALIZER}: cannot read"):
        features.run(cfg, OPTS)


@pytest.mark.parametrize("overrides, message", [
    (("extract.sample_rate=16000",),
     r"features\.hop_length=375 x features\.n_frames=256 = 96000 samples, but "
     r"detect\.segment_seconds=3\.0 at extract\.sample_rate=16000 is 48000 samples; .*"
     r"set features\.hop_length=188"),
    (("detect.segment_seconds=6",), r"192000 samples; .* set features\.hop_length=750 \(or"),
    (("detect.segment_seconds=9",), r"set features\.hop_length=1125 and features\.n_fft >= 2048"),
])
def test_hop_that_does_not_fit_the_segment_is_refused_when_the_config_loads(
        config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(overrides=overrides)


def test_hop_within_one_hop_of_the_segment_is_accepted(config):
    cfg = config(overrides=("detect.segment_seconds=3.01",))   # 96320 samples vs 96000
    assert features.spec_from_config(cfg).n_samples == 96000


def test_plain_folder_input(tmp_path, config):
    make_wav(tmp_path / "mine/owls/hoot.wav", animal_call(seed=9))
    cfg = config(overrides=(f"paths.detections={tmp_path / 'mine'}",))
    summary = features.run(cfg, OPTS)
    assert summary.ok == 1 and (cfg.paths.spectrograms / "owls/hoot.npy").is_file()


@pytest.mark.slow
def test_check_prints_the_median_spectral_convergence_once(config, capsys):
    cfg = config()
    code = preprocess_audio_vae.main(["--config", str(cfg.source), "--check", "2"])
    assert code == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line.startswith("round-trip check: median spectral convergence")
    assert float(line.split()[5]) <= 0.10 and "over 2 segment(s)" in line
    assert "spectral convergence" not in captured.err          # printed, not logged as well


def test_negative_check_is_refused(config, capsys):
    with pytest.raises(SystemExit) as exc:
        preprocess_audio_vae.main(["--config", str(config().source), "--check", "-1"])
    assert exc.value.code == 2 and "-1 must be >= 0" in capsys.readouterr().err


def test_stale_ok_row_without_its_array_is_left_out_of_preview_and_check(config, detections):
    cfg = config()
    features.run(cfg, OPTS)
    out = cfg.paths.spectrograms
    (out / "dogs/dog_000020.npy").unlink()                  # and its segment is gone too, so
    (detections / "segments/dogs/dog_000020.wav").unlink()  # the row stays "ok", file-less
    (out / "preview.png").unlink()
    summary = features.run(cfg, OPTS, check=5)
    assert read_manifest(out)["dog_000020"]["status"] == "ok"
    assert len(summary.convergence) == 4 and (out / "preview.png").is_file()


def test_force_rerun_that_now_skips_or_fails_removes_the_old_array(config, detections):
    cfg = config()
    features.run(cfg, OPTS)
    out = cfg.paths.spectrograms
    make_wav(detections / "segments/dogs/dog_000020.wav", np.zeros(96000, np.float32))
    (detections / "segments/cats/cat_000030.wav").write_bytes(b"RIFF, but not audio")
    summary = features.run(cfg, StageOptions(force=True, progress=False))
    rows = read_manifest(out)
    assert (summary.ok, summary.skipped, summary.failed) == (3, 2, 2)
    assert rows["dog_000020"]["status"] == "skipped" and rows["dog_000020"]["output"] == ""
    assert rows["cat_000030"]["reason"].startswith("cannot read audio")
    assert not (out / "dogs/dog_000020.npy").exists()
    assert not (out / "cats/cat_000030.npy").exists()


def test_arrays_of_other_settings_are_redone_after_a_partial_forced_run(config, caplog):
    features.run(config(), OPTS)
    out = config().paths.spectrograms
    new = config("  top_db: 60.0\n")
    fingerprint = features.spec_fingerprint(features.spec_from_config(new), "float16")
    # --force --limit 2 (as an interrupted forced run): normalizer.json says top_db 60, but
    # only the first two items (birds/nan, birds/stereo) are redone.
    partial = features.run(new, StageOptions(force=True, limit=2, progress=False))
    assert (partial.ok, partial.failed) == (1, 1)
    assert "4 array(s) there were made with other settings" in caplog.text
    rows = read_manifest(out)
    assert rows["stereo_000070"]["spec_id"] == fingerprint != rows["cat_000030"]["spec_id"]
    again = features.run(new, OPTS)       # a plain rerun: the stale arrays are redone
    assert (again.ok, again.failed, again.already_done + again.kept_unfinished) == (4, 1, 2)
    rows = read_manifest(out)
    assert {r["spec_id"] for r in rows.values() if r["status"] == "ok"} == {fingerprint}
    y, _ = segments.load_segment(rows["cat_000030"]["source"], load_spec(out))
    expected = Spectrogram(load_spec(out))(torch.from_numpy(y)).numpy()
    assert np.abs(np.load(out / "cats/cat_000030.npy") - expected).max() < 1e-3
    # The storage type is part of the fingerprint: float32 redoes every array.
    assert features.run(config("  top_db: 60.0\n  dtype: float32\n"), OPTS).ok == 5
    assert np.load(out / "cats/cat_000030.npy").dtype == np.float32


def test_short_segments_pad_with_zeros_or_repeat(config, tmp_path):
    spec = SpectrogramSpec()
    y = animal_call(1.25, seed=4)                               # 40000 samples
    path = make_wav(tmp_path / "short.wav", y)
    zeros, info = segments.load_segment(path, spec)
    looped, _ = segments.load_segment(path, spec, pad="repeat")
    assert info["padded_s"] == 1.75 and zeros.shape == looped.shape == (96000,)
    assert np.abs(zeros[:40000] - y).max() < 1e-4 and not zeros[40000:].any()
    assert np.array_equal(looped[40000:80000], looped[:40000])
    assert np.array_equal(looped[80000:], looped[:16000])
    cfg = config("  pad: repeat\n")
    features.run(cfg, OPTS)
    short = np.load(cfg.paths.spectrograms / "cats/short_000040.npy").astype(np.float32)
    assert short[:, 140:].mean() > 0.2                          # the call again, not silence
    assert float(read_manifest(cfg.paths.spectrograms)["short_000040"]["padded_s"]) == 1.5


def test_round_trip_check_is_repeatable_and_covers_each_group(config):
    cfg = config()
    features.run(cfg, OPTS)
    rows = [r for r in read_manifest(cfg.paths.spectrograms).values() if r["status"] == "ok"]
    spec = SpectrogramSpec()
    picked = features_check._pick_rows(rows, 3)
    assert sorted(r["group"] for r in picked) == ["birds", "cats", "dogs"]
    a = features_check.round_trip_check(cfg.paths.spectrograms, rows, spec, n=3, n_iter=2)
    b = features_check.round_trip_check(cfg.paths.spectrograms, rows, spec, n=3, n_iter=2)
    assert a == b and len(a) == 3


def test_load_segment_matches_the_transform_input(tmp_path):
    spec = SpectrogramSpec()
    y = animal_call(seed=3)
    path = make_wav(tmp_path / "a.wav", y)
    loaded, info = segments.load_segment(path, spec)
    assert loaded.shape == (96000,) and loaded.dtype == np.float32
    assert np.abs(loaded - y).max() < 1e-4 and info["padded_s"] == 0
    long, _ = segments.load_segment(make_wav(tmp_path / "b.wav", animal_call(4.0)), spec)
    assert long.shape == (96000,)
    x = Spectrogram(spec)(torch.from_numpy(loaded))
    assert x.shape == (512, 256)


@pytest.mark.parametrize("rate", [32000, 44100, 8000])
def test_load_segment_reads_only_the_frames_it_needs(tmp_path, monkeypatch, rate):
    spec = SpectrogramSpec()
    path = make_wav(tmp_path / "long.wav", animal_call(20.0, rate, seed=7), rate)
    whole, _ = sf.read(path, dtype="float32")
    asked = []
    read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read",
                        lambda self, frames=-1, **kw: asked.append(frames) or read(self, frames,
                                                                                   **kw))
    y, _ = segments.load_segment(path, spec)
    assert len(asked) == 1 and 0 < asked[0] <= 1.01 * 3 * rate + 256
    # The cut leaves a margin for the resampling filter: as if the whole file were resampled.
    expected = whole if rate == 32000 else soxr.resample(whole, rate, 32000, quality="HQ")
    assert np.abs(y - expected[:96000]).max() < 1e-5


def test_more_mel_bands_than_stft_bins_is_a_config_error(write_config):
    with pytest.raises(ConfigError, match=r"features\.n_mels=1024 must be <= n_fft // 2 = 512"):
        load_config(write_config("features:\n  kind: mel\n  n_mels: 1024\n"))


def test_samples_too_large_for_the_transform_are_never_written(config, tmp_path):
    y = animal_call(seed=6)
    y[500] = 3e38                                    # finite, but its power overflows
    (tmp_path / "mine/dogs").mkdir(parents=True)
    sf.write(tmp_path / "mine/dogs/huge_000080.wav", y, 32000, subtype="FLOAT")
    cfg = config(overrides=(f"paths.detections={tmp_path / 'mine'}",))
    features.run(cfg, OPTS)
    row = read_manifest(cfg.paths.spectrograms)["huge_000080"]
    assert row["status"] == "failed" and row["reason"].startswith("non-finite values")
    assert not (cfg.paths.spectrograms / "dogs/huge_000080.npy").exists()


def test_pad_counts_in_the_fingerprint_and_n_mels_only_for_mel():
    stft, mel = SpectrogramSpec(), SpectrogramSpec(kind="mel", n_mels=128)
    fp = features.spec_fingerprint
    assert fp(stft, "float16") == fp(stft, "float16", "zeros") != fp(stft, "float16", "repeat")
    assert fp(stft, "float16") == fp(dataclasses.replace(stft, n_mels=64), "float16")
    assert fp(mel, "float16") != fp(dataclasses.replace(mel, n_mels=64), "float16")


def test_n_mels_of_an_stft_is_ignored_and_a_new_pad_redoes_the_arrays(config):
    assert features.run(config(), OPTS).ok == 5
    same = features.run(config(overrides=("features.n_mels=64",)), OPTS)   # no ConfigError
    assert same.ok == 0
    redone = features.run(config("  pad: repeat\n"), OPTS)
    assert redone.ok == 5


def test_silent_skip_is_revisited_once_the_threshold_drops_below_its_level(config, detections):
    quiet = 1e-4 * animal_call(seed=5) / np.abs(animal_call(seed=5)).max()   # about -85 dBFS
    sf.write(detections / "segments/cats/quiet_000050.wav", quiet, 32000, subtype="FLOAT")
    cfg = config()
    features.run(cfg, OPTS)
    row = read_manifest(cfg.paths.spectrograms)["quiet_000050"]
    level = float(row["rms_dbfs"])                  # the skip records the level that decided it
    assert row["reason"] == f"silent ({level:.2f} dBFS)"
    stage = features.FeaturesStage(SpectrogramSpec(), silence_dbfs=level + 0.01)
    assert not stage.should_retry(row)
    assert features.FeaturesStage(SpectrogramSpec(), silence_dbfs=level - 0.01).should_retry(row)
    assert not stage.should_retry({"status": "skipped", "reason": "silent (-inf dBFS)",
                                   "rms_dbfs": "-inf"})
    assert stage.should_retry({"status": "failed", "reason": "cannot read audio: x"})
    same = features.run(config(overrides=(f"extract.silence_dbfs={level + 0.01}",)), OPTS)
    assert (same.ok, same.skipped) == (0, 0)
    lowered = features.run(config(overrides=(f"extract.silence_dbfs={level - 0.01}",)), OPTS)
    assert (lowered.ok, lowered.skipped) == (1, 0)
    assert read_manifest(cfg.paths.spectrograms)["quiet_000050"]["status"] == "ok"


def test_chunks_mixing_bad_segments_keep_the_good_arrays_and_the_order(detections, tmp_path):
    spec = SpectrogramSpec()
    stage = features.FeaturesStage(spec, batch_size=4, workers=2)
    work = [(item, tmp_path / "out" / f"{item.id}.npy")
            for item in list_items(detections, [".wav"])]
    results = list(stage.process_stream(work))
    assert [item.id for item, _ in results] == [item.id for item, _ in work]
    status = {item.id: outcome.status for item, outcome in results}
    assert status == {"-dog_000010": "ok", "dog_000020": "ok", "cat_000030": "ok",
                      "short_000040": "ok", "quiet_000050": "skipped", "nan_000060": "failed",
                      "stereo_000070": "ok"}
    transform = Spectrogram(spec)
    for item, output in work:
        if status[item.id] != "ok":
            assert not output.exists()
            continue
        y, _ = segments.load_segment(item.source, spec)
        expected = transform(torch.from_numpy(y)[None])[0].to(torch.float16).numpy()
        np.testing.assert_allclose(np.load(output), expected, atol=1e-3)  # f16 rounding


def test_a_failing_transform_fails_its_chunk_and_the_run_goes_on(detections, tmp_path,
                                                                 monkeypatch):
    stage = features.FeaturesStage(SpectrogramSpec(), batch_size=4, workers=2)

    calls = itertools.count()   # next() is atomic: exactly one call, the first, fails
    sizes: dict[int, int] = {}

    def out_of_memory_once(y):
        n = next(calls)
        sizes[n] = len(y)
        if n == 0:
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")
        return Spectrogram(stage.spec).forward_with_peak(y)

    monkeypatch.setattr(stage.transform, "forward_with_peak", out_of_memory_once)
    work = [(item, tmp_path / f"{item.id}.npy") for item in list_items(detections, [".wav"])]
    outcomes = {item.id: outcome for item, outcome in stage.process_stream(work)}
    assert len(outcomes) == len(work) and len(sizes) == 2
    assert outcomes["quiet_000050"].status == "skipped"
    assert outcomes["nan_000060"].reason.startswith("non-finite samples")
    failed = [i for i, o in outcomes.items() if o.reason.startswith("transform failed")]
    ok = [i for i, o in outcomes.items() if o.status == "ok"]
    assert len(failed) == sizes[0] and len(ok) == sizes[1] and len(failed) + len(ok) == 5
    assert outcomes[failed[0]].reason == ("transform failed: CUDA out of memory. Tried to "
                                          "allocate 2.00 GiB")
    assert not any((tmp_path / f"{i}.npy").exists() for i in failed)
    assert all((tmp_path / f"{i}.npy").exists() for i in ok)
