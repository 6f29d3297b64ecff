"""Run a leaderboard: every cell not yet done, one after another, then the report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from anomalib_agpt.apps.leaderboard import cells
from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig, parse_args
from anomalib_agpt.apps.leaderboard.report import print_summary, summarise, write_chart, write_markdown
from anomalib_agpt.apps.leaderboard.results import DONE_PREFIXES, append_result, latest_rows, read_results


def run_leaderboard(config: LeaderboardConfig, title: str = "anomalib-agpt leaderboard") -> list[dict[str, Any]]:
    """Run every missing cell, print the table, write ``leaderboard.md`` / ``.png``; return the summary."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    cells.quiet()
    config.output.mkdir(parents=True, exist_ok=True)
    data_root = config.root
    if config.dataset == "synthetic":
        from anomalib_agpt.data import make_synthetic_mvtec

        data_root = make_synthetic_mvtec(config.output / "data", categories=config.categories, **config.synthetic)
    results = config.output / "results.csv"
    done = {key for key, row in latest_rows(read_results(results)).items() if row["status"].startswith(DONE_PREFIXES)}
    for category in config.categories:
        for seed in config.seeds:
            for name in config.models:
                if (name, category, str(seed)) in done:
                    continue
                row = cells.run_cell(name, config, data_root, category, seed)
                append_result(results, row)
                print(f"  {name} / {category} / seed {seed}: {row['status']}", flush=True)
    summary = summarise(read_results(results), config)
    print_summary(summary, title)
    write_markdown(summary, config)
    write_chart(summary, config.output / "leaderboard.png")
    print(f"Leaderboard in {(config.output / 'leaderboard.md').resolve()}", flush=True)
    return summary


def main(argv: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``anomalib-agpt leaderboard``: parse the options and run."""
    return run_leaderboard(parse_args(argv))
