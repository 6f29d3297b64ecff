"""Explain mode through anomalib: explanations in batches, labels from answers, metrics, export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.callbacks import PredictionWriter
from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.explanation.conversation import is_anomalous_answer

from .conftest import FIXTURES, PANDAGPT_DELTA, auroc_by_ranks, make_model

CATEGORY = "tablet"
CELLS = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
"""The 3x3 cells answers name, by row and column."""


class KeepTestBatches(Callback):
    """Keeps every test batch; the post-processor and evaluator then update (and read) these objects."""

    def __init__(self) -> None:
        self.batches: list = []

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
        self.batches.append(outputs)


def grounded_by_hand(answer: str, label: bool, mask: torch.Tensor) -> bool:
    """Normal: no 'Yes'. Anomalous: 'Yes' and the words of the 3x3 cell holding the mask's centroid."""
    if not label:
        return "Yes" not in answer
    rows, cols = torch.nonzero(mask.reshape(mask.shape[-2:])).float().mean(dim=0).tolist()
    height, width = mask.shape[-2:]
    cell = CELLS[min(int(3 * rows / height), 2)][min(int(3 * cols / width), 2)]
    named = re.findall(r"top left|top right|bottom left|bottom right|top|bottom|left|right|center", answer)
    return "Yes" in answer and cell in named


@pytest.fixture(scope="module")
def explain_options() -> dict[str, Any]:
    return {
        "llm": str(FIXTURES / "vicuna"),
        "pandagpt_checkpoint": str(PANDAGPT_DELTA),
        "explain": True,
        "max_new_tokens": 12,
        "k_shot": 1,
    }


@pytest.fixture(scope="module")
def fitted(weights: dict[str, Any], explain_options: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("explain")
    root = make_synthetic_mvtec(work / "data", categories=(CATEGORY,), num_train=2, num_test_good=2, num_test_defect=1)
    datamodule = MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=work / "results", logger=False, devices=1, enable_progress_bar=False)
    model = make_model(**weights, **explain_options)
    engine.fit(model=model, datamodule=datamodule)
    assert model.model.llm_head is None  # validation (threshold fitting) never needs the LLM
    checkpoint = work / "results" / "AnomalyGPT" / "MVTecAD" / CATEGORY / "v0" / "weights" / "lightning" / "model.ckpt"
    return {"work": work, "root": root, "datamodule": datamodule, "engine": engine, "checkpoint": checkpoint}


def test_test_fills_explanations_labels_and_answer_accuracy(
    fitted: dict,
    weights: dict[str, Any],
    explain_options: dict[str, Any],
) -> None:
    """The answer metrics and image AUROC equal those computed by hand from the test batches' answers and raw scores."""
    model = make_model(**weights, **explain_options)
    kept = KeepTestBatches()
    engine = Engine(
        default_root_dir=fitted["work"] / "results",
        logger=False,
        devices=1,
        callbacks=[kept],
        enable_progress_bar=False,
    )
    metrics = engine.test(model=model, datamodule=fitted["datamodule"], ckpt_path=fitted["checkpoint"])[0]
    assert {"image_AUROC", "pixel_AUROC", "AnswerAccuracy", "ExplanationGrounding"} <= set(metrics)
    answers = [answer for batch in kept.batches for answer in batch.explanation]
    labels = torch.cat([batch.gt_label for batch in kept.batches]).bool()
    masks = torch.cat([batch.gt_mask for batch in kept.batches])
    assert len(answers) == len(labels) == len(list((fitted["root"] / CATEGORY / "test").rglob("*.png")))
    assert 0 < labels.sum() < len(labels)  # both classes: the AUROC is defined
    agree = [("Yes" in answer) == bool(label) for answer, label in zip(answers, labels, strict=True)]
    assert metrics["AnswerAccuracy"] == pytest.approx(sum(agree) / len(agree), abs=1e-6)
    grounded = [grounded_by_hand(*item) for item in zip(answers, labels.tolist(), masks, strict=True)]
    assert metrics["ExplanationGrounding"] == pytest.approx(sum(grounded) / len(grounded), abs=1e-6)
    scores = torch.cat([batch.raw_pred_score for batch in kept.batches])  # before anomalib's clamped normalisation
    assert metrics["image_AUROC"] == pytest.approx(auroc_by_ranks(scores, labels), abs=1e-6)
    images = list((fitted["work"] / "results").rglob("images/**/*.png"))
    assert images  # the explanation visualizer wrote its panels


