"""The leaderboard's report: means over seeds and categories, ``leaderboard.md`` and ``.png``, the terminal table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig
from anomalib_agpt.apps.leaderboard.results import latest_rows
from anomalib_agpt.apps.options import CHECKPOINT_ENV, IMAGEBIND_ENV


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in {None, ""} else None
    except ValueError:
        return None
    return None if number is None or math.isnan(number) else number


def _mean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


TABLE = (
    ("image AUROC", "image_AUROC"),
    ("pixel AUROC", "pixel_AUROC"),
    ("image F1", "image_F1Score"),
    ("pixel F1", "pixel_F1Score"),
    ("AUPRO", "pixel_AUPRO"),
    ("answer acc.", "AnswerAccuracy"),
    ("grounding", "ExplanationGrounding"),
    ("ms / image", "ms_per_image"),
    ("peak RSS +MB", "peak_rss_mb"),
)


def summarise(rows: list[dict[str, str]], config: LeaderboardConfig) -> list[dict[str, Any]]:
    """Per (model, category) means over seeds, then a ``mean`` row per model over its categories."""
    cells = latest_rows(rows)
    summary: list[dict[str, Any]] = []
    for model in config.models:
        per_category = []
        for category in config.categories:
            own = [cells[key] for seed in config.seeds if (key := (model, category, str(seed))) in cells]
            if not own:
                continue
            ok = [row for row in own if row["status"] == "ok"]
            statuses = sorted({row["status"] for row in own if row["status"] != "ok"})
            entry: dict[str, Any] = {
                "model": model,
                "category": category,
                "notes": next((row["notes"] for row in own if row.get("notes")), ""),
                "status": f"ok ({len(ok)}/{len(own)} seeds)" if ok else "; ".join(statuses),
                "n_ok": len(ok),
            }
            entry.update({column: _mean([_float(row.get(column)) for row in ok]) for _, column in TABLE})
            per_category.append(entry)
        summary.extend(per_category)
        ok_categories = [entry for entry in per_category if entry["n_ok"]]
        if ok_categories:
            mean = {"model": model, "category": "**mean**", "notes": ok_categories[0]["notes"], "n_ok": 1}
            mean["status"] = f"ok ({len(ok_categories)}/{len(per_category)} categories)"
            mean.update({column: _mean([entry[column] for entry in ok_categories]) for _, column in TABLE})
            summary.append(mean)
    return summary


def _fmt(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if column in {"ms_per_image", "peak_rss_mb"} else f"{value:.3f}"


def write_markdown(summary: list[dict[str, Any]], config: LeaderboardConfig) -> str:
    """``leaderboard.md``: the per-category table and the per-model means, ranked by mean image AUROC."""
    header = ["model", "category", *(title for title, _ in TABLE), "status", "notes"]
    lines = [f"# Leaderboard ({config.dataset}, seeds {', '.join(map(str, config.seeds))})", ""]

    def table(entries: list[dict[str, Any]]) -> list[str]:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for entry in entries:
            values = [_fmt(entry[column], column) for _, column in TABLE]
            out.append("| " + " | ".join([entry["model"], entry["category"], *values, entry["status"], entry["notes"]]))
            out[-1] += " |"
        return out

    means = sorted(
        (entry for entry in summary if entry["category"] == "**mean**"),
        key=lambda entry: -(entry["image_AUROC"] if entry["image_AUROC"] is not None else -1.0),
    )
    lines += ["## Mean over categories (ranked by image AUROC)", "", *table(means), ""]
    lines += ["## Per category (mean over seeds)", "", *table(summary), ""]
    if config.random_anomalygpt:
        lines.append(
            "AnomalyGPT rows marked *random weights* use the `random-small` preset (no weights configured): they "
            f"say nothing about the released model. Set {IMAGEBIND_ENV} and {CHECKPOINT_ENV}.",
        )
    if any("random backbone" in entry["notes"] for entry in summary):
        lines.append("Rows marked *random backbone* ran with `pre_trained=False` (offline).")
    text = "\n".join(lines) + "\n"
    (config.output / "leaderboard.md").write_text(text)
    return text


def write_chart(summary: list[dict[str, Any]], path: Path) -> None:
    """``leaderboard.png``: mean image and pixel AUROC per model as grouped bars (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [entry for entry in summary if entry["category"] == "**mean**"]
    labels = [entry["model"] + (" *" if "random" in entry["notes"] else "") for entry in means]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(means) + 2), 4.5))
    width = 0.4
    for offset, (title, column) in zip((-width / 2, width / 2), TABLE[:2], strict=True):
        heights = [entry[column] if entry[column] is not None else 0.0 for entry in means]
        axes.bar([i + offset for i in range(len(means))], heights, width, label=title)
    axes.set_xticks(range(len(means)), labels, rotation=30, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("AUROC (mean over categories)")
    axes.set_title("anomalib-agpt leaderboard (* random weights/backbone)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_summary(summary: list[dict[str, Any]], title: str) -> None:
    """The ranked means (and, with several categories, each category) as a rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    means = [entry for entry in summary if entry["category"] == "**mean**"]
    several = len(means) < len([entry for entry in summary if entry["category"] != "**mean**"])
    shown = [entry for entry in summary if several or entry["category"] != "**mean**"]
    table = Table(title=title)
    for column in ("model", "category", *(name for name, _ in TABLE), "notes"):
        table.add_column(column, justify="left" if column in {"model", "category", "notes"} else "right")
    for entry in shown:
        mean = entry["category"] == "**mean**"
        values = [_fmt(entry[column], column) for _, column in TABLE]
        notes = entry["notes"] if entry["n_ok"] else entry["status"]
        category = "mean" if mean else entry["category"]
        table.add_row(entry["model"], category, *values, notes, style="bold" if mean else None)
    Console(width=200).print(table)


def output_lines(output: Path, extra: Sequence[tuple[str, Path]] = ()) -> list[str]:
    """The closing lines of a run: where its results, table, chart, runs (and ``extra``) are."""
    folder = output.resolve()
    entries = [
        ("Results (one row per cell)", folder / "results.csv"),
        ("Leaderboard table", folder / "leaderboard.md"),
        ("Chart", folder / "leaderboard.png"),
        ("Runs (checkpoints, images)", folder / "runs"),
    ]
    if (folder / "errors").is_dir():
        entries.append(("Tracebacks of failed cells", folder / "errors"))
    entries += [(label, path.resolve()) for label, path in extra]
    width = max(len(label) for label, _ in entries) + 1
    return [f"Outputs in {folder}:"] + [f"  {label + ':':<{width}} {path}" for label, path in entries]
