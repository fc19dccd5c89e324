"""The shared command line: --input/--output/--set mapping, exit codes, missing binaries."""

import argparse
import signal
import time

import pytest

from animalvae import cli, stage
from animalvae.errors import ConfigError
from animalvae.stage import StageOptions


def parse(argv, **kw):
    parser = cli.stage_parser("x.py", "test", input_help="in", output_help="out", **kw)
    return parser, parser.parse_args(argv)


def test_input_and_output_are_relative_to_the_working_directory(write_config, tmp_path,
                                                                 monkeypatch):
    config_path = write_config("paths:\n  clips: c\n")
    monkeypatch.chdir(tmp_path / "..")
    _, args = parse(["--config", str(config_path), "--input", "mine",
                     "--output", str(tmp_path / "out"), "--set", "download.workers=2"])
    config = cli.config_from_args(args, input_key="paths.clips", output_key="paths.audio")
    assert config.paths.clips == tmp_path.parent / "mine"
    assert config.paths.audio == tmp_path / "out"
    assert config.download.workers == 2
    assert config.paths.spectrograms == tmp_path / "data" / "spectrograms"


def test_options_from_args():
    _, args = parse(["--limit", "3", "--workers", "2", "--force", "--quiet"])
    assert cli.options_from_args(args) == StageOptions(force=True, limit=3, workers=2,
                                                       progress=False)


@pytest.mark.parametrize(("flag", "value", "least"),
                         [("--limit", "0", 1), ("--workers", "-1", 0)])
def test_counts_must_be_positive(flag, value, least, capsys):
    with pytest.raises(SystemExit) as info:
        parse([flag, value])
    assert info.value.code == 2
    assert f"{value} must be >= {least}" in capsys.readouterr().err


def test_main_maps_errors_to_exit_codes(capsys):
    parser = argparse.ArgumentParser(prog="x.py")

    def bad_settings(args):
        raise ConfigError(["a.b=1 must be > 1", "c.d: unknown key"])

    def interrupted(args):
        raise KeyboardInterrupt

    assert cli.main(parser, bad_settings, []) == 2
    err = capsys.readouterr().err
    assert "x.py: error: a.b=1 must be > 1\nx.py: error: c.d: unknown key" in err
    assert cli.main(parser, interrupted, []) == 130
    assert "rerun the same command to continue" in capsys.readouterr().err
    assert cli.main(parser, lambda args: 0, []) == 0


@pytest.mark.parametrize("ctrl_c", ["python's", "a stage's own", "ignored"])
def test_sigterm_stops_a_run_as_ctrl_c_does(ctrl_c, capsys):
    # Slurm's scancel, a time limit or preemption sends SIGTERM: the run stops the way Ctrl-C
    # stops it (finished items recorded, folder released), also where Ctrl-C is ignored (a
    # background job)
    parser = argparse.ArgumentParser(prog="x.py")
    called = []

    def on_ctrl_c(signum, frame):     # e.g. stage 1's, which wakes its sleeping threads
        called.append(signum)
        raise KeyboardInterrupt

    def stopped_by_the_scheduler(args):
        signal.raise_signal(signal.SIGTERM)
        time.sleep(30)                # interrupted at once
        return 0

    handler = {"python's": signal.default_int_handler, "a stage's own": on_ctrl_c,
               "ignored": signal.SIG_IGN}[ctrl_c]
    before = {signal.SIGINT: signal.signal(signal.SIGINT, handler),
              signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    try:
        start = time.monotonic()
        assert cli.main(parser, stopped_by_the_scheduler, []) == 130
        assert time.monotonic() - start < 10
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # put back afterwards
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)
    assert "x.py: interrupted; finished items are kept" in capsys.readouterr().err
    assert called == ([signal.SIGINT] if ctrl_c == "a stage's own" else [])


def test_missing_binary_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"ffmpeg and ffprobe not found on PATH: install ffmpeg"):
        stage.require_binaries("ffmpeg", "ffprobe")


def test_default_workers():
    assert stage.default_workers(3) == 3
    assert stage.default_workers(0) >= 1


def test_workers_zero_on_the_command_line_means_one_per_core_as_in_the_config(monkeypatch):
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(7)), raising=False)
    _, args = parse(["--workers", "0"])
    option = cli.options_from_args(args).workers
    assert option == 0
    cores = 7
    assert stage.resolve_workers(option, configured=3) == cores      # 0 beats the config's 3
    assert stage.resolve_workers(None, configured=3) == 3            # no flag: the config
    assert stage.resolve_workers(None, configured=0) == cores
    assert stage.resolve_workers(5, configured=0) == 5


def test_output_that_is_a_file_is_a_settings_error(write_config, tmp_path):
    (tmp_path / "taken").write_text("x")
    _, args = parse(["--config", str(write_config()), "--output", str(tmp_path / "taken")])
    with pytest.raises(ConfigError, match=r"--output=.*taken is a file, not a folder"):
        cli.config_from_args(args, output_key="paths.audio")
    _, args = parse(["--config", str(write_config()), "--output", str(tmp_path / "taken/sub")])
    with pytest.raises(ConfigError, match=r"taken is a file, not a folder"):
        cli.config_from_args(args, output_key="paths.audio")


def test_system_errors_are_one_line_with_exit_1(capsys):
    def disk_full(args):
        raise OSError(28, "No space left on device")
    assert cli.main(argparse.ArgumentParser(prog="x.py"), disk_full, []) == 1
    err = capsys.readouterr().err
    assert "x.py: error: [Errno 28] No space left on device" in err and "Traceback" not in err


def test_output_equal_to_input_is_refused(write_config, tmp_path):
    _, args = parse(["--config", str(write_config()), "--input", str(tmp_path / "x"),
                     "--output", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match=r"paths\.audio and paths\.clips are the same folder"):
        cli.config_from_args(args, input_key="paths.clips", output_key="paths.audio")
