"""anomalib's own model battery, through ``get_model("AnomalyGPT")`` with anomalib's defaults.

For zero- and few-shot: fit; test, train, validate and predict from the checkpoint; export torch
without ``input_size``. ONNX and OpenVINO go through the same ``Engine.export`` call with the same
defaults in ``tests/test_export.py`` (real image sizes, both k and both resize modes), so they are not
exported twice. Each step is checked against a value computed apart from it, so that a step that
runs but computes nonsense fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from anomalib.models import get_model

from anomalib_agpt.data import make_synthetic_mvtec

from .conftest import auroc_by_ranks, grouped

CATEGORY = "washer"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(
        tmp_path_factory.mktemp("battery_data"),
        categories=(CATEGORY,),
        num_train=3,
        num_test_good=3,
        num_test_defect=2,
        image_size=224,  # the encoder's size: exported and evaluated resizes agree exactly (tests/test_export.py
        # bounds them on real sizes; on tiny upscaled images a grey-level tie may round apart)
    )


@pytest.mark.parametrize("k_shot", [0, 2], ids=["zero_shot", "few_shot"])
def test_anomalib_model_battery(
    k_shot: int,
    weights: dict[str, Any],
    dataset_root: Path,
    tmp_path: Path,
) -> None:
    def model() -> Any:
        return get_model("AnomalyGPT", **grouped(**weights, k_shot=k_shot))

    def datamodule() -> MVTecAD:
        return MVTecAD(root=dataset_root, category=CATEGORY, train_batch_size=2, eval_batch_size=8, num_workers=0)

    engine = Engine(default_root_dir=tmp_path, logger=False, devices=1, max_epochs=1, enable_progress_bar=False)
    engine.fit(model=model(), datamodule=datamodule())
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    assert Path(checkpoint).is_file()

    tested = engine.test(model=model(), datamodule=datamodule(), ckpt_path=checkpoint)[0]
    trained = engine.train(model=model(), datamodule=datamodule(), ckpt_path=checkpoint)[0]
    validating = model()
    engine.validate(model=validating, datamodule=datamodule(), ckpt_path=checkpoint)
    batches = engine.predict(model=model(), datamodule=datamodule(), ckpt_path=checkpoint)

    scores = torch.cat([b.pred_score for b in batches])
    labels = torch.cat([b.gt_label for b in batches]).int()
    assert len(scores) == 3 + 2 * 2  # good + two defect types
    independent_auroc = auroc_by_ranks(scores, labels)
    assert tested["image_AUROC"] == pytest.approx(independent_auroc, abs=1e-6)
    assert trained["image_AUROC"] == pytest.approx(independent_auroc, abs=1e-6)  # train = fit + the same test
    # validation re-fits the thresholds on the same images: the fitted ones come back
    stored = torch.load(checkpoint, weights_only=False)["state_dict"]
    for name in ("_image_threshold", "image_min", "image_max"):
        torch.testing.assert_close(getattr(validating.post_processor, name), stored[f"post_processor.{name}"])

    paths = [path for batch in batches for path in batch.image_path]
    index = next(i for i, path in enumerate(paths) if path.endswith("scratch/000.png"))
    image = read_image(paths[index], as_tensor=True).unsqueeze(0)
    expected_score = float(scores[index])

    path = engine.export(model=model(), export_type="torch", ckpt_path=checkpoint)
    exported = torch.load(path, weights_only=False)["model"].eval()
    assert np.isclose(float(exported(image).pred_score), expected_score, atol=1e-2)
