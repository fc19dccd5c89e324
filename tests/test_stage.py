"""The stage machinery: skip-done, --force, failures, Ctrl-C and resume, atomic writes, listing."""

import csv
import os
import time
from pathlib import Path

import pytest

from animalvae.errors import ConfigError, ItemFailed, ItemSkipped
from animalvae.stage import MANIFEST, Item, Stage, atomic_path, list_items, read_manifest, run_stage


class Upper(Stage):
    """Toy stage: upper-cases a text file; ids name how an item should behave."""

    name = "upper"
    suffix = ".txt"
    columns = ("chars",)
    executor = "process"

    def __init__(self, interrupt_on: str | None = None):
        self.interrupt_on = interrupt_on
        self.calls: list[str] = []

    def process(self, item, output):
        self.calls.append(item.id)
        if item.id == self.interrupt_on:
            with atomic_path(output) as tmp:
                tmp.write_text("half")
                raise KeyboardInterrupt  # Ctrl-C in the middle of writing
        if "bad" in item.id:
            raise ItemFailed(f"cannot read {item.id}: corrupt")
        if "quiet" in item.id:
            raise ItemSkipped("silent")
        if "oops" in item.id:
            raise ValueError("odd value\nsecond line")
        text = Path(item.source).read_text().upper()
        with atomic_path(output) as tmp:
            tmp.write_text(text)
        return {"chars": len(text)}


def make_items(folder: Path, ids: list[str], group: str = "dogs") -> list[Item]:
    items = []
    for i in ids:
        src = folder / "in" / group / f"{i}.txt"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"hello {i}")
        items.append(Item(i, group, src, label="dog barking"))
    return items


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_happy_path_writes_outputs_and_manifest(tmp_path):
    items = make_items(tmp_path, ["a", "b", "c"])
    summary = run_stage(Upper(), items, tmp_path / "out", progress=False)
    assert (summary.ok, summary.skipped, summary.failed) == (3, 0, 0)
    assert (tmp_path / "out/dogs/a.txt").read_text() == "HELLO A"
    rows = read_manifest(tmp_path / "out")
    assert rows["b"]["status"] == "ok" and rows["b"]["output"] == "dogs/b.txt"
    assert rows["b"]["chars"] == "7" and rows["b"]["label"] == "dog barking"
    with (tmp_path / "out" / MANIFEST).open() as fh:
        header = next(csv.reader(fh))
    assert header == ["id", "label", "group", "source", "output", "status", "reason", "chars"]
    assert summary.line().startswith("upper: ok 3 · skipped 0 · failed 0")


def test_rerun_skips_done_items_and_force_redoes_them(tmp_path):
    items = make_items(tmp_path, ["a", "b"])
    run_stage(Upper(), items, tmp_path / "out", progress=False)
    again = Upper()
    summary = run_stage(again, items, tmp_path / "out", progress=False)
    assert again.calls == [] and summary.already_done == 2 and summary.ok == 0
    assert "ok 0 · skipped 0 · failed 0 · 2 done earlier" in summary.line()
    forced = Upper()
    summary = run_stage(forced, items, tmp_path / "out", force=True, progress=False)
    assert sorted(forced.calls) == ["a", "b"] and summary.ok == 2


def test_invalid_output_is_redone(tmp_path):
    items = make_items(tmp_path, ["a"])
    run_stage(Upper(), items, tmp_path / "out", progress=False)
    (tmp_path / "out/dogs/a.txt").write_text("")  # emptied: not a valid output
    stage = Upper()
    run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == ["a"]


def test_bad_items_are_recorded_and_do_not_stop_the_stage(tmp_path):
    items = make_items(tmp_path, ["a", "bad1", "bad2", "quiet", "oops", "z"])
    summary = run_stage(Upper(), items, tmp_path / "out", progress=False)
    assert (summary.ok, summary.skipped, summary.failed) == (2, 1, 3)
    rows = read_manifest(tmp_path / "out")
    assert rows["bad1"]["status"] == "failed"
    assert rows["bad1"]["reason"] == "cannot read bad1: corrupt"
    assert rows["oops"]["reason"] == "ValueError: odd value second line"  # one line
    assert rows["quiet"]["status"] == "skipped" and rows["quiet"]["reason"] == "silent"
    assert rows["bad1"]["output"] == "" and not (tmp_path / "out/dogs/bad1.txt").exists()
    assert "cannot read bad…: corrupt ×2" in summary.line()  # numbers folded
    assert summary.exit_code == 0