def test_predict_answers_every_image_and_labels_follow_answers(
    fitted: dict,
    weights: dict[str, Any],
    explain_options: dict[str, Any],
    tmp_path: Path,
) -> None:
    writer = PredictionWriter(output_dir=tmp_path / "predictions")
    engine = Engine(default_root_dir=tmp_path, logger=False, devices=1, callbacks=[writer], enable_progress_bar=False)
    model = make_model(**weights, **explain_options)
    batches = engine.predict(model=model, datamodule=fitted["datamodule"], ckpt_path=fitted["checkpoint"])
    for batch in batches:
        assert len(batch.explanation) == len(batch.image)
        expected = torch.tensor([is_anomalous_answer(answer) for answer in batch.explanation])
        assert torch.equal(batch.pred_label.cpu().bool(), expected)
    lines = [json.loads(line) for line in (tmp_path / "predictions" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == sum(len(batch.image) for batch in batches)
    assert {line["explanation"] for line in lines} == {a for batch in batches for a in batch.explanation}
    assert all((tmp_path / "predictions" / line["anomaly_map"]).is_file() for line in lines)


def test_threshold_labels_when_asked(fitted: dict, weights: dict[str, Any], explain_options: dict[str, Any]) -> None:
    model = make_model(**weights, **explain_options, label_source="threshold")
    batches = fitted["engine"].predict(model=model, datamodule=fitted["datamodule"], ckpt_path=fitted["checkpoint"])
    for batch in batches:
        assert batch.explanation is not None
        torch.testing.assert_close(batch.pred_label.float(), (batch.pred_score > 0.5).float())


def test_export_from_an_explain_checkpoint_never_loads_the_llm(
    fitted: dict,
    weights: dict[str, Any],
    explain_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(*_: Any, **__: Any) -> None:
        raise AssertionError("the LLM was loaded for export")

    monkeypatch.setattr("anomalib_agpt.explanation.llm_head.LLMHead.from_spec", forbidden)
    restored = AnomalyGPT.load_from_checkpoint(fitted["checkpoint"])
    assert restored.explain
    assert restored.model.llm_head is None
    path = fitted["engine"].export(model=restored, export_type="torch", ckpt_path=fitted["checkpoint"])
    exported = torch.load(path, weights_only=False)["model"]
    assert exported.model.llm_head is None
    assert exported(torch.rand(1, 3, 64, 64)).anomaly_map.shape == (1, 1, 224, 224)


def test_export_after_explaining_leaves_the_llm_out(
    weights: dict[str, Any], explain_options: dict, tmp_path: Path
) -> None:
    model = make_model(**weights, **explain_options)
    model.model.ensure_llm_head()
    path = model.to_torch(tmp_path)
    assert torch.load(path, weights_only=False)["model"].model.llm_head is None
    assert model.model.llm_head is not None  # put back after export
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert not any("llm_head" in key for key in checkpoint["state_dict"])  # frozen: never in checkpoints


def test_one_encoder_pass_feeds_both_maps_and_the_llm(
    weights: dict[str, Any],
    explain_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fused zero-/few-shot map and the LLM's image token all come from a single encoder call per batch."""
    model = make_model(**weights, **{**explain_options, "k_shot": 0}, few_shot_mode="fuse")
    torch_model = model.model
    references = torch.rand(1, 3, 224, 224)
    torch_model.set_references(references)
    calls: list[int] = []
    encode = torch_model.encode

    def counting(images: torch.Tensor) -> Any:
        calls.append(len(images))
        return encode(images)

    monkeypatch.setattr(torch_model, "encode", counting)
    scores, answers = torch_model.predict_and_explain(torch.rand(2, 3, 224, 224))
    assert calls == [2]  # the query batch once; the reference memory is never re-encoded
    assert len(answers) == 2
    assert scores.anomaly_map.shape == (2, 1, 224, 224)
