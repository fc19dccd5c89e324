"""Stage 1: CSV parsing and selection, error classification, and downloads from a loopback
HTTP server that stands in for YouTube (the real yt-dlp + ffmpeg code path, offline)."""

from __future__ import annotations

import collections
import http.server
import logging
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
import yt_dlp
from media import make_clip

import download_video
from animalvae import download
from animalvae.config import load_config
from animalvae.errors import ConfigError
from animalvae.stage import StageOptions, read_manifest
from animalvae.vggsound import ANIMAL_LABELS
from animalvae.vggsound_csv import Row, parse_csv, read_csv, select_rows

QUIET = StageOptions(progress=False)


# --------------------------------------------------------------------------------------------
# A loopback "YouTube": serves generated mp4s (with Range requests, as ffmpeg seeks) and can
# answer chosen status codes per path.
# --------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    server: _FakeTube

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        srv = self.server
        path = urlsplit(self.path).path
        with srv.lock:
            srv.hits[path] += 1
            srv.cookies.append(self.headers.get("Cookie"))
            queued = srv.queued.get(path)
            code = queued.pop(0) if queued else srv.always.get(path)
        if code is not None:
            self.send_error(code)
            return
        source = srv.files.get(path, srv.default if re.fullmatch(r"/[\w-]{11}\.mp4", path)
                               else None)
        if source is None:
            self.send_error(404)
            return
        data = source.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if match:
            first = int(match[1])
            last = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            data = data[first:last + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # ffmpeg stops reading early
                pass


class _FakeTube(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, default: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.default = default
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.files: dict[str, Path] = {}            # path -> file served instead of default
        self.queued: dict[str, list[int]] = {}      # path -> status codes answered first
        self.always: dict[str, int] = {}            # path -> status code answered every time
        self.hits: collections.Counter = collections.Counter()
        self.cookies: list[str | None] = []         # the Cookie header of each request

    def url(self, ytid: str) -> str:
        return f"/{ytid}.mp4"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {
        "clip": make_clip(folder / "clip.mp4", seconds=24, size="64x48", fps=5),
        "silent_film": make_clip(folder / "noaudio.mp4", seconds=24, size="64x48", fps=5,
                                 audio=None),
    }


@pytest.fixture(scope="module")
def _tube(media):
    server = _FakeTube(media["clip"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def tube(_tube):
    _tube.reset()
    return _tube


@pytest.fixture
def restore_logging():
    """download_video.main configures the root logger; put it back for the next tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


ROWS = ("-abcdefghij,5,dog barking,train\n"
        '--help_abcd,3,"cat meowing",test\n')


@pytest.fixture
def setup(tmp_path, tube):
    """Write a CSV and a config pointing at the fake server; returns a config loader."""
    def make(csv_text: str = ROWS, **download_settings) -> Path:
        (tmp_path / "vggsound.csv").write_text(csv_text, encoding="utf-8")
        settings = {"url_template": f"http://127.0.0.1:{tube.server_address[1]}/{{ytid}}.mp4",
                    "classes": {"dogs": ["dog barking"], "cats": ["cat meowing"]},
                    "workers": 2, "retries": 2, "backoff_s": 0.01, "socket_timeout_s": 10.0,
                    **download_settings}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "paths": {"vggsound_csv": "vggsound.csv", "clips": "clips"},
            "download": settings}))
        return path
    return make


def duration_s(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "csv=p=0", str(path.resolve())],
                         check=True, capture_output=True, text=True).stdout
    return float(out)


# --------------------------------------------------------------------------------------------
# CSV parsing and selection
# --------------------------------------------------------------------------------------------

QUIRKY_CSV = (
    "ytid,start_seconds,label,split\r\n"            # 1: a header row
    "---g-f_I2yQ,1,people marching,test\r\n"        # 2: leading dashes
    '-0BIyqJj9ZU,30,"bird chirping, tweeting",train\r\n'  # 3: quoted label with a comma
    "\r\n"                                          # 4: blank
    "abcdefghijk,12,dog barking\r\n"                # 5: three columns
    "abcdefghijk,twelve,dog barking,train\r\n"      # 6: start not a number
    "../../etc/p,0,dog barking,train\r\n"           # 7: path-like id
    "short,0,dog barking,train\r\n"                 # 8: id too short
    "--exec=rm_x,0,dog barking,train\r\n"           # 9: option-like id, bad characters
    "abcdefghijk,7,dog barking,val\r\n"             # 10: unknown split
    "abcdefghijk,7.0,dog barking,train\r\n"         # 11: 7.0 is fine
    "abcdefghijk,7,dog barking,train\r\n"           # 12: repeats line 11's clip
    "-----------,0,dog barking,TEST\r\n"            # 13: all dashes is a valid id
)


def test_csv_quirks_are_parsed_or_reported_with_line_numbers():
    parsed = parse_csv(QUIRKY_CSV)
    assert parsed.header
    assert [(r.id, r.label, r.split, r.line) for r in parsed.rows] == [
        ("---g-f_I2yQ_000001", "people marching", "test", 2),
        ("-0BIyqJj9ZU_000030", "bird chirping, tweeting", "train", 3),
        ("abcdefghijk_000007", "dog barking", "train", 11),
        ("-----------_000000", "dog barking", "test", 13),
    ]
    assert parsed.duplicates == 1
    bad = {m.line: m.reason for m in parsed.malformed}
    assert sorted(bad) == [5, 6, 7, 8, 9, 10]
    assert "expected 4 columns" in bad[5] and "got 3" in bad[5]
    assert "whole number" in bad[6]
    assert all("11 characters" in bad[n] for n in (7, 8, 9))
    assert "train or test" in bad[10]
    assert str(parsed.malformed[2]) == ("line 7: id is not 11 characters of A-Z a-z 0-9 _ -: "
                                        "'../../etc/p,0,dog barking,train'")


def test_an_unclosed_quote_or_a_huge_line_is_reported_where_it_starts():
    parsed = parse_csv("abcdefghijk,1,dog barking,train\n"
                       'abcdefghij2,1,"dog barking,train\n'
                       "abcdefghij3,1,dog barking,train\n")
    assert [r.line for r in parsed.rows] == [1]
    assert [m.line for m in parsed.malformed] == [2]
    parsed = parse_csv("x" * 200_000 + "\nabcdefghij3,1,dog barking,train\n")
    assert [r.line for r in parsed.rows] == [2]
    assert parsed.malformed[0].line == 1 and "not CSV" in parsed.malformed[0].reason


def test_lf_file_without_header_and_a_bom(tmp_path):
    path = tmp_path / "v.csv"
    path.write_bytes(b"\xef\xbb\xbf-abcdefghij,5,dog barking,train\nabcdefghijk,1,cat meowing,"
                     b"test\n")
    parsed = read_csv(path)
    assert not parsed.header and not parsed.malformed
    assert [r.id for r in parsed.rows] == ["-abcdefghij_000005", "abcdefghijk_000001"]


def test_missing_csv_says_where_to_get_it(tmp_path):
    with pytest.raises(ConfigError, match=r"not found: download vggsound\.csv from .*VGGSound"
                                          r".*data/vggsound\.csv"):
        read_csv(tmp_path / "nope.csv")


def test_a_folder_given_as_the_csv_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"vggsound_csv=.* is a folder: give the CSV file"):
        read_csv(tmp_path)


def _rows(n_per_label: int) -> list[Row]:
    labels = ["dog barking", "dog howling", "cat meowing", "people marching"]
    return [Row(f"{label[:3]}{i:08d}", i, label, ("train", "test")[i % 2])
            for label in labels for i in range(n_per_label)]


def test_selection_by_group_split_cap_and_seed():
    rows = _rows(10)
    classes = {"dogs": ["dog barking", "dog howling"], "cats": ["cat meowing"]}
    chosen = select_rows(rows, classes, splits=["train"], max_per_class=3, seed=1)
    assert collections.Counter((g, r.label) for g, r in chosen) == {
        ("dogs", "dog barking"): 3, ("dogs", "dog howling"): 3, ("cats", "cat meowing"): 3}
    assert all(r.split == "train" for _, r in chosen)
    # Same seed, any input order -> same selection and order; another seed -> another order.
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    assert select_rows(shuffled, classes, splits=["train"], max_per_class=3, seed=1) == chosen
    everything = select_rows(rows, classes, seed=1)
    assert len(everything) == 30
    assert [r.id for _, r in everything] != sorted(r.id for _, r in everything)
    assert everything != select_rows(rows, classes, seed=2)


def test_animals_shorthand_selects_every_animal_label():
    rows = [Row(f"a{i:010d}", 0, label, "train") for i, label in enumerate(ANIMAL_LABELS)]
    rows.append(Row("b0000000000", 0, "people marching", "train"))
    chosen = select_rows(rows, {"animals": ["@animals"]})
    assert len(chosen) == 74 and {g for g, _ in chosen} == {"animals"}


def test_config_rejects_a_label_in_two_groups(write_config):
    with pytest.raises(ConfigError, match=r"groups all and dogs share 1 label\(s\) "
                                          r"\(e\.g\. 'dog barking'\)"):
        load_config(write_config("download:\n  classes:\n    all: ['@animals']\n"
                                 "    dogs: [dog barking]\n"))


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("message, kind, what", [
    ("ERROR: [generic] x: Unable to download webpage: HTTP Error 429: Too Many Requests "
     "(caused by <HTTPError 429: Too Many Requests>)", "transient", "HTTP 429 rate-limited"),
    ("ERROR: [generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable",
     "transient", "server error (HTTP 5xx)"),
    ("ERROR: [youtube] abc: Unable to download API page: The read operation timed out",
     "transient", "timeout"),
    ("ERROR: [youtube] abc: Unable to download webpage: [Errno 104] Connection reset by peer",
     "transient", "connection error"),
    ("ERROR: [generic] x: Unable to download webpage: ('Connection aborted.', "
     "RemoteDisconnected('Remote end closed connection without response'))", "transient",
     "connection error"),
    ("ERROR: [youtube] abc: Video unavailable", "permanent", "video unavailable"),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video",
     "permanent", "private video"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader",
     "permanent", "video removed"),
    ("ERROR: [youtube] abc: Sign in to confirm you’re not a bot. Use --cookies-from-browser or "
     "--cookies for the authentication.", "permanent",
     "bot check (set download.cookies_file, then rerun with --retry-failed)"),
    ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for "
     "some users.", "permanent", "sign-in required (age check)"),
    ("ERROR: [generic] x: Unable to download webpage: HTTP Error 404: Not Found", "permanent",
     "not found (HTTP 404/410)"),
    ("ERROR: [youtube] abc: Requested format is not available", "permanent",
     "no suitable mp4/audio format"),
    ("ERROR: ffmpeg exited with code 1", "error", "error"),
])
def test_classify_error(message, kind, what):
    failure = download.classify_error(message)
    assert (failure.kind, failure.what) == (kind, what)
    assert "ERROR:" not in failure.detail and "caused by" not in failure.detail
    assert "(" not in failure.detail  # the reason's own parentheses stay unnested


def test_reasons_mark_permanent_failures_and_count_tries():
    gone = download.classify_error("ERROR: [youtube] abc: Video unavailable")
    assert gone.reason() == "permanent: video unavailable ([youtube] abc: Video unavailable)"
    busy = download.classify_error("HTTP Error 429: Too Many Requests")
    assert busy.reason(3).startswith("transient: HTTP 429 rate-limited after 3 tries")
    assert busy.rate_limited and not gone.rate_limited


def test_backoff_doubles_with_jitter():
    rng = random.Random(0)
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0)]:
        delays = [download.backoff_delay(attempt, 2.0, rng) for _ in range(50)]
        assert base * 0.5 <= min(delays) and max(delays) < base * 1.5
        assert len(set(delays)) > 1


def test_ydl_options():
    settings = load_config(None, ["download.max_height=240"]).download
    opts = download.ydl_options(settings, start_s=30, outtmpl="/x/clip.%(ext)s", logger=None,
                                cookiefile=Path("/c.txt"))
    assert opts["download_ranges"].ranges == [(30, 40.0)] and opts["force_keyframes_at_cuts"]
    assert "height<=?240" in opts["format"] and opts["format_sort"][0] == "res:240"
    assert opts["merge_output_format"] == "mp4" and opts["cookiefile"] == "/c.txt"
    assert opts["retries"] == opts["extractor_retries"] == 0
    assert opts["socket_timeout"] == 30.0 and opts["noprogress"]


# --------------------------------------------------------------------------------------------
# Downloads from the loopback server
# --------------------------------------------------------------------------------------------

def test_downloads_exact_sections_and_resume_skips_them(setup, tube, tmp_path):
    config = load_config(setup())
    assert download.run(config, QUIET) == 0
    clips = tmp_path / "clips"
    dog, cat = clips / "dogs/-abcdefghij_000005.mp4", clips / "cats/--help_abcd_000003.mp4"
    for clip in (dog, cat):
        assert abs(duration_s(clip) - 10.0) <= 0.1
    rows = read_manifest(clips)
    assert rows["-abcdefghij_000005"] | {"bytes": "", "duration": ""} == {
        "id": "-abcdefghij_000005", "label": "dog barking", "group": "dogs",
        "source": f"http://127.0.0.1:{tube.server_address[1]}/-abcdefghij.mp4",
        "output": "dogs/-abcdefghij_000005.mp4", "status": "ok", "reason": "",
        "ytid": "-abcdefghij", "start": "5", "split": "train", "bytes": "", "duration": ""}
    assert int(rows["--help_abcd_000003"]["bytes"]) == cat.stat().st_size
    assert abs(float(rows["--help_abcd_000003"]["duration"]) - 10.0) <= 0.1
    assert (clips / "settings.yaml").is_file()
    assert sorted(p.name for p in clips.rglob("*") if p.name.startswith(".")) == []
    before = sum(tube.hits.values())
    assert download.run(config, QUIET) == 0
    assert sum(tube.hits.values()) == before  # resume: nothing fetched again


def test_404_is_permanent_and_only_retried_with_retry_failed(setup, tube, tmp_path):
    tube.always["/-abcdefghij.mp4"] = 404
    config = load_config(setup())
    assert download.run(config, QUIET) == 0  # the other clip is fine
    row = read_manifest(tmp_path / "clips")["-abcdefghij_000005"]
    assert row["status"] == "failed" and row["reason"].startswith("permanent: not found")
    assert (row["ytid"], row["start"], row["split"]) == ("-abcdefghij", "5", "train")
    assert tube.hits["/-abcdefghij.mp4"] == 1  # not retried within the run
    download.run(config, QUIET)
    assert tube.hits["/-abcdefghij.mp4"] == 1  # nor by the next run
    download.run(config, QUIET, retry_failed=True)
    assert tube.hits["/-abcdefghij.mp4"] == 2


@pytest.mark.parametrize("code", [429, 500])
def test_transient_error_then_success(setup, tube, tmp_path, code):
    tube.queued["/-abcdefghij.mp4"] = [code, code]
    config = load_config(setup(retries=2))
    assert download.run(config, QUIET) == 0
    assert read_manifest(tmp_path / "clips")["-abcdefghij_000005"]["status"] == "ok"
    assert tube.queued["/-abcdefghij.mp4"] == []


def test_transient_errors_exhaust_retries_and_the_next_run_tries_again(setup, tube, tmp_path):
    tube.always["/-abcdefghij.mp4"] = 503
    config = load_config(setup(retries=1))
    download.run(config, QUIET)
    row = read_manifest(tmp_path / "clips")["-abcdefghij_000005"]
    assert row["reason"].startswith("transient: server error (HTTP 5xx) after 2 tries")
    assert tube.hits["/-abcdefghij.mp4"] == 2
    download.run(config, QUIET)
    assert tube.hits["/-abcdefghij.mp4"] == 4


def test_video_without_audio_is_a_permanent_failure(setup, tube, tmp_path, media):
    tube.files["/-abcdefghij.mp4"] = media["silent_film"]
    download.run(load_config(setup()), QUIET)
    row = read_manifest(tmp_path / "clips")["-abcdefghij_000005"]
    assert (row["status"], row["reason"]) == ("failed", "permanent: no audio track")
    assert not (tmp_path / "clips/dogs/-abcdefghij_000005.mp4").exists()


def test_many_rate_limits_in_a_row_stop_the_run(setup, tube, tmp_path, caplog):
    ids = [f"ratelimit{i:02d}" for i in range(6)]
    for ytid in ids:
        tube.always[tube.url(ytid)] = 429
    config = load_config(setup("".join(f"{y},0,dog barking,train\n" for y in ids),
                               retries=0, workers=1, max_consecutive_rate_limits=3))
    with caplog.at_level(logging.ERROR, logger="animalvae.download"):
        assert download.run(config, QUIET) == 1
    assert sum(tube.hits.values()) == 3
    assert "stopped early: 3 requests in a row" in caplog.text and "cookies_file" in caplog.text
    rows = read_manifest(tmp_path / "clips")
    assert len(rows) == 3 and all(r["reason"].startswith("transient: HTTP 429")
                                  for r in rows.values())


def test_from_dir_links_local_clips_and_reports_the_rest(setup, tube, tmp_path, media, caplog):
    local = tmp_path / "mine" / "deep" / "er"
    local.mkdir(parents=True)
    mine = local / "-abcdefghij_000005.mp4"
    mine.write_bytes(media["clip"].read_bytes())
    config = load_config(setup())
    with caplog.at_level(logging.WARNING, logger="animalvae.download"):
        assert download.run(config, QUIET, from_dir=tmp_path / "mine") == 0
    out = tmp_path / "clips/dogs/-abcdefghij_000005.mp4"
    assert out.stat().st_ino == mine.stat().st_ino  # a hard link, not a copy
    assert "1 of 2 selected clips are not under" in caplog.text
    assert "--help_abcd_000003" in caplog.text
    rows = read_manifest(tmp_path / "clips")
    assert list(rows) == ["-abcdefghij_000005"] and rows["-abcdefghij_000005"]["source"] == \
        str(mine)
    assert sum(tube.hits.values()) == 0


def test_hostile_ids_never_reach_a_file_or_the_network(setup, tube, tmp_path):
    csv_text = ROWS + "../../../x,0,dog barking,train\n-o_exploit/,0,dog barking,train\n"
    download.run(load_config(setup(csv_text)), QUIET)
    assert set(read_manifest(tmp_path / "clips")) == {"-abcdefghij_000005",
                                                      "--help_abcd_000003"}
    assert set(tube.hits) == {"/-abcdefghij.mp4", "/--help_abcd.mp4"}
    assert not list(tmp_path.rglob("x*")) and not (tmp_path / "clips" / "-o_exploit").exists()


def test_cookies_are_sent_and_the_users_file_is_left_alone(setup, tube, tmp_path):
    cookies = tmp_path / "cookies.txt"
    text = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSID\tsecret1\n"
    cookies.write_text(text)
    config = load_config(setup(cookies_file=str(cookies), workers=1))
    assert download.run(config, QUIET) == 0
    assert "SID=secret1" in tube.cookies
    assert cookies.read_text() == text  # yt-dlp rewrote a private copy, not this file
    assert not list((tmp_path / "clips").rglob("cookies.txt"))
    cookies.unlink()
    with pytest.raises(ConfigError, match=r"download\.cookies_file=.* not found"):
        download.run(config, QUIET)


def test_pause_between_requests(setup, tube, monkeypatch):
    waits = []
    monkeypatch.setattr(download.DownloadStage, "_wait", lambda self, seconds: waits.append(
        seconds))
    assert download.run(load_config(setup(pause_s=0.3, workers=1)), QUIET) == 0
    assert waits == [0.3, 0.3]  # two clips, one pause before each


@pytest.mark.parametrize("error, reason", [
    (KeyError("formats"), "error: KeyError: 'formats'"),
    (yt_dlp.utils.YoutubeDLError("ERROR: [youtube] x: Video unavailable"),
     "permanent: video unavailable ([youtube] x: Video unavailable)"),
])
def test_an_exception_out_of_yt_dlp_fails_that_clip_only(setup, tube, tmp_path, monkeypatch,
                                                         error, reason):
    real_download = yt_dlp.YoutubeDL.download
    calls = collections.Counter()

    def download_or_raise(ydl, urls):
        calls[urls[0]] += 1
        if "-abcdefghij" in urls[0]:
            raise error
        return real_download(ydl, urls)

    monkeypatch.setattr(yt_dlp.YoutubeDL, "download", download_or_raise)
    assert download.run(load_config(setup(retries=2)), QUIET) == 0
    rows = read_manifest(tmp_path / "clips")
    assert (rows["-abcdefghij_000005"]["status"], rows["-abcdefghij_000005"]["reason"]) == (
        "failed", reason)
    assert rows["--help_abcd_000003"]["status"] == "ok"
    assert list(calls.values()) == [1, 1]  # neither kind is retried within the run


def test_retry_rules_for_earlier_failures_and_skips():
    settings = load_config(None).download
    gone = {"status": "failed", "reason": "permanent: video unavailable"}
    busy = {"status": "failed", "reason": "transient: timeout"}
    skipped = {"status": "skipped", "reason": "permanent: something"}
    downloads = download.DownloadStage(settings, {})
    assert [downloads.should_retry(r) for r in (gone, busy, skipped)] == [False, True, False]
    downloads = download.DownloadStage(settings, {}, retry_failed=True)
    assert [downloads.should_retry(r) for r in (gone, busy, skipped)] == [True, True, False]
    local = download.LocalCopyStage({})  # a local copy may exist for a video gone online
    assert [local.should_retry(r) for r in (gone, busy, skipped)] == [True, True, False]


def test_interrupt_wakes_a_thread_sleeping_in_a_backoff():
    stage = download.DownloadStage(load_config(None).download, {})
    raised = []

    def sleep_in_backoff():
        try:
            stage._wait(60.0)
        except KeyboardInterrupt as exc:
            raised.append(type(exc))

    sleeper = threading.Thread(target=sleep_in_backoff, daemon=True)
    sleeper.start()
    stage.interrupt()
    sleeper.join(timeout=20)  # only so that a broken interrupt cannot hang the suite
    assert not sleeper.is_alive() and raised == [KeyboardInterrupt]


def test_ctrl_c_during_backoffs_stops_the_run_and_records_no_failure(setup, tube, tmp_path):
    for ytid in ("-abcdefghij", "--help_abcd"):
        tube.always[tube.url(ytid)] = 503
    # Both threads fail once, then sleep 15-45 s before their second try: Ctrl-C must wake them.
    config = load_config(setup(retries=1, backoff_s=30.0, workers=2))

    def press_ctrl_c_when_both_failed_once():
        deadline = time.monotonic() + 60
        while sum(tube.hits.values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_when_both_failed_once, daemon=True)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        download.run(config, QUIET)
    presser.join()
    # Without the wake-up both clips would be recorded as failed after their second try.
    assert read_manifest(tmp_path / "clips") == {}
    assert sum(tube.hits.values()) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nothing_selected_is_a_config_error(setup):
    config = load_config(setup("abcdefghijk,1,people marching,train\n"))
    with pytest.raises(ConfigError, match="no row matches download.classes"):
        download.run(config, QUIET)


# --------------------------------------------------------------------------------------------
# The root script
# --------------------------------------------------------------------------------------------

def test_dry_run_prints_counts_and_malformed_rows(setup, tube, tmp_path, capsys,
                                                  restore_logging):
    csv_text = ROWS + ("abcdefghijk,7,dog barking,test\n"
                       "abcdefghij2,1,dog barking,train\n"
                       "bad,1,dog barking,train\n")
    code = download_video.main(["--config", str(setup(csv_text)), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "selected: 4 clips" in out
    table = [line.split() for line in out.splitlines()]
    assert ["dogs", "dog", "barking", "2", "1", "3"] in table
    assert ["cats", "cat", "meowing", "0", "1", "1"] in table
    assert ["total", "2", "2", "4"] in table
    assert "line 5: id is not 11 characters" in out
    assert sum(tube.hits.values()) == 0 and not (tmp_path / "clips").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "abcdefghijk_000007.mp4").write_bytes(b"")
    download_video.main(["--config", str(setup(csv_text)), "--dry-run",
                         "--from-dir", str(tmp_path / "mine")])
    assert "mine: 1 of 4 selected clips found" in capsys.readouterr().out


def test_dry_run_of_a_csv_with_nothing_selected_prints_the_report_and_exits_2(
        setup, capsys, restore_logging):
    code = download_video.main(["--config", str(setup("bad,1,dog barking,train\n")),
                                "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2
    assert "selected: 0 clips" in captured.out and "line 1: id is not 11" in captured.out
    assert "no row matches download.classes" in captured.err
    assert "see --dry-run" not in captured.err


def test_missing_csv_exits_2_with_a_pointer_to_the_file(setup, tmp_path, capsys,
                                                        restore_logging):
    config = setup()
    (tmp_path / "vggsound.csv").unlink()
    assert download_video.main(["--config", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert "download_video.py: error: paths.vggsound_csv=" in err
    assert "github.com/hche11/VGGSound (file data/vggsound.csv)" in err