def test_all_failed_gives_exit_code_1(tmp_path):
    summary = run_stage(Upper(), make_items(tmp_path, ["bad"]), tmp_path / "out", progress=False)
    assert summary.exit_code == 1


def test_failed_items_are_retried_and_skips_are_kept(tmp_path):
    items = make_items(tmp_path, ["bad", "quiet"])
    run_stage(Upper(), items, tmp_path / "out", progress=False)
    stage = Upper()
    summary = run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == ["bad"]
    assert "1 earlier skips/failures kept" in summary.line()


def test_nothing_usable_and_a_kept_failure_gives_exit_code_1(tmp_path):
    class NoRetry(Upper):
        def should_retry(self, row):
            return False
    items = make_items(tmp_path, ["bad"])
    run_stage(NoRetry(), items, tmp_path / "out", progress=False)
    assert run_stage(NoRetry(), items, tmp_path / "out", progress=False).exit_code == 1


def test_final_failures_are_not_retried_when_the_stage_says_so(tmp_path):
    class NoRetry(Upper):
        def should_retry(self, row):
            return "corrupt" not in row["reason"]
    items = make_items(tmp_path, ["bad"])
    run_stage(NoRetry(), items, tmp_path / "out", progress=False)
    stage = NoRetry()
    run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == []


def test_interrupted_run_leaves_no_partial_file_and_resumes(tmp_path):
    items = make_items(tmp_path, ["a", "b", "c", "d"])
    with pytest.raises(KeyboardInterrupt):
        run_stage(Upper(interrupt_on="c"), items, tmp_path / "out", progress=False)
    assert temp_files(tmp_path / "out") == []
    assert not (tmp_path / "out/dogs/c.txt").exists()
    rows = read_manifest(tmp_path / "out")  # written although the run was interrupted
    assert {k: r["status"] for k, r in rows.items()} == {"a": "ok", "b": "ok"}
    stage = Upper()
    summary = run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == ["c", "d"] and summary.already_done == 2
    assert len(read_manifest(tmp_path / "out")) == 4


def test_output_without_manifest_row_is_redone_unless_the_stage_adopts_it(tmp_path):
    items = make_items(tmp_path, ["a", "b"])
    run_stage(Upper(), items, tmp_path / "out", progress=False)
    (tmp_path / "out" / MANIFEST).unlink()  # e.g. the process was killed before writing it
    stage = Upper()
    run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == ["a", "b"]  # redone, so its columns are filled again
    assert read_manifest(tmp_path / "out")["a"]["chars"] == "7"

    class Adopting(Upper):
        adopt_orphans = True
    (tmp_path / "out" / MANIFEST).unlink()
    stage = Adopting()
    summary = run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == [] and summary.already_done == 2
    assert read_manifest(tmp_path / "out")["a"]["status"] == "ok"


def test_stale_temp_files_are_removed(tmp_path):
    stale = tmp_path / "out/dogs/.a.tmp12345.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("half")
    os.utime(stale, (time.time() - 60, time.time() - 60))  # left by a run killed a minute ago
    keep = tmp_path / "out/dogs/.notes.txt"
    keep.write_text("mine")
    run_stage(Upper(), make_items(tmp_path, ["a"]), tmp_path / "out", progress=False)
    assert not stale.exists() and keep.exists()


def test_limit_processes_only_n_new_items_each_run(tmp_path):
    items = make_items(tmp_path, ["a", "b", "c"])
    first = run_stage(Upper(), items, tmp_path / "out", limit=2, progress=False)
    second = run_stage(Upper(), items, tmp_path / "out", limit=2, progress=False)
    assert (first.ok, second.ok, second.already_done) == (2, 1, 2)


class UpperThreads(Upper):
    executor = "thread"


@pytest.mark.parametrize("stage_class", [Upper, UpperThreads])
def test_pools_give_the_same_result(tmp_path, stage_class):
    items = make_items(tmp_path, [f"x{i}" for i in range(6)] + ["bad"])
    summary = run_stage(stage_class(), items, tmp_path / "out", workers=2, progress=False)
    assert (summary.ok, summary.failed) == (6, 1)
    assert (tmp_path / "out/dogs/x5.txt").read_text() == "HELLO X5"


