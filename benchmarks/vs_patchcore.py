"""AnomalyGPT (random-small preset, zero-shot and k-shot) vs anomalib's Patchcore: model time per test image.

    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/vs_patchcore.py [--k-shot 4] [--num-train 8] [--num-test 4]
        [--rounds 3] [--warmup 1]

Both go through anomalib's Engine (fit, then test) on the same synthetic category
(``anomalib_agpt.data.make_synthetic_mvtec``); ``Patchcore(backbone="resnet18", pre_trained=False,
layers=("layer2", "layer3"), coreset_sampling_ratio=0.1)``. A Lightning callback around the test
batches (the leaderboard's ``batch_timer``, through its ``run_cell``) times the model's work per image,
data loading excluded. The three cells run round-robin (AnomalyGPT 0-shot, k-shot, Patchcore, again
...) for ``--rounds`` rounds after ``--warmup`` untimed ones; the figures are medians, so that a
change of machine load hits all three alike.
Random weights: the AUROCs printed alongside mean nothing about real data. Last line: the ratio of
the median times per image AnomalyGPT / Patchcore for each AnomalyGPT setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from _setup import round_robin, rounds_note


def main() -> None:
    """Fit and test the three models round-robin and print time per image and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="washer")
    parser.add_argument("--k-shot", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=8, help="normal training images")
    parser.add_argument("--num-test", type=int, default=4, help="normal test images, and test images per defect type")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds (each fits and tests)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        print("note: MALLOC_MMAP_THRESHOLD_ is unset; Patchcore's coreset step may take much more memory")
    from anomalib_agpt.apps.leaderboard import LeaderboardConfig, quiet, run_cell
    from anomalib_agpt.data import make_synthetic_mvtec

    quiet()
    few_shot = f"AnomalyGPT-{args.k_shot}shot"
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        config = LeaderboardConfig(output=Path(folder), models=["AnomalyGPT-0shot", few_shot, "Patchcore"])
        config.model_options = {"Patchcore": {"num_neighbors": 9}}
        root = make_synthetic_mvtec(
            config.output / "data",
            categories=(args.category,),
            num_train=args.num_train,
            num_test_good=args.num_test,
            num_test_defect=args.num_test,
            image_size=args.image_size,
        )

        def cell(name: str) -> Callable[[], float]:
            """Fit and test ``name``; returns the test batches' seconds per image (fit and loading are not timed)."""

            def run() -> float:
                row = run_cell(name, config, root, args.category, seed=0)
                if row["status"] != "ok":
                    raise SystemExit(f"{name}: {row['status']}")
                rows.setdefault(name, []).append(row)
                return row["ms_per_image"] / 1000

            return run

        note = rounds_note(args.rounds, args.warmup)
        timings = round_robin({name: cell(name) for name in config.models}, args.rounds, args.warmup, self_timed=True)
    print(note)
    for name, timing in timings.items():
        row = rows[name][-1]
        print(
            f"{name:20s} {timing.ms()} per test image  image AUROC {row['image_AUROC']:.3f}  pixel AUROC "
            f"{row['pixel_AUROC']:.3f}  fit+test {statistics.median(r['seconds'] for r in rows[name]):.1f} s (median)"
        )
    patchcore = timings.pop("Patchcore").median
    figures = "; ".join(f"{name} {timing.median / patchcore:.2f}x" for name, timing in timings.items())
    print(f"median time per test image, AnomalyGPT / Patchcore (resnet18, random init): {figures}")


if __name__ == "__main__":
    main()
