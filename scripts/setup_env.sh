#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment: .venv with Python 3.11, the pinned
# dependencies and this package in editable mode. Re-runs are instant when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.anomalib_agpt_installed"
wanted="$(cat requirements/pinned.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first: anomalib declares no torch, and the pins keep pip from fetching another build.
    "$VENV/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
    "$VENV/bin/python" -m pip install --quiet -r requirements/pinned.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
    echo "$wanted" > "$stamp"
fi