def test_duplicate_ids_are_processed_once(tmp_path):
    items = make_items(tmp_path, ["a"]) + make_items(tmp_path, ["a"], group="cats")
    stage = Upper()
    run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == ["a"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    final = tmp_path / "f.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("new but broken")
        raise RuntimeError("boom")
    assert final.read_text() == "old" and temp_files(tmp_path) == []


def test_list_items_from_manifest_and_from_plain_folders(tmp_path):
    items = make_items(tmp_path, ["a", "bad"])
    run_stage(Upper(), items, tmp_path / "out", progress=False)
    # a user drops their own file into a group folder beside the stage's outputs
    (tmp_path / "out/cats").mkdir()
    (tmp_path / "out/cats/-my cat.txt").write_text("meow")
    listed = list_items(tmp_path / "out", [".txt"])
    assert [(i.id, i.group) for i in listed] == [("-my cat", "cats"), ("a", "dogs")]
    assert listed[1].upstream["chars"] == "7" and listed[1].label == "dog barking"
    plain = list_items(tmp_path / "in", ["txt"])
    assert [(i.id, i.group, i.label) for i in plain] == [("a", "dogs", "dogs"),
                                                         ("bad", "dogs", "dogs")]


def test_list_items_refuses_one_id_in_two_groups(tmp_path):
    for group in ("dogs", "cats"):
        (tmp_path / "in" / group).mkdir(parents=True)
        (tmp_path / "in" / group / "1.wav").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"have the same id '1'; file names must be unique"):
        list_items(tmp_path / "in", [".wav"])


def test_list_items_hints_at_group_folders_and_reads_only_utf8_manifests(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.wav").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"found 1 at the top level: put them in one "
                                          r"sub-folder per group"):
        list_items(tmp_path / "flat", [".wav"])
    (tmp_path / "flat" / MANIFEST).write_bytes(b"id,x\n\xff\xfe,1\n")
    with pytest.raises(ConfigError, match="not a readable manifest"):
        list_items(tmp_path / "flat", [".wav"])


def test_list_items_errors_name_the_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"input folder .*missing does not exist"):
        list_items(tmp_path / "missing", [".wav"])
    (tmp_path / "empty/dogs").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"has no \.wav files"):
        list_items(tmp_path / "empty", [".wav"])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / MANIFEST).write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a manifest"):
        list_items(tmp_path / "junk", [".wav"])


class SlowUpper(Upper):
    """Pool stage whose items take a while, so Ctrl-C lands while some are running."""

    executor = "thread"

    def process(self, item, output):
        import time
        time.sleep(0.3)
        return super().process(item, output)


def test_items_finishing_after_ctrl_c_are_recorded(tmp_path, monkeypatch):
    import animalvae.stage as stage_module
    items = make_items(tmp_path, [f"x{i}" for i in range(6)])
    real_row = stage_module._row
    calls = {"n": 0}

    def interrupt_after_first(*args):  # Ctrl-C arrives while the second item is running
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real_row(*args)
    monkeypatch.setattr(stage_module, "_row", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_stage(SlowUpper(), items, tmp_path / "out", workers=2, progress=False)
    monkeypatch.setattr(stage_module, "_row", real_row)
    rows = read_manifest(tmp_path / "out")
    written = {p.stem for p in (tmp_path / "out/dogs").glob("*.txt")}
    # Items still running at Ctrl-C finish and get their rows; only the row being recorded
    # when Ctrl-C struck is missing (the next run adopts its file as done).
    assert len(written) >= 2 and len(rows) == len(written) - 1
    assert set(rows) < written and all(r["chars"] for r in rows.values())


def test_skips_are_revisited_when_the_stage_says_so(tmp_path):
    class Revisit(Upper):
        def should_retry(self, row):
            return True
    items = make_items(tmp_path, ["quiet"])
    run_stage(Upper(), items, tmp_path / "out", progress=False)
    stage = Revisit()
    run_stage(stage, items, tmp_path / "out", progress=False)
    assert stage.calls == ["quiet"]


def test_a_forced_rerun_that_now_fails_removes_the_stale_output(tmp_path):
    class Breaks(Upper):
        def process(self, item, output):
            raise ItemFailed("corrupt now")
    items = make_items(tmp_path, ["a"])
    run_stage(Upper(), items, tmp_path / "out", progress=False)
    assert (tmp_path / "out/dogs/a.txt").is_file()
    run_stage(Breaks(), items, tmp_path / "out", force=True, progress=False)
    assert not (tmp_path / "out/dogs/a.txt").exists()
    assert read_manifest(tmp_path / "out")["a"]["status"] == "failed"
