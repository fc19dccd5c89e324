"""Stage 3: PANNs with random weights through the real code path, window choice on known scores,
frames from generated videos, the energy backend, and the missing/offline checkpoint paths.

No test downloads anything: the checkpoint is a random-weight Cnn14_DecisionLevelMax saved in
the real format (``{"model": state_dict}`` beside numpy training extras, ~327 MB, written once
for this module). HOME points at a temporary folder for the whole module, so nothing is written
to the real ``~/panns_data``.
"""

import argparse
import csv
import functools
import http.server
import logging
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import yaml
from media import make_colour_video, make_wav, tone

import animal_sound_detector
from animalvae import audio, detect, frames, panns
from animalvae.config import load_config
from animalvae.detect_stage import DetectStage, PannsScorer, run
from animalvae.errors import ConfigError
from animalvae.stage import (
    Item,
    StageOptions,
    default_workers,
    read_manifest,
    run_stage,
    write_manifest,
)

# The AudioSet "Animal" subtree, indices 72-136, as given in the issue.
ANIMAL_NAMES = [
    "Animal", "Domestic animals, pets", "Dog", "Bark", "Yip", "Howl", "Bow-wow", "Growling",
    "Whimper (dog)", "Cat", "Purr", "Meow", "Hiss", "Caterwaul",
    "Livestock, farm animals, working animals", "Horse", "Clip-clop", "Neigh, whinny",
    "Cattle, bovinae", "Moo", "Cowbell", "Pig", "Oink", "Goat", "Bleat", "Sheep", "Fowl",
    "Chicken, rooster", "Cluck", "Crowing, cock-a-doodle-doo", "Turkey", "Gobble", "Duck",
    "Quack", "Goose", "Honk", "Wild animals", "Roaring cats (lions, tigers)", "Roar", "Bird",
    "Bird vocalization, bird call, bird song", "Chirp, tweet", "Squawk", "Pigeon, dove", "Coo",
    "Crow", "Caw", "Owl", "Hoot", "Bird flight, flapping wings", "Canidae, dogs, wolves",
    "Rodents, rats, mice", "Mouse", "Patter", "Insect", "Cricket", "Mosquito", "Fly, housefly",
    "Buzz", "Bee, wasp, etc.", "Frog", "Croak", "Snake", "Rattle", "Whale vocalization",
]
# BGR colour of each second of the generated videos (see media.make_colour_video).
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    """HOME (hence ``Path.home()`` and ``~``) is a temporary folder for this module: building
    the model writes ``~/panns_data/class_labels_indices.csv``, and the default checkpoint
    is ``~/panns_data/...``. (panns.py computes no path from the home folder at import.)"""
    folder = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(folder))
        yield folder


@pytest.fixture(scope="module")
def checkpoint(home, tmp_path_factory):
    """A random-weight Cnn14_DecisionLevelMax checkpoint in the real (Zenodo) format: the
    weights under "model", beside training extras that pickle as numpy scalars and arrays."""
    import torch

    path = tmp_path_factory.mktemp("panns") / "Cnn14_DecisionLevelMax_random.pth"
    torch.manual_seed(0)
    torch.save({"iteration": np.int64(660000), "model": panns.build_model().state_dict(),
                "sampler": {"indexes_per_class": [np.arange(5), np.arange(3)],
                            "queue": [np.int64(4), np.int64(1)], "mAP": np.float32(0.385)}},
               path)
    assert Path.home() == home and (home / "panns_data/class_labels_indices.csv").is_file()
    yield path
    panns.clear_model_cache()  # ~1 GB of RAM and 327 MB of disk back for the other tests
    path.unlink()


def detect_config(write_config, tmp_path, **detect_keys):
    lines = "".join(f"  {k}: {v}\n" for k, v in detect_keys.items())
    # stage 4's spectrogram must span the segment (checked at load): 256 frames of it
    hop = round(32000 * float(detect_keys.get("segment_seconds", 3.0)) / 256)
    return load_config(write_config(
        f"paths:\n  audio: {tmp_path}/audio\n  detections: {tmp_path}/det\ndetect:\n{lines}"
        f"features:\n  hop_length: {hop}\n"))


def pcm16(y: np.ndarray) -> np.ndarray:
    return np.round(np.clip(y, -1, 32767 / 32768) * 32768).astype(np.int16)


