"""The pipeline under a real Slurm: a one-node cluster started here (tests/slurm_cluster.py).

On the demo's generated videos, served from 127.0.0.1 as in the demo:

- ``tools/slurm_pipeline.sh`` submits stages 1-4 as job arrays and stage 5 as a job after
  them (``tools/slurm_train.sbatch``, two gloo processes on the CPU); every manifest then
  holds the rows a plain run of the scripts gives, once each, and training finished;
- a download task cancelled mid-stage (``scancel``) records what it finished and frees its
  folder, stage 2 takes the rest, and that task resubmitted alone completes the stage with
  nothing lost or doubled.

Runs as root on Linux with slurm-wlm and munge installed (``make setup`` installs them as
root); skipped elsewhere, unless ANIMALVAE_REQUIRE_SLURM is set (as CI sets it): then a
missing Slurm fails.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from slurm_cluster import REQUIRE_ENV, TERMINAL, LocalSlurm, processes_with, unavailable

from animalvae.demo import data as demo_data
from animalvae.demo.pipeline import DEMO_CONFIG
from animalvae.shards import Shard, manifest_parts
from animalvae.stage import MANIFEST, read_manifest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
CLIPS_PER_GROUP = 2                 # 6 videos and one the server lacks
STAGES = {"download_video.py": "clips", "video_to_audio.py": "audio",
          "animal_sound_detector.py": "detections", "preprocess_audio_vae.py": "spectrograms"}
EPOCHS = 2                          # 3 training clips, batch 4: one step per epoch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[LocalSlurm]:
    """A one-node cluster for this module; leaving it checks that no process of it is left."""
    why = unavailable()
    if why:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{why}; {REQUIRE_ENV} is set, so this must not be skipped")
        pytest.skip(why)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


# --------------------------------------------------------------------------------------------
# Data, server, config
# --------------------------------------------------------------------------------------------

class _Videos(http.server.SimpleHTTPRequestHandler):
    """Serves the demo videos; ``hold`` parks the request for one video until released."""

    def do_GET(self) -> None:        # noqa: N802 (the base class's name)
        self.server.hold.maybe_wait(self.path.lstrip("/"))
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


class _Hold:
    """Parks the requests for the second distinct video of ``names`` that is asked for."""

    def __init__(self, names: set[str] = frozenset()):
        self.names, self.seen = set(names), []
        self.held = ""
        self.arrived, self.released = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def maybe_wait(self, name: str) -> None:
        with self._lock:
            if name in self.names and name not in self.seen:
                self.seen.append(name)
            parked = len(self.seen) > 1 and name == self.seen[1]
            if parked:
                self.held = name
        if parked and not self.released.is_set():
            self.arrived.set()
            self.released.wait(300)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass                          # a client gone (the cancelled task): nothing to report


@contextlib.contextmanager
def serving(videos: Path, hold: _Hold | None = None) -> Iterator[str]:
    """Serve ``videos`` on 127.0.0.1 while the block runs; yields the base url."""
    server = _Server(("127.0.0.1", 0), functools.partial(_Videos, directory=str(videos)))
    server.hold = hold or _Hold()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.hold.released.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """The demo's videos and VGGSound-format CSV: (videos folder, CSV)."""
    csv_path = tmp_path_factory.mktemp("sample") / "vggsound_demo.csv"
    videos, _ = demo_data.build_dataset(csv_path, CLIPS_PER_GROUP, workers=2)
    return videos, csv_path


def write_config(folder: Path, csv_path: Path, url: str) -> Path:
    """configs/demo.yaml with every path in ``folder``, the server's url and tiny training."""
    settings = yaml.safe_load(DEMO_CONFIG.read_text())
    settings["paths"] = {"vggsound_csv": str(csv_path), "runs": str(folder / "runs"),
                         **{key: str(folder / "data" / key) for key in STAGES.values()}}
    settings["download"]["url_template"] = url + "/{ytid}.mp4"
    settings["train"].update(name="slurm", epochs=EPOCHS, batch_size=4, device="cpu")
    settings["generate"]["spread"] = 1.3       # a number: no spread fit after training
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def statuses(folder: Path) -> dict[str, str]:
    return {item_id: row["status"] for item_id, row in read_manifest(folder).items()}


