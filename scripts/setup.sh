#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine or a workstation: system libraries for a
# headless napari (Xvfb + Mesa; only when run as root and missing), a virtual environment in
# .venv, PyTorch, and napari-segtune with its napari and test extras.
#
#   bash scripts/setup.sh              # editable install, for working on the code
#   SEGTUNE_EDITABLE=0 bash scripts/setup.sh   # a regular install, as a user gets it (CI uses this)
#   TORCH_SPEC="torch" bash scripts/setup.sh   # the newest torch instead of 2.13.0
#   TORCH_INDEX_URL=<index> bash scripts/setup.sh   # torch from that wheel index only
#
# Which torch build arrives depends on where pip finds it. From PyPI alone, on Linux x86-64,
# it is the build for CUDA (NVIDIA GPUs; several GB with its CUDA libraries; it runs on a CPU
# too). The CPU-only build comes from PyTorch's own CPU wheel index: set TORCH_INDEX_URL to the
# --index-url that pytorch.org's "Get started" page gives for pip / Linux / CPU. A machine
# whose pip finds a CPU wheel locally (a --find-links folder) gets that one. The script says at
# the end which build it installed.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(xvfb libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
  libxcb-cursor0 libdbus-1-3 libfontconfig1)
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, on its own, so that the build chosen here (TORCH_INDEX_URL) is the one segtune gets
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  python -m pip install -q --index-url "$TORCH_INDEX_URL" "${TORCH_SPEC:-torch==2.13.0}"
else
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
if [ "${SEGTUNE_EDITABLE:-1}" = 1 ]; then
  python -m pip install -q -e ".[test]"
else
  python -m pip install -q ".[test]"
fi
# bioimageio.core (runs bioimage.io's test of exported models) pins an older bioimageio.spec than
# segtune needs: installed without that pin; its other requirements come with the test extra
python -m pip install -q --no-deps "bioimageio.core==0.11.0"
echo "installed $(python scripts/torch_build.py)"
echo "set up: run 'source .venv/bin/activate', then 'segtune demo' or 'python -m pytest'"
