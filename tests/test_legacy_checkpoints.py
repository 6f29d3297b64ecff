"""Checkpoints written by the flat-option AnomalyGPT (before 0.3) load and predict exactly as they did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_agpt import (
    AnomalyGPT,
    DecodingOptions,
    ExplanationOptions,
    FewShotOptions,
    TrainingOptions,
    WeightOptions,
)
from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.errors import OptionError
from anomalib_agpt.module.legacy_options import FLAT_OPTIONS, group_flat_options

from .conftest import ANOMALYGPT_DELTA, FIXTURES, IMAGEBIND, PANDAGPT_DELTA

LEGACY = Path(__file__).parent / "fixtures" / "checkpoints_v0_3"
CHECKPOINT = LEGACY / "trained_explain_1shot.ckpt"
QUESTION = "Is there any anomaly in the image?"
# the weight files live elsewhere on every machine than where the fixture was written
WEIGHTS = {
    "imagebind_checkpoint": str(IMAGEBIND),
    "anomalygpt_checkpoint": str(ANOMALYGPT_DELTA),
    "llm": str(FIXTURES / "vicuna"),
    "pandagpt_checkpoint": str(PANDAGPT_DELTA),
}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory: pytest.TempPathFactory) -> MVTecAD:
    """The synthetic washer set the fixture's predictions were made on (see its README)."""
    root = make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"),
        categories=("washer",),
        num_train=4,
        num_test_good=2,
        num_test_defect=2,
        image_size=96,
    )
    return MVTecAD(root=root, category="washer", train_batch_size=2, eval_batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return torch.load(LEGACY / "trained_explain_1shot_expected.pt", weights_only=True)


def _predict(model: AnomalyGPT, datamodule: MVTecAD, root: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    engine = Engine(default_root_dir=root, logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = engine.predict(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
    return {
        "image_path": [Path(path).name for batch in batches for path in batch.image_path],
        "anomaly_map": torch.cat([batch.anomaly_map.float() for batch in batches]),
        "pred_score": torch.cat([batch.pred_score.float() for batch in batches]),
        "explanation": [answer for batch in batches for answer in batch.explanation],
    }


def _assert_same_predictions(ours: dict[str, Any], expected: dict[str, Any]) -> None:
    assert ours["image_path"] == expected["image_path"]
    torch.testing.assert_close(ours["anomaly_map"], expected["anomaly_map"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours["pred_score"], expected["pred_score"], atol=1e-5, rtol=1e-4)
    assert ours["explanation"] == expected["explanation"]


def test_saved_flat_options_are_put_into_their_groups() -> None:
    saved = torch.load(CHECKPOINT, weights_only=True)["hyper_parameters"]
    assert set(saved) == set(FLAT_OPTIONS) | {"class_name", "resize_mode", "protocol"}  # every flat name is mapped
    grouped = group_flat_options(saved)
    assert grouped["few_shot"] == {"k_shot": 1, "source": None, "mode": "fuse", "reference_round": None}
    assert grouped["explanation"]["decoding"]["max_new_tokens"] == 6
    assert grouped["explanation"]["label_source"] == "threshold"
    assert grouped["training"]["trainable"] == ["decoder", "lora"]
    assert grouped["training"]["warmup_ratio"] == 0.2
    assert grouped["inference"]["encoder_dtype"] == "fp32"
    assert grouped["weights"]["text_heads"] == 2


def test_load_from_checkpoint_translates_and_predicts_the_same(
    datamodule: MVTecAD, expected: dict[str, Any], tmp_path: Path
) -> None:
    """The earlier checkpoint restores with its options grouped and the same maps, scores and answers."""
    model = AnomalyGPT.load_from_checkpoint(CHECKPOINT, weights=WEIGHTS)
    assert model.few_shot_options == FewShotOptions(k_shot=1, mode="fuse")
    assert model.weight_options.vision_heads == 4  # saved fields the override did not name are kept
    assert model.explanation_options.decoding == DecodingOptions(max_new_tokens=6)
    assert model.explanation_options.question == QUESTION
    assert model.training_options.trainable == ["decoder", "lora"]
    _assert_same_predictions(_predict(model, datamodule, tmp_path), expected)


def test_engine_restores_the_earlier_checkpoint_into_a_grouped_model(
    datamodule: MVTecAD, expected: dict[str, Any], tmp_path: Path
) -> None:
    """``predict --ckpt_path`` with the model written in the new form gives the earlier predictions."""
    model = AnomalyGPT(
        weights=WeightOptions(**WEIGHTS, vision_heads=4, text_heads=2),
        few_shot=FewShotOptions(k_shot=1, mode="fuse"),
        explanation=ExplanationOptions(
            explain=True, question=QUESTION, label_source="threshold", decoding=DecodingOptions(max_new_tokens=6)
        ),
        training=TrainingOptions(trainable=["decoder", "lora"], learning_rate=1e-2, warmup_ratio=0.2),
    )
    _assert_same_predictions(_predict(model, datamodule, tmp_path, ckpt_path=CHECKPOINT), expected)


def test_a_new_checkpoint_saves_plain_groups_and_restores_them(
    datamodule: MVTecAD, tmp_path: Path, expected: dict[str, Any]
) -> None:
    """Saved again, the groups are plain mappings (no pickled classes) and load back equal."""
    model = AnomalyGPT.load_from_checkpoint(CHECKPOINT, weights=WEIGHTS)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    engine.predict(model=model, datamodule=datamodule)
    path = tmp_path / "again.ckpt"
    engine.trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["hyper_parameters"]  # plain data: loads without allow-lists
    assert saved["few_shot"] == {"k_shot": 1, "source": None, "mode": "fuse", "reference_round": None}
    assert saved["explanation"]["decoding"]["max_new_tokens"] == 6
    restored = AnomalyGPT.load_from_checkpoint(path)
    assert restored.few_shot_options == model.few_shot_options
    assert restored.explanation_options == model.explanation_options
    assert restored.weight_options == model.weight_options


def test_flat_keywords_to_load_from_checkpoint_name_their_place() -> None:
    with pytest.raises(OptionError, match=r"k_shot is now few_shot\.k_shot"):
        AnomalyGPT.load_from_checkpoint(CHECKPOINT, k_shot=2)