def assert_once_each(folder: Path) -> None:
    """Every id in one row of one manifest file; an output for each ok row, no leftovers."""
    files = [p for p in (folder / MANIFEST, *manifest_parts(folder)) if p.is_file()]
    ids = Counter()
    for path in files:
        with path.open(newline="") as fh:
            ids.update(row["id"] for row in csv.DictReader(fh))
    assert ids and max(ids.values()) == 1, ids
    for row in read_manifest(folder).values():
        assert (row["status"] == "ok") == bool(row["output"]), row
        if row["output"]:
            assert (folder / row["output"]).is_file(), row
    leftovers = [p for p in folder.rglob(".*") if ".tmp" in p.name or p.name.startswith(".lock")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def plain(dataset, tmp_path_factory) -> Path:
    """Stages 1-4 run plainly, one script after the other: the data folder."""
    videos, csv_path = dataset
    folder = tmp_path_factory.mktemp("plain")
    with serving(videos) as url:
        config = write_config(folder, csv_path, url)
        for script in STAGES:
            done = subprocess.run([PYTHON, str(ROOT / script), "--config", str(config), "-q"],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
    return folder / "data"


# --------------------------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(slurm, dataset, tmp_path_factory) -> dict:
    """tools/slurm_pipeline.sh with 2 shards, run from outside the repository, to the end."""
    videos, csv_path = dataset
    folder = tmp_path_factory.mktemp("through slurm")   # a space in the path, on purpose
    with serving(videos) as url:
        config = write_config(folder, csv_path, url)
        out = slurm.command("bash", str(ROOT / "tools" / "slurm_pipeline.sh"), "--cpus", "1",
                            "--train-procs", "2", "--logs", str(folder / "logs"), "2",
                            "--config", str(config), "-q", cwd=folder)
        jobs = dict(re.findall(r"(download|extract|detect|features|train) (\d+)", out))
        states = slurm.wait(*jobs.values(), timeout_s=420)
    return {"folder": folder, "config": config, "jobs": jobs, "states": states, "out": out}


def test_every_job_of_the_pipeline_completed(pipeline):
    assert list(pipeline["jobs"]) == ["download", "extract", "detect", "features", "train"]
    states = pipeline["states"]
    for stage in ("download", "extract", "detect", "features"):
        assert states[pipeline["jobs"][stage]] == {"1": ("COMPLETED", "0:0"),
                                                   "2": ("COMPLETED", "0:0")}, stage
    assert list(states[pipeline["jobs"]["train"]].values()) == [("COMPLETED", "0:0")]
    assert "SHARDS=2 sbatch --array=K" in pipeline["out"]       # how to rerun one shard


def test_every_manifest_equals_a_plain_run(pipeline, plain):
    data = pipeline["folder"] / "data"
    for name in [*STAGES.values(), "spectrograms/images"]:
        assert statuses(data / name) == statuses(plain / name), name
        assert_once_each(data / name)
    assert len(manifest_parts(data / "clips")) == 2         # each shard wrote its own rows
    assert Counter(statuses(data / "clips").values()) == {"ok": 6, "failed": 1}
    assert Counter(statuses(data / "spectrograms").values()) == {"ok": 6}


def test_training_ran_on_two_processes_and_wrote_the_model(pipeline):
    run = pipeline["folder"] / "runs" / "slurm"
    assert (run / "model.pth").stat().st_size > 0
    import torch
    last = torch.load(run / "last.pth", weights_only=True)
    assert (last["epoch"], last["world_size"]) == (EPOCHS, 2)


def test_pipeline_status_reports_every_stage_done(pipeline):
    done = subprocess.run([PYTHON, str(ROOT / "pipeline_status.py"), "--config",
                           str(pipeline["config"])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    table = {m[0]: [int(n) for n in m[1:]] for m in re.findall(
        r"^(\d \w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", done.stdout, flags=re.M)}
    assert table == {"1 download": [6, 0, 1, 0], "2 extract": [6, 0, 0, 0],
                     "3 detect": [6, 0, 0, 0], "4 features": [6, 0, 0, 0]}, done.stdout
    assert f"5 train: epoch {EPOCHS} of {EPOCHS}" in done.stdout


def test_the_logs_hold_no_traceback(pipeline):
    logs = sorted((pipeline["folder"] / "logs").iterdir())
    assert len(logs) == 4 * 2 + 1
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, (log.name, text[-3000:])


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------

def stage_array(slurm: LocalSlurm, script: str, config: Path, logs: Path, *, array: str,
                shards: int, after: str = "") -> str:
    """Submit ``tools/slurm_stage.sbatch SCRIPT`` as a user does, from the repository."""
    logs.mkdir(exist_ok=True)          # Slurm does not make the folder of --output
    argv = ["sbatch", "--parsable", f"--array={array}", "--cpus-per-task=1",
            f"--output={logs}/%x-%A_%a.out", f"--job-name={Path(script).stem}"]
    if after:
        argv.append(f"--dependency=afterany:{after}")
    argv += [str(ROOT / "tools" / "slurm_stage.sbatch"), script, "--config", str(config), "-q"]
    return slurm.command(*argv, env={"SHARDS": str(shards)}, cwd=ROOT).strip()


def test_a_task_cancelled_mid_stage_and_resubmitted_alone_loses_and_doubles_nothing(
        slurm, dataset, plain, tmp_path):
    videos, csv_path = dataset
    clips = demo_data.plan_dataset(CLIPS_PER_GROUP)
    ids = {f"{c.ytid}_{c.start:06d}": f"{c.ytid}.mp4" for c in clips}
    mine = {item_id for item_id in ids if Shard(2, 3).owns(item_id)}     # three clips
    hold = _Hold({ids[item_id] for item_id in mine})   # the second of them waits at the server
    data, logs = tmp_path / "data", tmp_path / "logs"
    with serving(videos, hold) as url:
        config = write_config(tmp_path, csv_path, url)
        download = stage_array(slurm, "download_video.py", config, logs, array="1-3", shards=3)
        extract = stage_array(slurm, "video_to_audio.py", config, logs, array="1-3", shards=3,
                              after=download)
        while not hold.arrived.wait(1):
            tasks = slurm.job_states(download)
            assert not all(s[0] in TERMINAL for s in tasks.values()), tasks
        assert slurm.job_states(download)["2"][0] == "RUNNING"      # mid-stage: one clip done
        slurm.command("scancel", f"{download}_2")
        states = slurm.wait(download, extract, timeout_s=180)
        assert states[download]["2"][0] == "CANCELLED"
        assert [states[download][k][0] for k in "13"] == ["COMPLETED"] * 2
        # SIGTERM ended it as Ctrl-C does: the clip it finished is recorded, the folder free
        log = (logs / f"download_video-{download}_2.out").read_text()
        assert "interrupted; finished items are kept" in log and "Traceback" not in log
        first = next(i for i in mine if ids[i] == hold.seen[0])
        part = read_manifest(data / "clips")
        assert {i for i in mine if i in part} == {first} and part[first]["status"] == "ok"
        assert not list((data / "clips").glob(".lock*"))
        # stage 2 went on with what stage 1 has: every clip but the cancelled task's other two
        clips_ok = {i for i, s in statuses(data / "clips").items() if s == "ok"}
        assert statuses(data / "audio") == dict.fromkeys(clips_ok, "ok") and len(clips_ok) == 4

        hold.released.set()        # the video is there again: task 2 alone, then stage 2
        again = stage_array(slurm, "download_video.py", config, logs, array="2", shards=3)
        assert slurm.wait(again)[again] == {"2": ("COMPLETED", "0:0")}
    extract = stage_array(slurm, "video_to_audio.py", config, logs, array="1-3", shards=3)
    assert all(s == ("COMPLETED", "0:0") for s in slurm.wait(extract)[extract].values())
    for name in ("clips", "audio"):
        assert statuses(data / name) == statuses(plain / name), name
        assert_once_each(data / name)


def test_a_resubmitted_task_needs_to_know_n(slurm, tmp_path):
    job = slurm.command("sbatch", "--parsable", "--array=2", "--cpus-per-task=1",
                        f"--output={tmp_path}/%A_%a.out",
                        str(ROOT / "tools" / "slurm_stage.sbatch"), "video_to_audio.py",
                        cwd=ROOT).strip()
    assert slurm.wait(job)[job]["2"] == ("FAILED", "2:0")
    assert "set SHARDS=N" in next(tmp_path.glob("*.out")).read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_leftover_check_finds_a_process_by_its_environment(tmp_path):
    marker = f"SLURM_CONF={tmp_path}/slurm.conf"
    proc = subprocess.Popen(["sleep", "60"], env={**os.environ, "SLURM_CONF": marker[11:]})
    try:
        assert processes_with(marker) == [proc.pid]
        assert processes_with(marker + "x") == []
    finally:
        proc.kill()
        proc.wait()
    assert processes_with(marker) == []
