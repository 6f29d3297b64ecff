"""Checkpoint size vs trainable and frozen parameter bytes, after a short fit through anomalib's Engine.

    python benchmarks/checkpoint_size.py [--steps 2] [--image-size 64]

Two models of the reference set (``tests/fixtures/anomalygpt_reference``) fit for one epoch of a few
steps on a tiny synthetic category (``anomalib_agpt.data.make_synthetic_mvtec``):
(a) ``trainable=["decoder"]``; (b) with the reference-set LLM and PandaGPT delta,
``trainable=["decoder", "prompt_learner", "lora"]``. Each Lightning checkpoint's bytes are compared
with the trainable parameters' fp32 bytes (goal ~3x: the weights plus Adam's two moments, plus
small buffers and hyper-parameters) and with the frozen weights' bytes (which must stay out of it).
Last line is the checkpoint / trainable ratio of each.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from _setup import FIXTURES, fixture_weights


def fit_and_measure(name: str, options: dict[str, Any], root: Path, data: Path, steps: int) -> tuple[int, int, int]:
    """(checkpoint bytes, trainable fp32 bytes, frozen fp32 bytes) after a short fit."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_agpt import AnomalyGPT
    from anomalib_agpt.module.legacy_options import group_flat_options

    seed_everything(0)
    datamodule = MVTecAD(root=data, category="washer", train_batch_size=2, eval_batch_size=4, num_workers=0)
    model = AnomalyGPT(**group_flat_options(options))
    engine = Engine(
        default_root_dir=root / name,
        logger=False,
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    checkpoints = sorted((root / name).rglob("*.ckpt"))
    if not checkpoints:
        msg = f"{name}: the fit wrote no checkpoint under {root / name}"
        raise RuntimeError(msg)
    # Parameters after the fit: the LLM head (loaded lazily) is in place now; tied weights count once.
    parameters = {id(p): p for p in model.parameters()}.values()
    trainable = sum(4 * p.numel() for p in parameters if p.requires_grad)
    frozen = sum(4 * p.numel() for p in parameters if not p.requires_grad)
    return checkpoints[-1].stat().st_size, trainable, frozen


def main() -> None:
    """Fit both models and print the byte counts and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="training steps (batches of 2) in the one epoch")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from anomalib_agpt.data import make_synthetic_mvtec

    weights = fixture_weights()
    vision = {
        key: weights[key] for key in ("imagebind_checkpoint", "anomalygpt_checkpoint", "vision_heads", "text_heads")
    }
    setups = {
        "decoder": {**vision, "trainable": ["decoder"]},
        "decoder+prompt_learner+lora": {
            **vision,
            "llm": str(FIXTURES / "vicuna"),
            "pandagpt_checkpoint": str(FIXTURES / "pandagpt_delta.pt"),
            "trainable": ["decoder", "prompt_learner", "lora"],
        },
    }
    figures = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = make_synthetic_mvtec(
            root / "data",
            categories=("washer",),
            num_train=2 * args.steps,
            num_test_good=1,
            num_test_defect=1,
            image_size=args.image_size,
        )
        print(
            f"{'trainable':30s} {'checkpoint':>12s} {'trainable fp32':>15s} {'frozen fp32':>12s} {'ckpt/train':>11s} "
            f"{'ckpt/frozen':>12s}"
        )
        for name, options in setups.items():
            checkpoint, trainable, frozen = fit_and_measure(name, options, root, data, args.steps)
            print(
                f"{name:30s} {checkpoint:12,d} {trainable:15,d} {frozen:12,d} "
                f"{checkpoint / trainable:10.2f}x {checkpoint / frozen:11.3f}x",
            )
            figures.append(f"{name} {checkpoint / trainable:.2f}x")
    print("checkpoint / trainable fp32 bytes (expected ~3x: weights + Adam's 2 moments): " + "; ".join(figures))


if __name__ == "__main__":
    main()
