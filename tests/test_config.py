"""The config loader: the shipped file, relative paths, every kind of bad value, overrides."""

import dataclasses
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from animalvae.config import (
    DEFAULT_CONFIG,
    REMOVED_KEYS,
    RENAMED_KEYS,
    Config,
    config_to_dict,
    current_keys,
    load_config,
)
from animalvae.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_equals_the_defaults_and_documents_every_key():
    config = load_config(DEFAULT_CONFIG)
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        assert section.name in raw, f"config.yaml lacks section {section.name}"
        for f in dataclasses.fields(getattr(defaults, section.name)):
            assert f.name in raw[section.name], f"config.yaml lacks {section.name}.{f.name}"
            value, default = getattr(getattr(config, section.name), f.name), \
                getattr(getattr(defaults, section.name), f.name)
            if not isinstance(default, Path):
                assert value == default, f"{section.name}.{f.name}: {value!r} != {default!r}"


def test_relative_paths_are_relative_to_the_config_file(write_config, tmp_path, monkeypatch):
    path = write_config("paths:\n  audio: sub/audio\n  runs: /abs/runs\n")
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.paths.audio == tmp_path / "sub" / "audio"
    assert config.paths.runs == Path("/abs/runs")
    assert config.paths.clips == tmp_path / "data" / "clips"  # defaults too
    assert config.source == path


def test_a_partial_config_gets_every_other_key_with_paths_relative_to_it(write_config,
                                                                        tmp_path):
    config = load_config(write_config("train:\n  epochs: 3\n"))
    assert config.train.epochs == 3 and config.train.batch_size == Config().train.batch_size
    assert config.paths.clips == tmp_path / "data" / "clips"
    assert config.detect.checkpoint == Path(os.path.expanduser(Config().detect.checkpoint))
    assert dataclasses.replace(config, paths=Config().paths, detect=Config().detect,
                               train=Config().train) == Config()


def test_unknown_key_suggests_the_closest(write_config):
    expected = r"train\.epoch: unknown key \(did you mean train\.epochs\?\)"
    with pytest.raises(ConfigError, match=expected):
        load_config(write_config("train:\n  epoch: 3\n"))


def test_a_removed_key_says_why_it_went(write_config):
    with pytest.raises(ConfigError, match=r"train\.adversarial_epochs: unknown key: the "
                                          r"adversarial phase was removed"):
        load_config(write_config("train:\n  adversarial_epochs: 0\n"))


def test_every_key_of_the_shipped_config_has_one_comment():
    lines = DEFAULT_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"  ([a-z_]+):", line)
        if key:  # a key of a section: its comment on its line, or above it for a mapping
            above = lines[i - 1].strip().startswith("#")
            assert "#" in line or above, f"config.yaml: {key[1]} (line {i + 1}) has no comment"


def test_the_demo_config_holds_only_what_differs_from_the_defaults():
    demo = ROOT / "configs" / "demo.yaml"
    raw, config, defaults = yaml.safe_load(demo.read_text()), load_config(demo), Config()
    for section, values in raw.items():
        for key in values:
            value, default = (getattr(getattr(c, section), key) for c in (config, defaults))
            if isinstance(default, Path):  # a default path is relative to the demo's folder
                default = (demo.parent / os.path.expanduser(default)).resolve()
            assert value != default, f"configs/demo.yaml: {section}.{key} is the default"


def test_renamed_and_removed_keys_name_no_present_key():
    present = {f"{s.name}.{f.name}" for s in dataclasses.fields(Config) if s.name != "source"
               for f in dataclasses.fields(getattr(Config(), s.name))}
    assert set(RENAMED_KEYS.values()) <= present
    assert not (set(RENAMED_KEYS) | set(REMOVED_KEYS)) & present
    assert current_keys("sound_image", {"temperature": 1.5, "candidates": 100, "epochs": 2}) \
        == {"draw_temperature": 1.5, "epochs": 2}


def test_an_old_key_name_is_read_under_its_new_name_with_a_warning(write_config, caplog):
    with caplog.at_level(logging.WARNING, logger="animalvae.config"):
        config = load_config(write_config("train:\n  prior: gmm\n"),
                             ["sound_image.temperature=1.5"])
    assert config.train.prior_fit == "gmm" and config.sound_image.draw_temperature == 1.5
    assert "config key train.prior is now called train.prior_fit" in caplog.text
    assert "sound_image.temperature is now called sound_image.draw_temperature" in caplog.text
    with pytest.raises(ConfigError, match=r"train\.prior: the old name of train\.prior_fit, "
                                          r"which is set too: keep train\.prior_fit only"):
        load_config(write_config("train:\n  prior: gmm\n  prior_fit: kde\n"))


def test_unknown_section_is_reported(write_config):
    with pytest.raises(ConfigError, match=r"trian: unknown key \(did you mean train\?\)"):
        load_config(write_config("trian:\n  epochs: 3\n"))


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: ten\n", r"train\.epochs='ten' must be an integer"),
    ("train:\n  lr: [1]\n", r"train\.lr=\[1\] must be a number"),
    ("model:\n  conditional: 1\n", r"model\.conditional=1 must be true or false"),
    ("features:\n  kind: wavelet\n", r"features\.kind='wavelet' must be one of 'stft' \| 'mel'"),
    ("model:\n  channels: 16\n", r"model\.channels=16 must be a list of int"),
    ("download:\n  classes: [dog barking]\n", r"download\.classes=\[.*\] must be a mapping"),
])
def test_wrong_types_name_the_key(write_config, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(text))