class FixedScorer:
    """Stands in for the model: returns given frame scores (one column), 100 frames/s."""

    sample_rate = None

    def __init__(self, scores: np.ndarray, labels=("Dog",)):
        self.scores = scores
        self.labels = labels

    def __call__(self, clips):
        return [self.scores[:, None] for _ in clips]


# --------------------------------------------------------------------------------------------
# Labels and config
# --------------------------------------------------------------------------------------------

def test_shipped_labels_have_527_classes_and_the_animal_subtree():
    with panns.LABELS_CSV.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == list(range(527))
    labels = panns.audioset_labels()
    assert len(labels) == panns.NUM_CLASSES == len(set(labels))
    assert len({r["mid"] for r in rows}) == 527
    assert list(labels[72:137]) == ANIMAL_NAMES
    assert labels[0] == "Speech" and labels[526] == "Field recording"


def test_package_label_file_is_repaired_before_import(tmp_path):
    broken = tmp_path / "panns_data" / "class_labels_indices.csv"
    broken.parent.mkdir()
    broken.write_text("")  # what an offline wget leaves behind
    assert panns.install_package_labels(tmp_path) == broken
    assert broken.read_bytes() == panns.LABELS_CSV.read_bytes()
    mtime = broken.stat().st_mtime_ns
    panns.install_package_labels(tmp_path)  # a good file is left alone
    assert broken.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("classes, message", [
    ("[Dog, Barking]", r"detect\.audioset_classes\.dogs: unknown AudioSet class 'Barking' "
                       r"\(did you mean 'Bark'"),
    ("[meow]", r"unknown AudioSet class 'meow' \(did you mean 'Meow'"),
    ("[527]", r"527 is not an AudioSet class index \(0-526\)"),
    ("[]", r"detect\.audioset_classes\.dogs: empty list"),
])
def test_config_rejects_unknown_audioset_classes(write_config, classes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(f"detect:\n  audioset_classes:\n    dogs: {classes}\n"))


def test_config_accepts_names_and_indices(write_config):
    config = load_config(write_config("detect:\n  audioset_classes:\n    dogs: [Bark, 74]\n"))
    assert panns.resolve_classes(config.detect.audioset_classes["dogs"]) == ([74, 75], [])


# --------------------------------------------------------------------------------------------
# Pure functions: window choice on injected scores (known answers)
# --------------------------------------------------------------------------------------------

def test_best_window_finds_the_plateau():
    scores = np.zeros(1000)
    scores[420:720] = 0.9
    scores[100:150] = 1.0  # a higher but shorter burst loses on the window mean
    start, mean = audio.best_window(scores, window_frames=300)
    assert (start, mean) == (420, pytest.approx(0.9))
    assert detect.peak_frame(scores, start, 300) == 420


def test_best_window_matches_brute_force_and_prefers_the_earliest_tie(rng):
    scores = rng.random(503)
    start, mean = audio.best_window(scores, window_frames=37)
    means = [scores[i:i + 37].mean() for i in range(503 - 37 + 1)]
    assert start == int(np.argmax(means)) and mean == pytest.approx(max(means))
    assert audio.best_window(np.ones(10), window_frames=3) == (0, 1.0)


def test_short_clip_is_one_window():
    assert audio.best_window(np.array([0.2, 0.4]), window_frames=300) == (0, pytest.approx(0.3))
    with pytest.raises(ValueError, match="window_frames=0 must be > 0"):
        audio.best_window(np.ones(5), window_frames=0)


def test_frame_scores_take_the_max_over_the_chosen_classes():
    probs = np.array([[0.9, 0.1, 0.2], [0.0, 0.5, 0.7]], dtype=np.float32)
    np.testing.assert_allclose(detect.frame_scores(probs, [1, 2]), [0.2, 0.7])
    assert detect.top_labels(probs, ["a", "b", "c"], k=2) == ["a", "c"]


