"""Leaderboard throughput: cells per hour run one after another vs as Ray tasks on single-CPU workers.

    python benchmarks/leaderboard_scaling.py [--categories weave washer] [--seeds 0 1] [--epochs 10]
                                             [--num-train 48] [--image-size 128]

The same leaderboard (AnomalyGPT-fullshot, random-small preset, trained ``--epochs`` epochs on a synthetic
category of ``--num-train`` images of ``--image-size`` px; one cell per category and seed, each cell
30 s or more on a 2-core CPU) runs twice, end to end through ``run_leaderboard``, on one copy of the
images (the training's synthetic anomalies are keyed by the image paths, so both runs read the same
paths): (a) ``--executor local``, today's sequential run with torch's default threads; (b) ``--executor
ray`` on the local Ray instance the command starts (as many single-CPU workers as the machine has CPUs:
2 on a 2-core machine), each cell a task with ``--cell-cpus 1`` (one torch thread).
Wall time includes everything either run pays: Ray's start and its workers' imports, the report.
The AUROCs of both runs are compared (threads change float sums, so training may drift slightly).
Last line is the cells per hour of each and the ratio Ray / sequential.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from _setup import busy_cpus


def run(output: Path, data: Path, executor: str, args: argparse.Namespace) -> tuple[float, list[dict[str, str]]]:
    """Wall seconds of one leaderboard run on the synthetic images under ``data`` and its rows."""
    from anomalib_agpt.apps.leaderboard import LeaderboardConfig, read_results, run_leaderboard

    config = LeaderboardConfig(
        output=output,
        dataset="mvtec",  # the MVTec layout of the images written once for both runs (same paths, same anomalies)
        root=data,
        models=["AnomalyGPT-fullshot"],
        categories=list(args.categories),
        seeds=list(args.seeds),
        epochs=args.epochs,
        executor=executor,
        cell_cpus=1,
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_leaderboard(config, show_outputs=False)
    seconds = time.perf_counter() - start
    return seconds, read_results(output / "results.csv")


def main() -> None:
    """Run both, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["weave", "washer"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from anomalib_agpt.apps.leaderboard.ray_executor import local_cpus

    workers = local_cpus()
    cells = len(args.categories) * len(args.seeds)
    others = busy_cpus()
    print(
        f"{cells} cells (AnomalyGPT-fullshot, {args.epochs} epochs, {args.num_train} x {args.image_size} px); "
        f"{os.cpu_count()} CPUs, other processes busy on {others if others is None else round(others, 1)}; "
        f"sequential with {torch.get_num_threads()} torch threads, Ray with {workers} workers x 1 CPU",
        flush=True,
    )
    results: dict[str, tuple[float, list[dict[str, str]]]] = {}
    with tempfile.TemporaryDirectory(prefix="leaderboard_scaling_") as folder:
        from anomalib_agpt.data import make_synthetic_mvtec

        sizes = {"num_train": args.num_train, "num_test_good": 8, "num_test_defect": 4, "image_size": args.image_size}
        data = make_synthetic_mvtec(Path(folder) / "data", categories=args.categories, **sizes)
        for executor in ("local", "ray"):
            results[executor] = run(Path(folder) / executor, data, executor, args)
            seconds, rows = results[executor]
            per_cell = [float(row["seconds"]) for row in rows]
            statuses = sorted({row["status"] for row in rows})
            print(
                f"  {executor:5s}: {seconds:7.1f} s wall, {3600 * cells / seconds:6.1f} cells/h; "
                f"cell median {statistics.median(per_cell):.1f} s (min-max {min(per_cell):.1f}-{max(per_cell):.1f}); "
                f"status {', '.join(statuses)}",
                flush=True,
            )
    auroc = {
        executor: {(r["category"], r["seed"]): float(r["image_AUROC"] or "nan") for r in rows}
        for executor, (_, rows) in results.items()
    }
    drift = max(abs(auroc["local"][key] - auroc["ray"][key]) for key in auroc["local"])
    print(f"  largest image AUROC difference between the two runs: {drift:.2g}")
    sequential = 3600 * cells / results["local"][0]
    parallel = 3600 * cells / results["ray"][0]
    print(
        f"leaderboard_scaling: sequential {sequential:.1f} cells/h, Ray {workers} x 1 CPU {parallel:.1f} cells/h, "
        f"ratio {parallel / sequential:.2f}x"
    )


if __name__ == "__main__":
    main()
