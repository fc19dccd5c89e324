"""The repository stands on its own: no file in it refers to a path outside it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ".." + "/shared"   # the development folder beside the checkout


def test_no_tracked_file_names_a_path_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    offenders = [name for name in files if name and (ROOT / name).is_file()
                 and OUTSIDE in (ROOT / name).read_text(encoding="utf-8", errors="ignore")]
    assert offenders == []