@pytest.mark.parametrize("text, message", [
    ("features:\n  n_fft: 1000\n", r"features\.n_fft=1000 must be a power of two"),
    ("train:\n  batch_size: 0\n", r"train\.batch_size=0 must be > 0"),
    ("train:\n  val_fraction: 1.5\n", r"train\.val_fraction=1\.5 must be in \(0, 1\)"),
    ("train:\n  gmm_components: 0\n",
     r"train\.gmm_components=0 must be > 0 \(train\.prior_fit: none stores no prior\)"),
    ("train:\n  prior_fit: parzen\n", r"train\.prior_fit='parzen' must be one of 'kde' \| 'gmm'"),
    ("extract:\n  silence_dbfs: 3\n", r"extract\.silence_dbfs=3\.0 must be < 0"),
    ("detect:\n  segment_seconds: 12\n", r"detect\.segment_seconds=12\.0 must be <= download"),
    ("download:\n  classes:\n    dogs: [dog barkin]\n",
     r"unknown VGGSound animal label 'dog barkin' \(did you mean 'dog barking'"),
    ("download:\n  url_template: http://x/\n", r"must contain \{ytid\}"),
])
def test_impossible_values_name_the_key_and_rule(write_config, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(text))


def test_all_problems_are_reported_together(write_config):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(
            "train:\n  epoch: 3\n  batch_size: -4\nfeatures:\n  n_fft: 1000\n"))
    problems = info.value.problems
    assert len(problems) == 3
    assert any("train.epoch: unknown key" in p for p in problems)
    assert any("train.batch_size=-4" in p for p in problems)
    assert any("features.n_fft=1000" in p for p in problems)


def test_overrides_are_typed_and_checked(write_config):
    path = write_config("train:\n  epochs: 3\n")
    config = load_config(path, ["train.epochs=5", "model.channels=[8, 16]", "paths.audio=a"])
    assert config.train.epochs == 5
    assert config.model.channels == [8, 16]
    assert config.paths.audio == path.parent / "a"
    with pytest.raises(ConfigError, match=r"train\.epochs='five' must be an integer"):
        load_config(path, ["train.epochs=five"])
    with pytest.raises(ConfigError, match=r"train\.epoks: unknown key"):
        load_config(path, ["train.epoks=5"])
    with pytest.raises(ConfigError, match=r"expected key\.sub=value"):
        load_config(path, ["train.epochs"])


def test_a_bad_set_value_is_reported_under_set_and_a_bad_file_value_under_the_file(
        write_config):
    path = write_config("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.channels=wide", "download.classes.dogs=3"])
    problems = info.value.problems
    assert len(problems) == 3
    assert f"{path}: train.epochs='ten' must be an integer" in problems
    assert "--set download.classes.dogs=3 must be a list of str" in problems
    assert any(p.startswith("--set model.channels='wide'") for p in problems)
    # A cross-section check names every key involved; one of them came from --set.
    with pytest.raises(ConfigError) as info:
        load_config(write_config(""), ["download.clip_seconds=2"])
    assert info.value.problems == ["--set detect.segment_seconds=3.0 must be <= "
                                   "download.clip_seconds=2.0"]
    with pytest.raises(ConfigError) as info:
        load_config(write_config(""), ["train.lr.x=1"])
    assert all(p.startswith("--set train.lr=") for p in info.value.problems)


def test_floats_in_e_notation_and_non_finite_values(write_config):
    config = load_config(write_config("train:\n  lr: 3e-4\n"), ["train.weight_decay=1e-5"])
    assert config.train.lr == 3e-4 and config.train.weight_decay == 1e-5
    with pytest.raises(ConfigError, match=r"train\.lr=nan must be a finite number"):
        load_config(write_config(), ["train.lr=.nan"])
    with pytest.raises(ConfigError, match=r"features\.top_db=inf must be a finite number"):
        load_config(write_config(), ["features.top_db=.inf"])


def test_missing_file_and_bad_yaml(write_config, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_config(write_config("train:\n  epochs: [1\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write_config("- 1\n- 2\n"))


def test_config_to_dict_round_trips(write_config):
    config = load_config(DEFAULT_CONFIG)
    plain = config_to_dict(config)
    assert isinstance(plain["paths"]["audio"], str)
    reloaded = load_config(write_config(yaml.safe_dump(plain)))
    assert dataclasses.replace(reloaded, source=None) == dataclasses.replace(config, source=None)


@pytest.mark.parametrize("script", ["download_video.py", "video_to_audio.py",
                                    "animal_sound_detector.py", "preprocess_audio_vae.py"])
def test_scripts_report_bad_config_by_key_with_exit_2(script, write_config):
    path = write_config("train:\n  epoch: 3\n  batch_size: -1\n")
    proc = subprocess.run([sys.executable, str(ROOT / script), "--config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.epoch: unknown key (did you mean train.epochs?)" in proc.stderr
    assert "train.batch_size=-1 must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", ["download_video.py", "video_to_audio.py",
                                    "animal_sound_detector.py", "preprocess_audio_vae.py",
                                    "vae.py", "pipeline_status.py"])
def test_every_script_has_help(script):
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--config" in proc.stdout or "COMMAND" in proc.stdout


def test_cross_section_shape_rules_are_checked_at_load(write_config):
    with pytest.raises(ConfigError, match=r"features\.hop_length=375 x features\.n_frames=256 "
                                          r".*set features\.hop_length=188"):
        load_config(write_config("extract:\n  sample_rate: 16000\n"))
    with pytest.raises(ConfigError, match=r"features\.n_frames=16 must be divisible by "
                                          r"2\*\*len\(model\.channels\)=64"):
        load_config(write_config("features:\n  n_frames: 16\n  hop_length: 6000\n"
                                 "  n_fft: 8192\n"))
