"""Two-process DDP fit on CPU (gloo), run by tests/test_training.py in a subprocess.

Lightning's ``ddp_fork`` launcher forks the two ranks from this process once the model is built (the
``ddp`` launcher would start this script again for rank 1: another interpreter and anomalib import).
Forking needs a process of its own, so this is a script, not a test. Each rank writes its report.
Usage: python tests/ddp_fit.py OUTPUT_DIR FIXTURES_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_agpt import AnomalyGPT, TrainingOptions, WeightOptions
from anomalib_agpt.data import make_synthetic_mvtec


class RankReport(Callback):
    """Each rank, at the end of its fit: world size, steps, the decoder weight sum before and after."""

    def __init__(self, output: Path, initial: float) -> None:
        self.output, self.initial = output, initial

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = {
            "world": trainer.world_size,
            "steps": trainer.global_step,
            "initial": self.initial,
            "final": float(pl_module.model.decoder.fc[0].weight.detach().sum()),
        }
        (self.output / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def main(output: Path, fixtures: Path) -> None:
    """Train the decoder for 2 epochs on 2 CPU processes; each rank writes its decoder weight sum."""
    root = make_synthetic_mvtec(
        output / "data", categories=("washer",), num_train=4, num_test_good=2, num_test_defect=1, image_size=64
    )
    datamodule = MVTecAD(root=root, category="washer", train_batch_size=2, eval_batch_size=4, num_workers=0)
    model = AnomalyGPT(
        weights=WeightOptions(
            imagebind_checkpoint=str(fixtures / "imagebind.pth"),
            anomalygpt_checkpoint=str(fixtures / "anomalygpt_delta.pt"),
            vision_heads=4,
            text_heads=2,
        ),
        training=TrainingOptions(trainable=["decoder"], learning_rate=1e-2),
    )
    initial = float(model.model.decoder.fc[0].weight.detach().sum())
    engine = Engine(
        default_root_dir=output / "results",
        logger=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RankReport(output, initial)],
    )
    engine.fit(model=model, datamodule=datamodule)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
