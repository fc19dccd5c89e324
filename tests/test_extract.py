"""Stage 2: generated clips and recordings -> mono PCM16 WAV; bad inputs, resume, the script."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from media import make_clip, make_wav, tone

import video_to_audio
from animalvae import extract
from animalvae.config import load_config
from animalvae.errors import ConfigError, ItemFailed
from animalvae.stage import Item, StageOptions, read_manifest

SR = 32000
DASH = "-leading dash"        # must never be read as an ffmpeg option
UNICODE = "bébé chien 🐶 2"   # spaces and non-ASCII
# id -> (group, status, reason or expected seconds)
EXPECTED = {
    "mono441": ("dogs", "ok", 2.0),
    "stereo441": ("dogs", "ok", 2.0),
    "rate48": ("cats", "ok", 1.5),
    "youtube": ("cats", "ok", 1.3),   # webm: VP9 + Opus 48 kHz
    "quicktime": ("dogs", "ok", 1.0),  # mov
    DASH: ("birds", "ok", 1.2),
    UNICODE: ("birds", "ok", 1.25),
    "noaudio": ("cats", "failed", "no audio stream"),
    "corrupt": ("cats", "failed", "moov atom not found"),
    "partial": ("cats", "failed", "corrupt: decoded"),
    "silent": ("dogs", "skipped", "silent (-inf dBFS)"),
    "short": ("birds", "failed", "too short (0.500 s)"),
    "bark": ("dogs", "ok", 1.3),      # extra: mp3
    "meow": ("cats", "ok", 1.1),      # extra: stereo 22.05 kHz flac
    "cover": ("birds", "ok", 1.0),    # extra: mp3 with cover art (not a video)
}
VIDEO_IDS = {"mono441", "stereo441", "rate48", "youtube", "quicktime", DASH, UNICODE}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """clips/<group>/*.mp4 of every kind, and extra/<group>/ recordings (mp3, flac)."""
    root = tmp_path_factory.mktemp("media")
    clips, extra = root / "clips", root / "extra"
    make_clip(clips / "dogs/mono441.mp4", seconds=2.0)
    make_clip(clips / "dogs/stereo441.mp4", seconds=2.0, channels=2, audio="noise")
    make_clip(clips / "cats/rate48.mp4", seconds=1.5, sample_rate=48000)
    make_clip(clips / "dogs/quicktime.mov", seconds=1.0)
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1.3", "-f", "lavfi", "-i",
            "sine=sample_rate=48000:duration=1.3", "-c:v", "libvpx-vp9", "-deadline", "realtime",
            "-c:a", "libopus", "-shortest", str(clips / "cats/youtube.webm"))
    make_clip(clips / f"birds/{DASH}.mp4", seconds=1.2, audio="noise")
    make_clip(clips / f"birds/{UNICODE}.mp4", seconds=1.25)
    make_clip(clips / "cats/noaudio.mp4", audio=None)
    make_clip(clips / "dogs/silent.mp4", audio="silence")
    make_clip(clips / "birds/short.mp4", seconds=0.5)
    data = (clips / "dogs/mono441.mp4").read_bytes()
    (clips / "cats/corrupt.mp4").write_bytes(data[:len(data) // 2])  # moov atom is at the end
    faststart = root / "faststart.mp4"
    _ffmpeg("-i", str(clips / "dogs/mono441.mp4"), "-c", "copy", "-movflags", "+faststart",
            str(faststart))
    data = faststart.read_bytes()
    (clips / "cats/partial.mp4").write_bytes(data[:len(data) // 2])  # header intact, data cut
    (clips / "dogs/notes.txt").write_text("not a clip")
    (extra / "dogs").mkdir(parents=True)
    (extra / "cats").mkdir()
    (extra / "birds").mkdir()
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=600:sample_rate=44100:duration=1.3",
            str(extra / "dogs/bark.mp3"))
    make_wav(root / "meow.wav", np.stack([tone(1.1, 22050), tone(1.1, 22050, 300)], 1), 22050)
    _ffmpeg("-i", str(root / "meow.wav"), str(extra / "cats/meow.flac"))
    _ffmpeg("-f", "lavfi", "-i", "sine=sample_rate=32000:duration=1", "-f", "lavfi", "-i",
            "color=red:size=32x32:duration=1", "-frames:v", "1", "-map", "0", "-map", "1",
            "-c:v", "mjpeg", "-disposition:v", "attached_pic", str(extra / "birds/cover.mp3"))
    return root


@pytest.fixture
def config_for(media, write_config, tmp_path):
    """A config reading the generated media and writing to tmp_path/audio."""
    def make(*overrides: str, extra: bool = True, clips: Path | None = None):
        text = yaml.safe_dump({
            "paths": {"clips": str(clips or media / "clips"), "audio": str(tmp_path / "audio")},
            "extract": {"extra_audio_dirs": [str(media / "extra")] if extra else []}})
        return load_config(write_config(text), list(overrides))
    return make


def run(config, **options):
    return extract.run(config, StageOptions(progress=False, **options))


def test_every_kind_of_source_gets_its_status_and_a_correct_wav(config_for, tmp_path):
    summary = run(config_for(), workers=2)
    out = tmp_path / "audio"
    rows = read_manifest(out)
    assert set(rows) == set(EXPECTED)
    for id_, (group, status, expected) in EXPECTED.items():
        row = rows[id_]
        assert (row["group"], row["status"]) == (group, status), (id_, row["reason"])
        wav = out / group / f"{id_}.wav"
        if status != "ok":
            assert row["reason"].startswith(expected), (id_, row["reason"])
            assert row["output"] == "" and not wav.exists()
            continue
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert abs(info.frames - round(expected * SR)) <= 1, (id_, info.frames)
        assert row["output"] == f"{group}/{id_}.wav" and row["sample_rate"] == str(SR)
        assert float(row["duration"]) == pytest.approx(expected, abs=1 / SR)
        assert -40 < float(row["rms_dbfs"]) < 0
        assert Path(row["source"]).is_absolute()
        assert row["video"] == (row["source"] if id_ in VIDEO_IDS else "")
    assert (summary.ok, summary.skipped, summary.failed) == (10, 1, 4)
    assert summary.exit_code == 0
    assert yaml.safe_load((out / "settings.yaml").read_text())["sample_rate"] == SR
    assert [p.name for p in out.rglob("*") if ".tmp" in p.name] == []


def test_stereo_is_mixed_down_not_cut_to_one_channel(config_for, tmp_path):
    run(config_for(clips=tmp_path / "no-clips"))
    y, sr = sf.read(str(tmp_path / "audio/cats/meow.wav"))
    left, right = tone(1.1, SR), tone(1.1, SR, 300)
    mix = (left + right) / 2
    assert sr == SR and y.ndim == 1
    # the downmix correlates with both channels alike; one channel alone would favour one
    corr_left = np.corrcoef(y[1000:-1000], left[1000:-1000])[0, 1]
    corr_right = np.corrcoef(y[1000:-1000], right[1000:-1000])[0, 1]
    assert abs(corr_left - corr_right) < 0.05 and np.corrcoef(y, mix)[0, 1] > 0.99


def test_rerun_does_nothing_and_force_redoes(config_for, tmp_path):
    config = config_for(extra=False)
    first = run(config)
    wav = tmp_path / "audio/dogs/mono441.wav"
    stamp = wav.stat().st_mtime_ns
    again = run(config)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 0)
    assert (again.already_done, again.kept_unfinished) == (first.ok, first.skipped + first.failed)
    assert wav.stat().st_mtime_ns == stamp
    forced = run(config, force=True)
    assert (forced.ok, forced.failed) == (first.ok, first.failed)
    assert wav.stat().st_mtime_ns != stamp


def test_failed_clip_is_retried_once_its_file_changes(config_for, media, tmp_path):
    clips = tmp_path / "clips"
    shutil.copytree(media / "clips/cats", clips / "cats")
    config = config_for(extra=False, clips=clips)
    assert read_manifest(run(config).manifest.parent)["noaudio"]["status"] == "failed"
    make_clip(clips / "cats/noaudio.mp4", seconds=1.0)  # replaced by a good clip
    summary = run(config)
    assert (summary.ok, summary.failed) == (1, 0)
    assert read_manifest(tmp_path / "audio")["noaudio"]["status"] == "ok"


def test_new_sample_rate_redoes_the_files(config_for, tmp_path):
    run(config_for(extra=False))
    summary = run(config_for("extract.sample_rate=16000", "features.hop_length=188", extra=False))
    assert summary.ok == 7 and summary.kept_unfinished == 5  # silent and failed clips stay
    info = sf.info(str(tmp_path / "audio/cats/rate48.wav"))
    assert (info.samplerate, info.frames) == (16000, 24000)
    assert read_manifest(tmp_path / "audio")["rate48"]["sample_rate"] == "16000"


def test_silent_skip_is_revisited_once_the_threshold_drops_below_its_level(config_for, media,
                                                                          tmp_path):
    clips = tmp_path / "clips"
    (clips / "dogs").mkdir(parents=True)
    shutil.copy2(media / "clips/dogs/mono441.mp4", clips / "dogs")  # a sine at -21 dBFS
    first = run(config_for("extract.silence_dbfs=-3", extra=False, clips=clips))
    row = read_manifest(tmp_path / "audio")["mono441"]
    assert first.skipped == 1 and row["reason"].startswith("silent (-21.")
    for unchanged_or_still_above in ("-3", "-21"):
        again = run(config_for(f"extract.silence_dbfs={unchanged_or_still_above}", extra=False,
                               clips=clips))
        assert (again.skipped, again.kept_unfinished) == (0, 1)
    lowered = run(config_for("extract.silence_dbfs=-30", extra=False, clips=clips))
    assert (lowered.ok, lowered.already_done) == (1, 0)
    assert read_manifest(tmp_path / "audio")["mono441"]["status"] == "ok"


def test_too_short_failure_is_retried_once_min_seconds_allows_it(config_for, media, tmp_path):
    clips = tmp_path / "clips"
    (clips / "birds").mkdir(parents=True)
    shutil.copy2(media / "clips/birds/short.mp4", clips / "birds")  # 0.5 s
    assert run(config_for(extra=False, clips=clips)).failed == 1
    assert read_manifest(tmp_path / "audio")["short"]["reason"] == "too short (0.500 s)"
    for unchanged_or_still_longer in ("1.0", "0.501"):
        again = run(config_for(f"extract.min_seconds={unchanged_or_still_longer}", extra=False,
                               clips=clips))
        assert (again.failed, again.kept_unfinished) == (0, 1)
    allowed = run(config_for("extract.min_seconds=0.5", extra=False, clips=clips))
    assert (allowed.ok, allowed.already_done) == (1, 0)
    assert float(read_manifest(tmp_path / "audio")["short"]["duration"]) == pytest.approx(0.5)


@pytest.mark.parametrize("status, reason, fields, changed, retry", [
    ("skipped", "silent (-21.07 dBFS)", {"rms_dbfs": "-21.07"}, False, True),  # -60 is below
    ("skipped", "silent (-70.00 dBFS)", {"rms_dbfs": "-70"}, False, False),
    ("skipped", "silent (-inf dBFS)", {"rms_dbfs": "-inf"}, False, False),  # stays silent
    ("skipped", "silent (-70.00 dBFS)", {"rms_dbfs": "-70"}, True, True),   # a replaced file
    ("skipped", "silent (-21.07 dBFS)", {}, False, False),   # no level recorded: kept
    ("failed", "too short (0.999 s)", {"duration": "0.999"}, False, False),  # min_seconds 1.0
    ("failed", "too short (1.000 s)", {"duration": "1"}, False, True),
    ("failed", "too short (0.500 s)", {"duration": "0.5"}, True, True),
    ("failed", "moov atom not found", {}, False, False),     # the file, until it changes
    ("failed", "moov atom not found", {}, True, True),
    ("failed", "OSError: [Errno 28] No space left on device", {}, False, True),
])
def test_should_retry(tmp_path, status, reason, fields, changed, retry):
    source = make_wav(tmp_path / "a.wav", tone(0.1))
    last_run = source.stat().st_mtime + (-10 if changed else 10)
    stage = extract.ExtractStage(sr=SR, min_seconds=1.0, silence_dbfs=-60.0, last_run=last_run)
    row = {"source": str(source), "status": status, "reason": reason, **fields}
    assert stage.should_retry(row) is retry


def test_forced_rerun_that_now_skips_removes_the_old_wav(config_for, tmp_path):
    run(config_for(extra=False))
    wav = tmp_path / "audio/dogs/mono441.wav"
    assert wav.exists()
    summary = run(config_for("extract.silence_dbfs=-3", extra=False), force=True)
    assert summary.ok == 0 and not wav.exists()
    assert read_manifest(tmp_path / "audio")["mono441"]["reason"].startswith("silent (-2")


def test_is_done_wants_mono_pcm16_at_the_configured_rate(tmp_path):
    stage = extract.ExtractStage(sr=SR, min_seconds=1.0, silence_dbfs=-60.0)
    good = make_wav(tmp_path / "good.wav", tone(1.0))
    assert stage.is_done(good, None) and stage.is_done(good, {"sample_rate": str(SR)})
    assert not stage.is_done(good, {"sample_rate": "16000"})
    assert not stage.is_done(make_wav(tmp_path / "st.wav", np.stack([tone(1.0)] * 2, 1)), None)
    assert not stage.is_done(make_wav(tmp_path / "r.wav", tone(1.0, 16000), 16000), None)
    sf.write(tmp_path / "f.wav", tone(1.0), SR, subtype="FLOAT")
    assert not stage.is_done(tmp_path / "f.wav", None)
    (tmp_path / "junk.wav").write_bytes(b"RIFF....")
    assert not stage.is_done(tmp_path / "junk.wav", None)
    assert not stage.is_done(tmp_path / "missing.wav", None)


def test_only_extra_recordings_when_there_are_no_clips(config_for, tmp_path):
    summary = run(config_for(clips=tmp_path / "no-clips"))
    assert summary.ok == 3
    assert {r["video"] for r in read_manifest(tmp_path / "audio").values()} == {""}


def test_nothing_to_convert_is_a_config_error(config_for, tmp_path):
    with pytest.raises(ConfigError, match="clips folder .*no-clips does not exist"):
        run(config_for(extra=False, clips=tmp_path / "no-clips"))


def test_missing_ffmpeg_stops_before_any_work(config_for, tmp_path, monkeypatch):
    config = config_for()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError, match="ffmpeg and ffprobe not found"):
        run(config)
    assert not (tmp_path / "audio").exists()


def test_root_script_exit_codes(media, write_config, tmp_path, capsys):
    good = write_config(yaml.safe_dump({"paths": {"audio": str(tmp_path / "audio")}}))
    small = tmp_path / "small"
    shutil.copytree(media / "clips/dogs", small / "dogs", ignore=shutil.ignore_patterns("s*"))
    assert video_to_audio.main(["--config", str(good), "--input", str(small), "-q"]) == 0
    assert sf.info(str(tmp_path / "audio/dogs/mono441.wav")).samplerate == SR
    captured = capsys.readouterr()
    # -q: nothing but the closing summary line, on stderr
    assert captured.out == ""
    assert re.fullmatch(r"extract: ok 2 · skipped 0 · failed 0 in \d+\.\d s\n", captured.err)
    assert video_to_audio.main(["--config", str(good), "--input", str(small), "-q"]) == 0
    assert re.fullmatch(r"extract: ok 0 · skipped 0 · failed 0 · 2 done earlier "
                        r"in \d+\.\d s\n", capsys.readouterr().err)
    code = video_to_audio.main(["--config", str(good), "--input", str(tmp_path / "nope"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope does not exist" in err[0]
    only_bad = tmp_path / "bad"
    shutil.copytree(media / "clips/cats", only_bad / "cats",
                    ignore=shutil.ignore_patterns("rate*", "youtube*"))  # keep the bad ones
    assert video_to_audio.main(["--config", str(good), "--input", str(only_bad), "-q",
                                "--output", str(tmp_path / "bad-audio")]) == 1


@pytest.mark.parametrize("stderr, reason", [
    (b"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55c93914b180] moov atom not found\n"
     b"/x/-a.mp4: Invalid data found when processing input\n", "moov atom not found"),
    (b"/x/-a.mp4: Invalid data found when processing input\n",
     "Invalid data found when processing input"),
    (b"Stream map '0:a:0' matches no streams.\nTo ignore this, add a trailing '?' to the map.\n",
     "To ignore this, add a trailing '?' to the map."),
    (b"", "ffmpeg failed"),
])
def test_ffmpeg_reason_picks_the_specific_line(stderr, reason):
    assert extract.ffmpeg_reason(stderr, "/x/-a.mp4") == reason


@pytest.mark.parametrize("returncode, stderr, expected", [
    (-2, b"", "interrupted: ffprobe stopped by signal 2"),           # killed by SIGINT
    (-15, b"moov atom not found", "interrupted: ffprobe stopped by signal 15"),
    (255, b"Exiting normally, received signal 2.\n", "interrupted: ffprobe received signal 2"),
    (255, "[in#0 @ 0x5] moov atom not found\nreceived signal 2", "interrupted: ffprobe "
     "received signal 2"),
    (1, b"moov atom not found\n", None),                              # the file's fault
    (255, b"moov atom not found\n", None),
    (0, b"", None),
])
def test_interrupted_reason(returncode, stderr, expected):
    assert extract.interrupted_reason("ffprobe", returncode, stderr) == expected


@pytest.mark.parametrize("tool, returncode, stderr", [
    ("ffprobe", -2, b"x.mp4: moov atom not found\n"),
    ("ffmpeg", 255, b"Exiting normally, received signal 2.\n"),
])
def test_a_tool_stopped_by_a_signal_is_a_retried_failure(tmp_path, monkeypatch, tool,
                                                         returncode, stderr):
    source = make_wav(tmp_path / "a.wav", tone(1.5))
    real_run = subprocess.run

    def fake_run(args, **kwargs):
        if args[0] == tool:
            return subprocess.CompletedProcess(args, returncode, b"", stderr)
        return real_run(args, **kwargs)

    monkeypatch.setattr(extract.subprocess, "run", fake_run)
    stage = extract.ExtractStage(sr=SR, min_seconds=1.0, silence_dbfs=-60.0,
                                 last_run=source.stat().st_mtime + 10)
    with pytest.raises(ItemFailed, match=f"^interrupted: {tool} ") as info:
        stage.process(Item("a", "", source), tmp_path / "out" / "a.wav")
    assert not (tmp_path / "out" / "a.wav").exists()
    row = {"source": str(source), "status": "failed", "reason": str(info.value)}
    assert stage.should_retry(row)   # the file is unchanged, yet it is tried again