def test_energy_scores_map_dbfs_to_unit_range():
    sr = 22050  # not a multiple of 100 or 320: frames still 10 ms apart
    y = np.zeros(sr, dtype=np.float32)
    y[sr // 2:] = tone(0.5, sr, amplitude=1.0)  # full-scale sine: -3 dBFS
    scores = audio.energy_scores(y, sr)
    assert scores.shape == (100,)
    assert scores[:50].max() == 0.0
    np.testing.assert_allclose(scores[51:], 1 - 3.01 / 80, atol=2e-3)


# --------------------------------------------------------------------------------------------
# PANNs with random weights
# --------------------------------------------------------------------------------------------

def test_missing_checkpoint_stops_with_instructions(tmp_path, write_config, capsys):
    make_wav(tmp_path / "audio" / "dogs" / "a.wav", tone(1.0))
    small = tmp_path / "truncated.pth"
    small.write_bytes(b"\0" * 100)
    for path, problem in [(tmp_path / "nope.pth", "does not exist"),
                          (small, "is 100 bytes, smaller than a real checkpoint")]:
        cfg = write_config(f"paths:\n  audio: audio\n  detections: det\n"
                           f"detect:\n  checkpoint: {path}\n")
        assert animal_sound_detector.main(["--config", str(cfg), "-q"]) == 2
        err = capsys.readouterr().err
        assert f"detect.checkpoint={path} {problem}" in err
        assert "--download-models" in err and "zenodo.org/record/3987831" in err
        assert "Traceback" not in err
    assert not (tmp_path / "det" / "manifest.csv").exists()  # stopped before any work


def test_audioset_classes_key_naming_no_group_is_warned_with_a_suggestion(
        tmp_path, write_config, caplog, monkeypatch):
    import torch

    from animalvae.device import pick_device

    make_wav(tmp_path / "audio" / "dogs" / "a.wav", tone(1.0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(write_config(
        f"paths:\n  audio: audio\n  detections: det\ndetect:\n  device: cuda\n"
        f"  checkpoint: {tmp_path}/nope.pth\n"
        "  audioset_classes:\n    dog: [Dog]\n    '*': [Dog]\n"))
    with caplog.at_level(logging.WARNING, logger="animalvae"), \
            pytest.raises(ConfigError) as info:
        run(cfg, StageOptions(progress=False))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("detect.audioset_classes['dog']" in m and "did you mean 'dogs'?" in m
               for m in warned), warned
    assert not any("'*'" in m for m in warned)
    assert ("detect.device='cuda' but CUDA is not available here (use auto or cpu)"
            in info.value.problems)
    with pytest.raises(ConfigError, match=r"^train\.device='cuda:1' but CUDA is not available"):
        pick_device("cuda:1", key="train.device")


def numpy1_checkpoint(path, obj):
    """``torch.save(obj)`` as a numpy 1 install writes it (``numpy.core.multiarray``), like the
    Zenodo files; the legacy format keeps the pickle as plain bytes, so the names can be set."""
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return path


def test_checkpoint_with_numpy_extras_loads_only_the_model_weights(tmp_path):
    """(The ``checkpoint`` fixture carries such extras too, through load_model.)"""
    import torch

    weights = {"w": torch.arange(3.0)}
    extras = {"iteration": np.int64(5), "extra": np.float32(1.0), "flag": np.bool_(True),
              "sampler": {"indexes": [np.arange(4), np.array([0.5, 1.5])]}}
    torch.save({"model": weights, **extras}, tmp_path / "numpy2.pth")
    numpy1_checkpoint(tmp_path / "numpy1.pth", {"model": weights, **extras})
    for name in ("numpy2.pth", "numpy1.pth"):
        state = panns.read_state_dict(tmp_path / name)
        assert list(state) == ["w"] and torch.equal(state["w"], weights["w"])


def test_checkpoint_with_other_pickled_objects_is_refused_in_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(panns, "MIN_CHECKPOINT_BYTES", 1)
    path = tmp_path / "code.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>not found</html>" * 10)
    for bad, why in [(path, "it pickles argparse.Namespace, which weights_only=True does not "
                            "allow"),
                     (junk, "not a torch checkpoint, or a damaged one")]:
        with pytest.raises(ConfigError) as info:
            panns.load_model(bad)
        message = str(info.value)
        assert message.startswith(f"detect.checkpoint={bad} cannot be loaded ({why}")
        assert "\n" not in message and "--download-models" in message



def test_a_checkpoint_that_fails_to_load_stops_the_stage_in_one_line(tmp_path, write_config,
                                                                       capsys, monkeypatch):
    # the model loads in a thread while the first clips are read: its error still stops the run
    monkeypatch.setattr(panns, "MIN_CHECKPOINT_BYTES", 1)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>not found</html>" * 10)
    for name in ("a", "b"):
        make_wav(tmp_path / "audio" / "dogs" / f"{name}.wav", tone(1.0))
    cfg = write_config(f"paths:\n  audio: audio\n  detections: det\n"
                       f"detect:\n  checkpoint: {junk}\n")
    assert animal_sound_detector.main(["--config", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"detect.checkpoint={junk} cannot be loaded" in err and "Traceback" not in err
    assert not list((tmp_path / "det").rglob("*.wav"))      # no segment written

@pytest.mark.slow
def test_scorer_batches_clips_of_different_lengths(checkpoint):
    scorer = PannsScorer(panns.load_model(checkpoint, "cpu"), "cpu")
    lengths = [64000, 32000 + 123, 80000]  # 2 s, ~1 s, 2.5 s at 32 kHz
    rng = np.random.default_rng(1)
    clips = [Clip_(rng.uniform(-0.5, 0.5, n).astype(np.float32)) for n in lengths]
    probs = scorer(clips)
    assert [p.shape for p in probs] == [(1 + n // 320, 527) for n in lengths]  # 100 frames/s
    assert all(((p >= 0) & (p <= 1)).all() for p in probs)
    # The longest clip has no padding in the batch: its scores equal a run on its own.
    np.testing.assert_allclose(scorer(clips[2:])[0], probs[2], atol=1e-5)


class Clip_:
    """The one field PannsScorer reads."""

    def __init__(self, x):
        self.model_input = x


@pytest.mark.slow
def test_stage_with_random_weights_batches_pads_resamples_and_resumes(
        checkpoint, tmp_path, write_config):
    audio = tmp_path / "audio" / "dogs"
    rng = np.random.default_rng(2)
    sources = {"-long": (4.0, 32000), "short": (2.0, 32000), "rate16k": (3.5, 16000)}
    for name, (seconds, sr) in sources.items():
        make_wav(audio / f"{name}.wav", rng.uniform(-0.3, 0.3, int(seconds * sr)), sr)
    (audio / "corrupt.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk")
    config = detect_config(write_config, tmp_path, checkpoint=checkpoint, batch_size=2,
                           min_score=0.0)
    summary = run(config, StageOptions(progress=False))
    assert (summary.ok, summary.skipped, summary.failed) == (3, 0, 1)

    rows = read_manifest(tmp_path / "det")
    assert rows["corrupt"]["status"] == "failed" and rows["corrupt"]["reason"]
    labels = set(panns.audioset_labels())
    for name, (seconds, sr) in sources.items():
        row = rows[name]
        assert row["status"] == "ok" and row["output"] == f"segments/dogs/{name}.wav"
        assert row["frame"] == "" and row["frame_time"] == ""  # no video upstream
        segment, seg_sr = sf.read(tmp_path / "det" / row["output"], dtype="int16")
        info = sf.info(tmp_path / "det" / row["output"])
        assert (seg_sr, info.subtype, segment.shape) == (sr, "PCM_16", (3 * sr,))
        source, _ = sf.read(audio / f"{name}.wav", dtype="int16")
        first = int(round(float(row["window_start"]) * sr))
        assert float(row["window_end"]) == pytest.approx(float(row["window_start"]) + 3.0)
        assert 0 <= float(row["window_start"]) <= max(0.0, seconds - 3.0)
        expected = np.zeros(3 * sr, dtype=np.int16)
        chunk = source[first:first + 3 * sr]
        expected[:len(chunk)] = chunk  # sample-exact; the short clip is padded with zeros
        np.testing.assert_array_equal(segment, expected)
        assert 0 < float(row["score"]) < 1
        assert float(row["window_start"]) <= float(row["peak_time"]) <= float(row["window_end"])
        assert len(row["top_labels"].split("; ")) == 3
        assert set(row["top_labels"].split("; ")) <= labels
    assert (tmp_path / "det" / "settings.yaml").is_file()

    again = run(config, StageOptions(progress=False))
    assert (again.already_done, again.ok, again.failed) == (3, 0, 1)


# --------------------------------------------------------------------------------------------
# Frames and seconds: injected scores through the stage
# --------------------------------------------------------------------------------------------

def stage_items(tmp_path, y, sr, video=""):
    path = make_wav(tmp_path / "audio" / "dogs" / "clip.wav", y, sr)
    return [Item("clip", "dogs", path, "dog barking", {"video": str(video)})]


def test_frame_index_over_100_is_seconds_down_to_the_sample(tmp_path, write_config, rng):
    sr = 22050
    y = pcm16(rng.uniform(-0.5, 0.5, 10 * sr))
    scores = np.zeros(1 + 10 * 100)
    scores[520:820] = 0.8  # 5.20-8.20 s
    config = detect_config(write_config, tmp_path)
    summary = run_stage(DetectStage(config.detect, scorer=FixedScorer(scores)),
                        stage_items(tmp_path, y, sr), tmp_path / "det", progress=False)
    assert summary.ok == 1
    row = read_manifest(tmp_path / "det")["clip"]
    assert (float(row["window_start"]), float(row["window_end"])) == (5.2, 8.2)
    assert float(row["peak_time"]) == 5.2 and row["top_labels"] == "Dog"
    segment, _ = sf.read(tmp_path / "det/segments/dogs/clip.wav", dtype="int16")
    np.testing.assert_array_equal(segment, y[114660:114660 + 3 * sr])  # round(5.2 * 22050)


def test_window_below_min_score_is_skipped_and_a_forced_rerun_removes_the_old_segment(
        tmp_path, write_config):
    items = stage_items(tmp_path, tone(4.0), 32000)
    segment = tmp_path / "det/segments/dogs/clip.wav"
    scorer = FixedScorer(np.full(401, 0.3))
    config = detect_config(write_config, tmp_path, min_score=0.2)
    assert run_stage(DetectStage(config.detect, scorer=scorer), items, tmp_path / "det",
                     progress=False).ok == 1
    assert segment.is_file()
    config = detect_config(write_config, tmp_path, min_score=0.5)
    summary = run_stage(DetectStage(config.detect, scorer=scorer), items, tmp_path / "det",
                        force=True, progress=False)
    assert summary.skipped == 1
    row = read_manifest(tmp_path / "det")["clip"]
    assert (row["status"], row["reason"]) == ("skipped", "no animal sound (score 0.30)")
    assert not segment.exists()


def test_a_new_segment_length_redoes_finished_items(tmp_path, write_config):
    items = stage_items(tmp_path, tone(4.0), 32000)
    scorer = FixedScorer(np.full(401, 0.3))
    for seconds, ok, done in [(3.0, 1, 0), (3.0, 0, 1), (2.0, 1, 0)]:
        config = detect_config(write_config, tmp_path, segment_seconds=seconds)
        summary = run_stage(DetectStage(config.detect, scorer=scorer), items, tmp_path / "det",
                            progress=False)
        assert (summary.ok, summary.already_done) == (ok, done)
    assert sf.info(tmp_path / "det/segments/dogs/clip.wav").duration == 2.0


def test_low_score_skip_is_revisited_only_when_min_score_drops_to_its_score(
        tmp_path, write_config):
    items = stage_items(tmp_path, tone(4.0), 32000)
    animal = FixedScorer(np.full(401, 0.3))

    def once(min_score, scorer=animal):
        config = detect_config(write_config, tmp_path, min_score=min_score)
        summary = run_stage(DetectStage(config.detect, scorer=scorer), items, tmp_path / "det",
                            progress=False)
        return (summary.ok, summary.skipped, summary.already_done + summary.kept_unfinished)

    assert once(0.5, FixedScorer(np.full(401, 0.3), labels=None)) == (0, 1, 0)  # energy
    assert read_manifest(tmp_path / "det")["clip"]["reason"] == "no loud sound (score 0.30)"
    assert once(0.5) == (0, 1, 0)  # another backend's skip is revisited, whatever its score
    row = read_manifest(tmp_path / "det")["clip"]
    assert (row["reason"], float(row["score"]), row["backend"]) == (
        "no animal sound (score 0.30)", pytest.approx(0.3), "panns")
    assert once(0.5) == (0, 0, 1)  # same threshold: the skip stands
    assert once(0.31) == (0, 0, 1)  # still above the recorded score
    assert once(0.3) == (1, 0, 0)  # now at its score: revisited, and it passes


def test_a_skip_is_revisited_from_its_recorded_score_and_backend_not_its_reason(write_config,
                                                                                tmp_path):
    config = detect_config(write_config, tmp_path, min_score=0.5)
    stage = DetectStage(config.detect, scorer=FixedScorer(np.full(401, 0.3)))
    skip = {"status": "skipped", "reason": "reworded for people", "score": "0.4",
            "backend": "panns"}
    assert not stage.should_retry(skip)                                 # 0.5 > 0.4: it stands
    assert stage.should_retry({**skip, "score": "0.5"})                 # now at its score
    assert stage.should_retry({**skip, "backend": "energy"})            # scores do not compare
    assert not stage.should_retry({"status": "skipped", "reason": "no animal sound (score 0.9)"})
    assert stage.should_retry({"status": "failed", "reason": "", "score": "0.1"})


class PickyScorer(FixedScorer):
    """Fails on every batch of more than one clip (as when out of memory), and on clip "bad"."""

    def __init__(self, scores):
        super().__init__(scores)
        self.calls = []

    def __call__(self, clips):
        self.calls.append(len(clips))
        if len(clips) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if clips[0].item.id == "bad":
            raise RuntimeError("boom")
        return super().__call__(clips)


def test_a_failing_batch_is_retried_one_clip_at_a_time(tmp_path, write_config, caplog):
    items = [Item(name, "dogs", make_wav(tmp_path / "audio" / "dogs" / f"{name}.wav", tone(4.0)))
             for name in ("a", "bad", "c")]
    config = detect_config(write_config, tmp_path, batch_size=4)
    scorer = PickyScorer(np.full(401, 0.5))
    with caplog.at_level(logging.WARNING, logger="animalvae"):
        summary = run_stage(DetectStage(config.detect, scorer=scorer), items, tmp_path / "det",
                            progress=False)
    assert (summary.ok, summary.failed) == (2, 1)
    assert scorer.calls == [3, 1, 1, 1]
    rows = read_manifest(tmp_path / "det")
    assert (rows["bad"]["status"], rows["bad"]["reason"]) == ("failed", "RuntimeError: boom")
    assert rows["a"]["status"] == rows["c"]["status"] == "ok"
    assert not (tmp_path / "det/segments/dogs/bad.wav").exists()
    assert "a batch of 3 clips failed (RuntimeError: CUDA out of memory" in caplog.text


def test_slow_writes_hold_back_scoring_so_memory_stays_bounded(tmp_path, write_config,
                                                                monkeypatch):
    """Write-behind is bounded: with a writer far slower than the model, scoring waits, so at
    most (_WRITE_BEHIND_BATCHES + 1) batches of finished clips are held, and none is lost."""
    items = [Item(f"c{k:02d}", "dogs", make_wav(tmp_path / "audio" / "dogs" / f"c{k:02d}.wav",
                                                 tone(3.0)))
             for k in range(12)]
    config = detect_config(write_config, tmp_path, batch_size=2, workers=1)
    stage = DetectStage(config.detect, scorer=FixedScorer(np.full(301, 0.5)))
    held, most = [0], [0]
    lock = threading.Lock()
    score, finish = stage.score, stage.finish

    def counting_score(clips):
        with lock:
            held[0] += len(clips)
            most[0] = max(most[0], held[0])
        return score(clips)

    def slow_finish(clip, probs):
        time.sleep(0.05)
        try:
            return finish(clip, probs)
        finally:
            with lock:
                held[0] -= 1

    monkeypatch.setattr(stage, "score", counting_score)
    monkeypatch.setattr(stage, "finish", slow_finish)
    summary = run_stage(stage, items, tmp_path / "det", progress=False)
    assert summary.ok == 12 and len(read_manifest(tmp_path / "det")) == 12
    assert len(list((tmp_path / "det/segments/dogs").glob("*.wav"))) == 12
    assert most[0] <= 3 * 2   # (_WRITE_BEHIND_BATCHES + 1) batches of 2; unbounded: 12


class RampScorer:
    """Scores rising over the whole model input, 100 frames/s: the last window wins."""

    sample_rate = None
    labels = None

    def __init__(self):
        self.lengths = []

    def __call__(self, clips):
        self.lengths += [c.model_input.shape[0] for c in clips]
        return [np.linspace(0, 1, detect.n_frames(c.model_input.shape[0], hop_length=c.sr // 100)
                            )[:, None] for c in clips]


def test_long_input_is_scored_on_its_first_max_seconds(tmp_path, write_config, rng):
    sr = 16000
    y = pcm16(rng.uniform(-0.5, 0.5, 10 * sr))
    config = detect_config(write_config, tmp_path, max_seconds=4.0, min_score=0.0)
    scorer = RampScorer()
    summary = run_stage(DetectStage(config.detect, scorer=scorer), stage_items(tmp_path, y, sr),
                        tmp_path / "det", progress=False)
    assert summary.ok == 1 and scorer.lengths == [4 * sr]  # read and scored up to 4 s only
    row = read_manifest(tmp_path / "det")["clip"]
    assert (row["status"], row["reason"]) == ("ok", "scored the first 4 s of 10.0 s")
    assert (float(row["window_start"]), float(row["window_end"])) == (1.0, 4.0)
    segment, _ = sf.read(tmp_path / "det/segments/dogs/clip.wav", dtype="int16")
    np.testing.assert_array_equal(segment, y[sr:4 * sr])
    with pytest.raises(ConfigError, match=r"detect\.max_seconds=2\.0 must be >= "
                                          r"detect\.segment_seconds=3\.0"):
        detect_config(write_config, tmp_path, max_seconds=2.0)


def test_io_workers_come_from_detect_workers(tmp_path, write_config):
    config = detect_config(write_config, tmp_path, workers=3)
    assert DetectStage(config.detect, scorer=FixedScorer(np.zeros(1))).io_workers == 3
    assert DetectStage(config.detect, scorer=FixedScorer(np.zeros(1)), io_workers=1
                       ).io_workers == 1  # --workers
    config = detect_config(write_config, tmp_path)
    assert DetectStage(config.detect, scorer=FixedScorer(np.zeros(1))).io_workers == \
        default_workers(0) == len(os.sched_getaffinity(0))


def mean_colour(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("time_s, second", [(0.0, 0), (1.25, 1), (2.84, 2), (3.99, 3), (4.95, 4)])
def test_grab_frame_returns_the_frame_of_that_second(tmp_path, time_s, second):
    video = make_colour_video(tmp_path / "v.mp4", COLOURS)
    frame = frames.grab_frame(video, time_s, window=(0.0, 5.0), min_mean=12, min_std=4)
    assert frame is not None and 0 <= time_s - frame.time_s < 0.1  # the frame on screen
    np.testing.assert_allclose(mean_colour(frame.image), COLOURS[second], atol=8)


def test_blank_frame_falls_back_to_the_nearest_usable_one_in_the_window(tmp_path):
    colours = [COLOURS[0], COLOURS[1], (0, 0, 0), COLOURS[3], COLOURS[4]]
    video = make_colour_video(tmp_path / "v.mp4", colours)
    frame = frames.grab_frame(video, 2.55, window=(1.0, 4.0), min_mean=12, min_std=4)
    assert frame is not None and frame.time_s == pytest.approx(3.0)  # 0.45 s away; 1.9: 0.65
    np.testing.assert_allclose(mean_colour(frame.image), COLOURS[3], atol=8)
    frame = frames.grab_frame(video, 2.3, window=(1.0, 4.0), min_mean=12, min_std=4)
    assert frame.time_s == pytest.approx(1.9)
    assert frames.grab_frame(video, 2.5, window=(2.0, 2.95), min_mean=12, min_std=4) is None


@pytest.mark.parametrize("broken, note", [
    ("VideoCapture", "no frame: OSError: OpenCV cannot read v.mp4: (-5:Bad argument) broken"),
    ("imencode", "no frame: ValueError: OpenCV could not encode a (48, 64, 3) frame as JPEG: "
                 "(-5:Bad argument) broken"),
])
def test_opencv_errors_leave_the_item_ok_without_a_frame(tmp_path, write_config, monkeypatch,
                                                         broken, note):
    video = make_colour_video(tmp_path / "v.mp4", COLOURS)
    items = stage_items(tmp_path, tone(4.0), 32000, video)

    def fail(*args, **kwargs):
        raise cv2.error("OpenCV(5.0.0) /io/x.cpp:1: error: (-5:Bad argument) broken in "
                        "function 'f'\n")

    monkeypatch.setattr(frames.cv2, broken, fail)
    config = detect_config(write_config, tmp_path)
    summary = run_stage(DetectStage(config.detect, scorer=FixedScorer(np.full(401, 0.5))), items,
                        tmp_path / "det", progress=False)
    assert (summary.ok, summary.failed) == (1, 0)
    row = read_manifest(tmp_path / "det")["clip"]
    assert (row["frame"], row["reason"]) == ("", f"{note} in function 'f'")
    assert not (tmp_path / "det/frames").exists()


def test_energy_backend_finds_the_burst_and_saves_its_frame(tmp_path, write_config, rng,
                                                             monkeypatch):
    sr = 16000
    y = 0.001 * rng.standard_normal(5 * sr)
    y[int(3.2 * sr):int(3.6 * sr)] = 0.5 * rng.standard_normal(int(0.4 * sr))  # the burst
    audio = tmp_path / "audio"
    video = make_colour_video(tmp_path / "clips" / "dogs" / "burst.mp4", COLOURS)
    make_wav(audio / "dogs" / "burst.wav", np.clip(y, -1, 1), sr)
    make_wav(audio / "dogs" / "novideo.wav", np.clip(y, -1, 1), sr)
    write_manifest(audio, [
        {"id": "burst", "label": "dog barking", "group": "dogs", "output": "dogs/burst.wav",
         "status": "ok", "video": str(video)},
        {"id": "novideo", "label": "dog barking", "group": "dogs",
         "output": "dogs/novideo.wav", "status": "ok", "video": ""}], ("video",))
    config = detect_config(write_config, tmp_path, backend="energy", segment_seconds=2.0,
                           min_score=0.3)
    summary = run(config, StageOptions(progress=False))
    assert (summary.ok, summary.failed) == (2, 0)
    settings = yaml.safe_load((tmp_path / "det/settings.yaml").read_text())
    assert (settings["backend"], settings["workers"], settings["max_seconds"]) == \
        ("energy", 0, 60.0)
    rows = read_manifest(tmp_path / "det")
    row = rows["burst"]
    start, end = float(row["window_start"]), float(row["window_end"])
    assert start <= 3.2 and 3.6 <= end and end - start == pytest.approx(2.0)
    assert 3.2 <= float(row["peak_time"]) < 3.6 and row["top_labels"] == ""
    assert row["frame"] == "frames/dogs/burst.jpg"
    assert 3.2 - 0.1 <= float(row["frame_time"]) <= 3.6
    saved = cv2.imread(str(tmp_path / "det" / row["frame"]))
    np.testing.assert_allclose(mean_colour(saved), COLOURS[3], atol=8)
    assert rows["novideo"]["status"] == "ok" and rows["novideo"]["frame"] == ""
    assert not (tmp_path / "det/frames/dogs/novideo.jpg").exists()


# --------------------------------------------------------------------------------------------
# Downloads: never the internet
# --------------------------------------------------------------------------------------------

def refused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (the connection is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/Cnn14_DecisionLevelMax_mAP%3D0.385.pth"


def test_download_offline_fails_cleanly(tmp_path, write_config, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(panns, "CHECKPOINT_URL", refused_url())
    monkeypatch.setattr(panns, "LABELS_URL", refused_url())
    target = tmp_path / "models" / "ck.pth"
    cfg = write_config(f"detect:\n  checkpoint: {target}\n")
    assert animal_sound_detector.main(["--config", str(cfg), "--download-models", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"cannot download {panns.CHECKPOINT_URL}" in err and "are you online?" in err
    assert "3987831" in err and "Traceback" not in err
    assert not target.exists() and not list(target.parent.glob(".*"))
    # The shipped labels stand in for the ones that could not be fetched.
    assert (tmp_path / "panns_data/class_labels_indices.csv").read_bytes() == \
        panns.LABELS_CSV.read_bytes()


@pytest.fixture
def http_folder(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checks_size_and_renames_into_place(tmp_path, http_folder, monkeypatch):
    www = tmp_path / "www"
    (www / "labels.csv").write_bytes(panns.LABELS_CSV.read_bytes())
    (www / "model.pth").write_bytes(b"x" * 4096)
    monkeypatch.setattr(panns, "MIN_CHECKPOINT_BYTES", 1000)
    target = tmp_path / "models" / "ck.pth"
    got = panns.download_models(target, progress=False, home=tmp_path,
                                checkpoint_url=f"{http_folder}/model.pth",
                                labels_url=f"{http_folder}/labels.csv")
    assert got == target and target.read_bytes() == b"x" * 4096
    assert (tmp_path / "panns_data/class_labels_indices.csv").is_file()

    monkeypatch.setattr(panns, "MIN_CHECKPOINT_BYTES", 10_000)  # the served file is short
    short = tmp_path / "models" / "short.pth"
    with pytest.raises(ConfigError, match=r"model\.pth is incomplete \(4096 bytes"):
        panns.download_models(short, progress=False, home=tmp_path,
                              checkpoint_url=f"{http_folder}/model.pth",
                              labels_url=f"{http_folder}/labels.csv")
    assert sorted(p.name for p in target.parent.iterdir()) == ["ck.pth"]  # no partial file
