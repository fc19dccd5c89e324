#!/usr/bin/env bash
# Idempotent set-up for `make test`, `make demo` and friends; fast when already done.
#  1. a virtual environment keyed by a hash of the requirements (reused across clones),
#     linked as ./.venv;
#  2. `pip install -r` every time, so a missing requirement is always caught;
#  3. ffmpeg + ffprobe: installed with apt-get when running as root, else a one-line how-to;
#  4. chromium + chromedriver (the gallery's browser test), the same way;
#  5. slurm-wlm + munge (the tests that run the pipeline under a local Slurm), the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: $PYTHON is not Python >= 3.11 (the pinned numpy/matplotlib/yt-dlp need it); set PYTHON=python3.11" >&2
  exit 1
fi
VENV_ROOT=${VENV_ROOT:-$HOME/.cache/animalvae}
hash=$("$PYTHON" -c 'import hashlib; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in ("requirements.txt", "requirements-dev.txt"))).hexdigest()[:12])')
venv="$VENV_ROOT/venv-$hash"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  mkdir -p "$VENV_ROOT"
  "$PYTHON" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r requirements.txt -r requirements-dev.txt 2> >(grep -v "is ignored: it is neither" >&2)
ln -sfn "$venv" .venv

apt_install() {  # apt_install PACKAGE...: as root, retrying while another install holds apt
  local try
  for try in 1 2 3 4 5 6; do
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o DPkg::Lock::Timeout=120 "$@" >/dev/null; then
      return 0
    fi
    echo "setup: apt-get failed (try $try of 6; another install may hold its lock), again in 20 s" >&2
    sleep 20
  done
  return 1
}

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ffmpeg with apt-get"
    apt_install ffmpeg
  else
    echo "setup: ffmpeg/ffprobe not found; install ffmpeg (Debian/Ubuntu: sudo apt-get install ffmpeg, macOS: brew install ffmpeg) and rerun" >&2
    exit 1
  fi
fi
# A real browser for the gallery test (tests/test_sound_image.py): Debian's chromium and its
# driver, as root only (like ffmpeg); without them that one test is skipped.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver with apt-get (the gallery's browser test)"
    apt_install chromium chromium-driver
  else
    echo "setup: chromium/chromedriver not found; the gallery's browser test will be skipped" \
         "(Debian/Ubuntu: sudo apt-get install chromium chromium-driver)" >&2
  fi
fi
# A real Slurm for tests/test_slurm.py (a one-node cluster the tests start and stop in a
# temporary folder; nothing of the system's own configuration is used): Debian's slurm-wlm and
# munge, as root only; without them those tests are skipped.
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
    || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing slurm-wlm and munge with apt-get (the tests under a local Slurm)"
    apt_install slurm-wlm munge
  else
    echo "setup: slurm-wlm/munge not found; the tests under a local Slurm will be skipped" \
         "(Debian/Ubuntu, as root: apt-get install slurm-wlm munge)" >&2
  fi
fi
echo "setup: ok ($venv, $(ffmpeg -version | head -n1 | cut -d' ' -f1-3))"
