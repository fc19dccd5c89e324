#!/usr/bin/env python3
"""Run every bench/bench_*.py and rewrite docs/benchmarks.md from their results.

Each benchmark prints a Markdown section (its figures, the baseline, the ratio and the command
that reproduces it) and writes the same text to bench/results/<name>.md; this script runs them
one after another (never in parallel: they time things) and joins the sections with a header
naming the machine, followed by the hand-written analyses in bench/notes/.

    python bench/run_all.py [NAME ...]   # run these benchmarks (default: all), rewrite the page
    python bench/run_all.py --page       # only rewrite the page from the results and notes
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NOTES = ROOT / "bench" / "notes"


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main(argv: list[str]) -> int:
    if argv == ["--page"]:
        write_page()
        return 0
    names = argv or sorted(p.stem.removeprefix("bench_")
                           for p in (ROOT / "bench").glob("bench_*.py"))
    failed = []
    for name in names:
        print(f"== bench_{name}", flush=True)
        result = RESULTS / f"{name}.md"
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"bench_{name}.py")],
                              cwd=ROOT)
        if proc.returncode:
            failed.append(name)
            # Never publish an older figure under this run's date.
            result.write_text(f"## {name}\n\nThe last run of `bench/bench_{name}.py` failed "
                              f"(exit code {proc.returncode}); no figure.\n")
    write_page()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def write_page() -> None:
    """docs/benchmarks.md: every script's latest result, then the hand-written analyses of
    ``bench/notes/`` (profiles and experiments that read those figures)."""
    sections = [p.read_text().strip() for folder in (RESULTS, NOTES)
                for p in sorted(folder.glob("*.md"))]
    header = ("# Benchmarks\n\nEvery figure here is printed by a script in `bench/`; "
              "`make bench` reruns them all and rewrites this page.\n\n"
              f"Last run {datetime.date.today()} on: {machine()}.\n")
    (ROOT / "docs" / "benchmarks.md").write_text(header + "\n\n".join([""] + sections) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
