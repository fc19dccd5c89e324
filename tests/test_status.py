"""pipeline_status.py: items per status and stage, what waits, the top reasons, stage 5's epoch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import pipeline_status
from animalvae.config import load_config
from animalvae.stage import write_manifest
from animalvae.status import collect, status_table, top_reasons

# six selected clips: four dogs, two cats
CSV = "".join(f"dogclip{i:04d},{i},dog barking,train\n" for i in range(4)) + \
      "".join(f"catclip{i:04d},{i},cat meowing,test\n" for i in range(2))
CONFIG = """
paths:
  vggsound_csv: vggsound.csv
  clips: data/clips
  audio: data/audio
  detections: data/detections
  spectrograms: data/spectrograms
  runs: runs
download:
  classes: {dogs: [dog barking], cats: [cat meowing]}
train:
  epochs: 30
"""


def row(ytid: str, start: int, group: str, status: str, reason: str = "") -> dict[str, str]:
    return {"id": f"{ytid}_{start:06d}", "group": group, "status": status, "reason": reason}


def make_run(tmp: Path) -> Path:
    (tmp / "vggsound.csv").write_text(CSV)
    (tmp / "config.yaml").write_text(CONFIG)
    data = tmp / "data"
    write_manifest(data / "clips", [
        row("dogclip0000", 0, "dogs", "ok"), row("dogclip0001", 1, "dogs", "ok"),
        row("dogclip0002", 2, "dogs", "failed", "permanent: video unavailable"),
        row("catclip0000", 0, "cats", "ok"),
        row("catclip0001", 1, "cats", "failed", "permanent: video unavailable")])
    write_manifest(data / "audio", [
        row("dogclip0000", 0, "dogs", "ok"),
        row("dogclip0001", 1, "dogs", "skipped", "silent (-71.2 dBFS)")])
    (tmp / "runs" / "default").mkdir(parents=True)
    (tmp / "runs" / "default" / "metrics.csv").write_text(
        "epoch,step,val_loss\n1,10,0.5\n2,20,0.25\n2.5,25,0.3\n")
    return tmp / "config.yaml"


def test_counts_waiting_and_reasons(tmp_path):
    config = load_config(make_run(tmp_path))
    states = collect(config)
    table = status_table(states)
    assert table.loc["1 download"].tolist() == [3, 0, 2, 1]     # dogclip0003 not tried yet
    assert table.loc["2 extract"].tolist() == [1, 1, 0, 1]      # catclip0000 waits
    assert table.loc["3 detect"].tolist() == [0, 0, 0, 1]       # stage 2's ok one waits
    assert table.loc["4 features"].tolist() == [0, 0, 0, 0]
    top = top_reasons(states)
    assert top.to_dict("records") == [
        {"stage": "1 download", "status": "failed", "reason": "permanent: video unavailable",
         "count": 2},
        {"stage": "2 extract", "status": "skipped", "reason": "silent …", "count": 1}]


def test_by_group(tmp_path):
    table = status_table(collect(load_config(make_run(tmp_path))), by_group=True)
    assert table.loc[("1 download", "dogs")].tolist() == [2, 0, 1, 1]
    assert table.loc[("1 download", "cats")].tolist() == [1, 0, 1, 0]
    assert table.loc[("2 extract", "cats")].tolist() == [0, 0, 0, 1]


def test_without_the_csv_stage_1_waiting_is_unknown(tmp_path):
    config = make_run(tmp_path)
    (tmp_path / "vggsound.csv").unlink()
    table = status_table(collect(load_config(config)))
    assert table.loc["1 download", "waiting"] is pd.NA
    assert table.loc["2 extract", "waiting"] == 1


def test_the_command_prints_the_picture(tmp_path, capsys):
    config = make_run(tmp_path)
    assert pipeline_status.main(["--config", str(config), "-q"]) == 0
    out = capsys.readouterr().out
    assert "permanent: video unavailable" in out
    assert "5 train: epoch 2.5 of 30, step 25, best validation loss 0.25" in out


def test_a_bad_flag_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        pipeline_status.main(["--config", str(make_run(tmp_path)), "--reasons", "0"])
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
