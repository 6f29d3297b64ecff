"""``anomalib-agpt demo``: AnomalyGPT (zero- and k-shot) next to Patchcore on a synthetic MVTec set, offline.

With real weights (``--imagebind-checkpoint``/``--anomalygpt-checkpoint`` or the environment
variables below) it runs them; otherwise it builds the ``random-small`` preset and says that its
numbers mean nothing for real data. Everything goes through anomalib's Engine, datamodule and
metrics, exactly as a user's run would.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGEBIND_ENV = "ANOMALIB_AGPT_IMAGEBIND"
CHECKPOINT_ENV = "ANOMALIB_AGPT_CHECKPOINT"
MALLOC_ENV = "MALLOC_MMAP_THRESHOLD_"
MALLOC_VALUE = "131072"  # keeps Patchcore's coreset step near 1 GB on torch 2.14 (glibc reads it at start)


@dataclass
class DemoRow:
    """One model on one category."""

    model: str
    category: str
    image_auroc: float
    pixel_auroc: float
    ms_per_image: float


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of the demo."""
    from .data import SYNTHETIC_CATEGORIES

    parser = argparse.ArgumentParser(prog="anomalib-agpt demo", description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="data and results folder")
    parser.add_argument("--categories", nargs="+", default=list(SYNTHETIC_CATEGORIES))
    parser.add_argument("--k-shot", type=int, default=4, help="reference images of the few-shot run")
    parser.add_argument("--imagebind-checkpoint", default=os.environ.get(IMAGEBIND_ENV))
    parser.add_argument("--anomalygpt-checkpoint", default=os.environ.get(CHECKPOINT_ENV))
    parser.add_argument("--vision-heads", type=int, default=16)
    parser.add_argument("--text-heads", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(list(argv))


QUIET_ENV = {MALLOC_ENV: MALLOC_VALUE, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _ensure_process_settings(argv: Sequence[str]) -> None:
    """Re-run the demo with its environment set: glibc and tqdm read theirs when the process starts."""
    if all(os.environ.get(name) for name in QUIET_ENV):
        return
    env = {**QUIET_ENV, **{k: v for k, v in os.environ.items() if v}}
    os.execve(sys.executable, [sys.executable, "-m", "anomalib_agpt.cli", "demo", *argv], env)


def _quiet() -> None:
    """Keep the demo's output to its table: no warnings, log lines or Lightning banners."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def _timer_callback() -> Any:  # noqa: ANN401
    """A Lightning callback that times the test batches (model work only, not data loading)."""
    from lightning.pytorch import Callback

    class TestTimer(Callback):
        def __init__(self) -> None:
            self.seconds = 0.0
            self.images = 0
            self._start = 0.0

        def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:  # noqa: ANN401
            self._start = time.perf_counter()

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:  # noqa: ANN401
            self.seconds += time.perf_counter() - self._start
            self.images += len(batch.image)

    return TestTimer()


def run_one(name: str, build_model: Callable[[], Any], root: Path, category: str, output: Path) -> DemoRow:
    """Fit (or set up) and test one model on one category through anomalib's Engine."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    datamodule = MVTecAD(root=root, category=category, train_batch_size=8, eval_batch_size=8, num_workers=0)
    timer = _timer_callback()
    engine = Engine(
        default_root_dir=output / "results" / name,
        logger=False,
        devices=1,
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    model = build_model()
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    return DemoRow(
        model=name,
        category=category,
        image_auroc=float(metrics["image_AUROC"]),
        pixel_auroc=float(metrics["pixel_AUROC"]),
        ms_per_image=1000 * timer.seconds / max(timer.images, 1),
    )


def model_builders(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The compared models: AnomalyGPT zero-shot and k-shot, and Patchcore (resnet18, no download)."""
    from anomalib.models import Patchcore

    from .lightning_model import AnomalyGPT

    if args.imagebind_checkpoint and args.anomalygpt_checkpoint:
        weights: dict[str, Any] = {
            "imagebind_checkpoint": args.imagebind_checkpoint,
            "anomalygpt_checkpoint": args.anomalygpt_checkpoint,
            "vision_heads": args.vision_heads,
            "text_heads": args.text_heads,
        }
    else:
        weights = {"preset": "random-small", "seed": args.seed}
    return {
        "AnomalyGPT 0-shot": lambda: AnomalyGPT(**weights, k_shot=0),
        f"AnomalyGPT {args.k_shot}-shot": lambda: AnomalyGPT(**weights, k_shot=args.k_shot),
        "Patchcore (resnet18, random init)": lambda: Patchcore(
            backbone="resnet18",
            pre_trained=False,
            layers=("layer2", "layer3"),
            coreset_sampling_ratio=0.1,
            num_neighbors=9,
        ),
    }


def print_table(rows: list[DemoRow], random_weights: bool) -> str:
    """Print per-category and mean metrics with rich; return the Markdown form."""
    from rich.console import Console
    from rich.table import Table

    models = list(dict.fromkeys(row.model for row in rows))
    categories = list(dict.fromkeys(row.category for row in rows))
    table = Table(title="anomalib-agpt demo (synthetic MVTec-layout data)")
    for column in ("model", "category", "image AUROC", "pixel AUROC", "ms / image"):
        table.add_column(column, justify="left" if column in {"model", "category"} else "right")
    lines = ["| model | category | image AUROC | pixel AUROC | ms / image |", "|---|---|---|---|---|"]
    for model in models:
        own = [row for row in rows if row.model == model]
        mean = DemoRow(
            model,
            "mean",
            sum(r.image_auroc for r in own) / len(own),
            sum(r.pixel_auroc for r in own) / len(own),
            sum(r.ms_per_image for r in own) / len(own),
        )
        for row in [*own, mean] if len(categories) > 1 else own:
            cells = [
                row.model,
                row.category,
                f"{row.image_auroc:.3f}",
                f"{row.pixel_auroc:.3f}",
                f"{row.ms_per_image:.1f}",
            ]
            table.add_row(*cells, style="bold" if row.category == "mean" else None)
            lines.append("| " + " | ".join(cells) + " |")
    console = Console()
    console.print(table)
    if random_weights:
        console.print(
            "[bold yellow]AnomalyGPT ran the random-small preset (no weights configured): its numbers mean "
            "nothing for real data.[/] Set "
            f"{IMAGEBIND_ENV} and {CHECKPOINT_ENV} (or pass --imagebind-checkpoint/--anomalygpt-checkpoint) "
            "to run the released weights.",
        )
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> list[DemoRow]:
    """Write the data, run every model on every category, print and save the table."""
    _ensure_process_settings(argv)
    args = parse_args(argv)
    _quiet()
    from lightning.pytorch import seed_everything

    from .data import make_synthetic_mvtec

    started = time.perf_counter()
    root = make_synthetic_mvtec(args.output / "data", categories=args.categories, seed=args.seed)
    builders = model_builders(args)
    random_weights = not (args.imagebind_checkpoint and args.anomalygpt_checkpoint)
    rows = []
    for category in args.categories:
        for name, build in builders.items():
            seed_everything(args.seed, verbose=False)
            rows.append(run_one(name, build, root, category, args.output))
            print(f"  done: {name} on {category}", flush=True)
    markdown = print_table(rows, random_weights)
    (args.output / "results.md").write_text(markdown + "\n")
    with (args.output / "results.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["model", "category", "image_AUROC", "pixel_AUROC", "ms_per_image"])
        writer.writerows([r.model, r.category, r.image_auroc, r.pixel_auroc, r.ms_per_image] for r in rows)
    print(f"Results in {args.output.resolve()} (images under results/); total {time.perf_counter() - started:.0f} s")
    return rows
