#!/usr/bin/env bash
# The test job: set up the environment if needed, lint, and run the whole suite (CPU, offline).
#
# pytest runs on both cores (pytest-xdist: one worker per core, a test file per worker, one torch thread
# each); extra arguments go to pytest (`scripts/test.sh -n 0` runs serially). A worker process that dies
# (an xdist "crashed while running" failure: the process, not a test's assertion) has its tests run once
# more, serially, and the script says so; any other failure fails the job at once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
VENV="${VENV:-.venv}"
export MALLOC_MMAP_THRESHOLD_=131072 HF_HUB_OFFLINE=1
"$VENV"/bin/ruff check anomalib_agpt tests benchmarks
"$VENV"/bin/ruff format --check anomalib_agpt tests benchmarks
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
"$VENV"/bin/python -m pytest -q -rfEs -n 2 --dist loadfile "$@" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && exit 0
crashed="$(grep -oP "crashed while running '\K[^']+" "$log" | sort -u || true)"
failed="$(grep -oP '^(FAILED|ERROR) \K\S+' "$log" | sort -u || true)"
if [ -z "$crashed" ] || [ "$failed" != "$crashed" ]; then
    exit "$status"
fi
echo "warning: an xdist worker died while running: $(echo "$crashed" | tr '\n' ' ')- running those again serially" >&2
# shellcheck disable=SC2086 # one test id per word
exec "$VENV"/bin/python -m pytest -q -rfEs -p no:xdist $crashed
