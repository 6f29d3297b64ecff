"""Run a leaderboard: every cell not yet done (here, or as Ray tasks with ``--executor ray``), then the report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from anomalib_agpt.apps.leaderboard import cells
from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig, check_executor, parse_args
from anomalib_agpt.apps.leaderboard.report import (
    output_lines,
    print_summary,
    summarise,
    write_chart,
    write_markdown,
)
from anomalib_agpt.apps.leaderboard.results import append_result, done_cells, read_results, resume_line


def run_leaderboard(
    config: LeaderboardConfig,
    title: str = "anomalib-agpt leaderboard",
    show_outputs: bool = True,
) -> list[dict[str, Any]]:
    """Run every missing cell, print the table, write ``leaderboard.md`` / ``.png``; return the summary.

    A rerun on the same output folder says how many cells it found done; ``show_outputs`` ends with where
    the outputs are (the demo prints its own closing lines). With ``executor="ray"`` the missing cells run as
    Ray tasks (:mod:`~anomalib_agpt.apps.leaderboard.ray_executor`, imported only then); their rows are
    written as they arrive.
    """
    check_executor(config)
    os.environ.setdefault("TQDM_DISABLE", "1")
    cells.quiet()
    config.output.mkdir(parents=True, exist_ok=True)
    data_root = config.root
    if config.dataset == "synthetic":
        from anomalib_agpt.data import make_synthetic_mvtec

        data_root = make_synthetic_mvtec(config.output / "data", categories=config.categories, **config.synthetic)
    results = config.output / "results.csv"
    grid = [
        (name, category, str(seed)) for category in config.categories for seed in config.seeds for name in config.models
    ]
    resumed = resume_line(results, grid)
    if resumed is not None:
        print(resumed, flush=True)
    done = done_cells(results)
    todo = [cell for cell in grid if cell not in done]

    def record(row: dict[str, Any]) -> None:
        append_result(results, row)
        print(f"  {row['model']} / {row['category']} / seed {row['seed']}: {row['status']}", flush=True)

    if config.executor == "ray" and todo:
        from anomalib_agpt.apps.leaderboard import ray_executor

        with ray_executor.ray_session(config):
            ray_executor.run_cells(config, data_root, todo, record)
    else:
        for name, category, seed in todo:
            record(cells.run_cell(name, config, data_root, category, int(seed)))
    summary = summarise(read_results(results), config)
    print_summary(summary, title)
    write_markdown(summary, config)
    write_chart(summary, config.output / "leaderboard.png")
    if show_outputs:
        print("\n".join(output_lines(config.output)), flush=True)
    return summary


def main(argv: Sequence[str] = ()) -> None:
    """``anomalib-agpt leaderboard``: parse the options and run (``run_leaderboard`` returns the summary)."""
    run_leaderboard(parse_args(argv))
