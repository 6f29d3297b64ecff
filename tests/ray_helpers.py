"""Test-only cell functions for ``--executor ray``: ``run_cell`` with faults injected, chosen by a file in the output.

The tests point ``ray_executor.CELL`` at :func:`faulty_cell` (Ray workers import it by that path) and write
``OUTPUT/faults.json``, mapping model names to a fault:

- ``kill_once``: the worker SIGKILLs itself on the cell's first attempt, then the cell runs normally;
- ``kill_always``: the worker SIGKILLs itself on every attempt;
- ``raise``: the task raises (an error outside ``run_cell``'s own handling);
- ``hang``: the task sleeps (until cancelled).

Every attempt of a cell appends a line to ``OUTPUT/attempts/<model>_<category>_seed<seed>``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.leaderboard.cells import run_cell
from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig

FAULTS = "faults.json"


def attempts_file(output: Path, name: str, category: str, seed: int | str) -> Path:
    """Where the attempts of one cell are counted (one line each)."""
    return output / "attempts" / f"{name}_{category}_seed{seed}"


def faulty_cell(name: str, config: LeaderboardConfig, data_root: Path | None, category: str, seed: int) -> dict:
    """``run_cell``, after the fault ``OUTPUT/faults.json`` names for this model (if any)."""
    faults_path = Path(config.output) / FAULTS
    faults: dict[str, Any] = json.loads(faults_path.read_text()) if faults_path.is_file() else {}
    attempts = attempts_file(Path(config.output), name, category, seed)
    attempts.parent.mkdir(parents=True, exist_ok=True)
    first = not attempts.exists()
    with attempts.open("a") as file:
        file.write(f"{os.getpid()}\n")
    fault = faults.get(name)
    if fault == "kill_always" or (fault == "kill_once" and first):
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "raise":
        msg = f"injected failure of {name}"
        raise RuntimeError(msg)
    if fault == "hang":
        time.sleep(600)
    return run_cell(name, config, data_root, category, seed)
