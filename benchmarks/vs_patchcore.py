"""AnomalyGPT (random-small preset, zero-shot and k-shot) vs anomalib's Patchcore: model time per test image.

    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/vs_patchcore.py [--k-shot 4] [--num-train 8] [--num-test 4]

Both go through anomalib's Engine (fit, then test) on the same synthetic category
(``anomalib_agpt.data.make_synthetic_mvtec``); ``Patchcore(backbone="resnet18", pre_trained=False,
layers=("layer2", "layer3"), coreset_sampling_ratio=0.1)``. A Lightning callback around the test
batches (the leaderboard's ``batch_timer``, through its ``run_cell``) times the model's work per image,
data loading excluded.
Random weights: the AUROCs printed alongside mean nothing about real data. Last line: the
time-per-image ratio AnomalyGPT / Patchcore for each AnomalyGPT setting.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _setup  # noqa: F401 (sys.path and HF_HUB_OFFLINE)


def main() -> None:
    """Fit and test the three models and print time per image and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="washer")
    parser.add_argument("--k-shot", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=8, help="normal training images")
    parser.add_argument("--num-test", type=int, default=4, help="normal test images, and test images per defect type")
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        print("note: MALLOC_MMAP_THRESHOLD_ is unset; Patchcore's coreset step may take much more memory")
    from anomalib_agpt.data import make_synthetic_mvtec
    from anomalib_agpt.leaderboard import LeaderboardConfig, quiet, run_cell

    quiet()
    few_shot = f"AnomalyGPT-{args.k_shot}shot"
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
        rows = {}
        for name in config.models:
            start = time.perf_counter()
            row = run_cell(name, config, root, args.category, seed=0)
            if row["status"] != "ok":
                raise SystemExit(f"{name}: {row['status']}")
            rows[name] = row
            print(
                f"{name:20s} {row['ms_per_image']:8.1f} ms/image (test batches)  image AUROC "
                f"{row['image_AUROC']:.3f}  pixel AUROC {row['pixel_AUROC']:.3f}  fit+test "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
    patchcore = rows.pop("Patchcore")["ms_per_image"]
    figures = "; ".join(f"{name} {row['ms_per_image'] / patchcore:.2f}x" for name, row in rows.items())
    print(f"time per test image, AnomalyGPT / Patchcore (resnet18, random init): {figures}")


if __name__ == "__main__":
    main()
