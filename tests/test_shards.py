"""--shard K/N, manifest parts and the folder lock: many processes share one output folder.

Real processes: shards run concurrently with multiprocessing (a toy stage that takes a moment
per item, so their work and their manifest writes overlap), and one test runs stage 2's
script three times at once on real clips with ffmpeg.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from media import make_clip

from animalvae.errors import ConfigError
from animalvae.shards import STALE_AFTER_S, FolderLock, Shard, manifest_parts, parse_shard
from animalvae.stage import MANIFEST, Item, Stage, atomic_path, read_manifest, run_stage

ROOT = Path(__file__).resolve().parent.parent
IDS = [f"clip{i:03d}_000000" for i in range(24)] + ["-dash_000001", "bad_000002"]


class Slow(Stage):
    """Upper-cases a text file after a short pause; an id with "bad" fails."""

    name = "slow"
    suffix = ".txt"
    columns = ("chars",)
    executor = "thread"

    def process(self, item, output):
        time.sleep(0.02)
        if "bad" in item.id:
            raise ValueError("bad input")
        text = Path(item.source).read_text().upper()
        with atomic_path(output) as tmp:
            tmp.write_text(text)
        return {"chars": len(text)}


def make_items(folder: Path) -> list[Item]:
    items = []
    for i, item_id in enumerate(IDS):
        group = ("dogs", "cats")[i % 2]
        src = folder / "in" / group / f"{item_id}.txt"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"hello {item_id}")
        items.append(Item(item_id, group, src, label=group))
    return items


def _run_shard(folder: str, out: str, index: int, count: int, start) -> None:
    start.wait()  # all shards go at once
    run_stage(Slow(), make_items(Path(folder)), Path(out), workers=2, progress=False,
              shard=Shard(index, count))


def _hold_lock(out: str, shard: tuple[int, int] | None, ready, release) -> None:
    with FolderLock(Path(out), Shard(*shard) if shard else None):
        ready.set()
        release.wait(60)


def outputs(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text()
            for p in sorted(folder.rglob("*.txt"))}


def test_shards_split_the_ids_stably_and_completely():
    shards = [Shard(k, 3) for k in (1, 2, 3)]
    for item_id in [f"x{i}" for i in range(300)] + IDS:
        assert sum(s.owns(item_id) for s in shards) == 1
    counts = [sum(s.owns(f"x{i}") for i in range(300)) for s in shards]
    assert min(counts) > 70                      # a hash, not a block split: roughly even
    # CRC-32 of the id: the same on every machine and in every Python
    assert [s.owns("---g-f_I2yQ_000001") for s in shards] == [False, False, True]


@pytest.mark.parametrize("text, message", [("0/3", "between 1 and N=3"), ("4/3", "between"),
                                           ("2", "not K/N"), ("a/b", "not K/N")])
def test_bad_shard_flags(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_shard(text)
    assert parse_shard(" 2/8 ") == Shard(2, 8)


def test_three_concurrent_shards_equal_one_plain_run(tmp_path):
    items = make_items(tmp_path)
    plain = run_stage(Slow(), items, tmp_path / "plain", workers=2, progress=False)
    assert (plain.ok, plain.failed) == (25, 1)

    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_run_shard, args=(str(tmp_path), str(tmp_path / "shared"), k,
                                                  3, start)) for k in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    shared = tmp_path / "shared"
    assert len(manifest_parts(shared)) == 3 and not (shared / MANIFEST).exists()
    assert outputs(shared) == outputs(tmp_path / "plain")
    assert read_manifest(shared) == read_manifest(tmp_path / "plain")   # no row lost

    # a later plain run sees every shard's work, and folds the parts into manifest.csv
    again = Slow()
    summary = run_stage(again, items, shared, progress=False)
    assert (summary.ok, summary.already_done) == (0, 25)
    assert "25 done earlier" in summary.line()
    assert manifest_parts(shared) == [] and not list(shared.glob(".lock*"))
    assert read_manifest(shared) == read_manifest(tmp_path / "plain")


def test_rerunning_a_shard_resumes_it(tmp_path):
    items = make_items(tmp_path)
    shard = Shard(2, 3)
    first = run_stage(Slow(), items, tmp_path / "out", limit=3, progress=False, shard=shard)
    assert first.ok + first.failed == 3 and first.line().startswith("slow (shard 2/3): ")
    second = run_stage(Slow(), items, tmp_path / "out", progress=False, shard=shard)
    mine = [it.id for it in items if shard.owns(it.id)]
    assert second.already_done + second.kept_unfinished + second.ok + second.failed == len(mine)
    assert second.ok + second.failed == len(mine) - 3
    assert set(read_manifest(tmp_path / "out")) == set(mine)


@pytest.mark.parametrize("held, wanted, refused", [
    (None, None, True),            # the same command twice
    (None, (1, 3), True),          # a shard while a plain run works
    ((1, 3), None, True),          # a plain run while a shard works
    ((1, 3), (1, 3), True),        # the same shard twice
    ((1, 3), (2, 4), True),        # shards of another split overlap
    ((1, 3), (2, 3), False),       # another shard of the same split: shares the folder
])
def test_the_folder_lock(tmp_path, held, wanted, refused):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "out"), held, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        shard = Shard(*wanted) if wanted else None
        if refused:
            shared_file = tmp_path / "out" / "normalizer.json"
            with pytest.raises(ConfigError) as exc:
                run_stage(Slow(), make_items(tmp_path), tmp_path / "out", progress=False,
                          shard=shard, prepare=lambda: shared_file.write_text("mine"),
                          settings={"mine": 1})
            assert not shared_file.exists()      # refused before touching the shared files
            assert not (tmp_path / "out" / "settings.yaml").exists()
            message = str(exc.value)
            assert "is in use" in message and f"pid {holder.pid} on {socket.gethostname()}" \
                in message and "UTC" in message and "\n" not in message
            assert not read_manifest(tmp_path / "out")          # nothing done, nothing redone
        else:
            summary = run_stage(Slow(), make_items(tmp_path), tmp_path / "out",
                                progress=False, shard=shard)
            assert summary.ok > 0
    finally:
        release.set()
        holder.join(60)
    # once the holder is gone, the same run goes ahead
    run_stage(Slow(), make_items(tmp_path), tmp_path / "out", progress=False)


def write_lock(folder: Path, *, host: str, pid: int, age_s: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    path.write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age_s,
                                "command": "video_to_audio.py"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "out"
    items = make_items(tmp_path)
    write_lock(out, host=socket.gethostname(), pid=dead_pid())     # this host: pid gone
    assert run_stage(Slow(), items, out, progress=False).ok == 25
    write_lock(out, host="elsewhere", pid=1, age_s=STALE_AFTER_S + 60)  # not refreshed
    assert run_stage(Slow(), items, out, progress=False).already_done == 25
    write_lock(out, host="elsewhere", pid=1, age_s=5)                 # alive over there
    with pytest.raises(ConfigError, match=r"plain run \(video_to_audio.py\) holds it: pid 1 "
                                          r"on elsewhere since"):
        run_stage(Slow(), items, out, progress=False)
    (out / ".lock").write_text('{"host": "half-writ')      # killed while writing it
    with pytest.raises(ConfigError, match=r"its lock file, written .* UTC, is unreadable"):
        run_stage(Slow(), items, out, progress=False)
    old = time.time() - STALE_AFTER_S - 60
    os.utime(out / ".lock", (old, old))
    assert run_stage(Slow(), items, out, progress=False).already_done == 25


def test_a_shard_leaves_other_runs_temporary_files_alone(tmp_path):
    out = tmp_path / "out"
    (out / "dogs").mkdir(parents=True)
    other = out / "dogs" / ".clip000_000000.tmp4242.txt"   # another shard's file in progress
    other.write_text("half")
    folder = out / "dogs" / ".clip001_000000.tmp4242"       # stage 1's per-clip folder
    folder.mkdir()
    (folder / "clip.mp4.part").write_text("half")
    for path in (other, folder):
        os.utime(path, (time.time() - 60, time.time() - 60))
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), (2, 3), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        run_stage(Slow(), make_items(tmp_path), out, progress=False, shard=Shard(1, 3))
        assert other.exists() and folder.exists()
    finally:
        release.set()
        holder.join(60)
    run_stage(Slow(), make_items(tmp_path), out, progress=False)   # alone: cleans up
    assert not other.exists() and not folder.exists()


def test_a_run_alone_keeps_temporary_files_newer_than_its_lock(tmp_path):
    # a shard that started after this run took the folder writes its own temporary files
    out = tmp_path / "out"
    newer = out / "dogs" / ".clip000_000000.tmp4242.txt"
    newer.parent.mkdir(parents=True)
    newer.write_text("half")
    os.utime(newer, (time.time() + 60, time.time() + 60))
    run_stage(Slow(), make_items(tmp_path), out, progress=False, shard=Shard(1, 3))
    assert newer.exists()


def test_three_stage_2_scripts_at_once_equal_one_plain_run(tmp_path):
    clips = tmp_path / "clips"
    for i in range(6):
        make_clip(clips / ("dogs", "cats")[i % 2] / f"clip{i:04d}xyz_00000{i}.mp4",
                  seconds=1.0, frequency=300 + 100 * i)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"paths": {"clips": str(clips)}}))

    def script(out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(ROOT / "video_to_audio.py"), "--config", str(config),
                "--output", str(out), "--workers", "1", "-q", *extra]

    subprocess.run(script(tmp_path / "plain"), check=True, capture_output=True)
    procs = [subprocess.Popen(script(tmp_path / "shared", "--shard", f"{k}/3"),
                              stderr=subprocess.PIPE, text=True) for k in (1, 2, 3)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert all(f"extract (shard {k}/3): ok" in err for k, err in zip((1, 2, 3), errs))

    def wavs(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*.wav"))}

    assert len(wavs(tmp_path / "plain")) == 6
    assert wavs(tmp_path / "shared") == wavs(tmp_path / "plain")
    assert read_manifest(tmp_path / "shared") == read_manifest(tmp_path / "plain")
    done = subprocess.run(script(tmp_path / "shared"), capture_output=True, text=True)
    assert "ok 0 · skipped 0 · failed 0 · 6 done earlier" in done.stderr
