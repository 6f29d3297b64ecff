#!/usr/bin/env bash
# The main job: set up the environment if needed, then run the offline demo
# (AnomalyGPT trained end to end with a small LLM, AnomalyGPT k-shot and Patchcore on synthetic data).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
VENV="${VENV:-.venv}"
export MALLOC_MMAP_THRESHOLD_=131072 HF_HUB_OFFLINE=1
exec "$VENV"/bin/anomalib-agpt demo "$@"
