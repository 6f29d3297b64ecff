"""Two-process DDP fit on CPU (gloo), run by tests/test_training.py in a subprocess.

Lightning's ddp launcher re-runs this file for rank 1, so it has to be a script, not a test.
Usage: python tests/ddp_fit.py OUTPUT_DIR FIXTURES_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_agpt import AnomalyGPT, TrainingOptions, WeightOptions
from anomalib_agpt.data import make_synthetic_mvtec


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
        strategy="ddp",
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    trainer = engine.trainer
    report = {
        "world": trainer.world_size,
        "steps": trainer.global_step,
        "initial": initial,
        "final": float(model.model.decoder.fc[0].weight.detach().sum()),
    }
    (output / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
