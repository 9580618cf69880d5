#!/usr/bin/env bash
# Install chromflow from nothing on a Debian/Ubuntu machine with Python >= 3.10:
# system libraries for headless Qt/OpenGL (napari), a virtual environment in .venv,
# a CPU build of torch (small; skip with CHROMFLOW_TORCH=skip if you bring your own CUDA torch),
# and chromflow itself (editable). Usage: bash scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="napari"
[ "${1:-}" = "--test" ] && extras="napari,test"

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # Xvfb + Mesa + the xcb libraries Qt 6 needs to open a (virtual) window
    $SUDO apt-get install -y -qq --no-install-recommends \
        python3-venv xvfb xauth libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libglib2.0-0 libfontconfig1 \
        libdbus-1-3 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
        libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libxcb-shape0 libxcb-randr0 >/dev/null
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${CHROMFLOW_TORCH:-cpu}" = "cpu" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # a plain `pip install torch` pulls a multi-GB CUDA build; the CPU wheel is enough for chromflow on a laptop
    .venv/bin/python -m pip install -q torch==2.13.0 2>/dev/null \
        || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
echo "chromflow installed in $(pwd)/.venv"
