"""``results.csv``: one row per finished cell, appended as it finishes, so that a rerun resumes."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "model",
    "category",
    "seed",
    "status",
    "notes",
    "image_AUROC",
    "pixel_AUROC",
    "image_F1Score",
    "pixel_F1Score",
    "pixel_AUPRO",
    "AnswerAccuracy",
    "ExplanationGrounding",
    "ms_per_image",
    "peak_rss_mb",
    "peak_gpu_mb",
    "seconds",
    "finished_at",
)


METRICS = COLUMNS[5:12]


DONE_PREFIXES = ("ok", "skipped")


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of ``results.csv`` (empty when it does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one cell to ``results.csv`` (with the header when new), flushed at once."""
    new = not path.is_file()
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({key: _csv_value(row.get(key)) for key in COLUMNS})


def _csv_value(value: Any) -> str:  # noqa: ANN401
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return str(row["model"]), str(row["category"]), str(row["seed"])


def latest_rows(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], dict[str, str]]:
    """The newest row of every cell (a retried failed cell is recorded again)."""
    return {_key(row): row for row in rows}


CellKey = tuple[str, str, str]
"""A cell as ``results.csv`` names it: ``(model, category, seed)``, all strings."""


def done_cells(path: Path) -> set[CellKey]:
    """The cells whose newest row in ``results.csv`` is done (``ok`` or ``skipped``): a rerun keeps them."""
    return {key for key, row in latest_rows(read_results(path)).items() if row["status"].startswith(DONE_PREFIXES)}


def resume_line(path: Path, cells: Sequence[CellKey]) -> str | None:
    """What a rerun found in ``results.csv`` among ``cells``: how many are done, how many remain (None: fresh run)."""
    rows = latest_rows(read_results(path))
    if not rows:
        return None
    done = sum(1 for key in cells if key in rows and rows[key]["status"].startswith(DONE_PREFIXES))
    failed = sum(1 for key in cells if key in rows and rows[key]["status"].startswith("failed"))
    line = f"Resuming from {path}: {done} of {len(cells)} cells already done, {len(cells) - done} to run"
    return line + (f" ({failed} failed earlier and will be retried)." if failed else ".")
