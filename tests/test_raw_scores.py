"""Threshold-free metrics on raw scores: where anomalib's clamped normalisation ties, the raw values decide."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPRO, AUROC
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.callbacks.raw_scores import RAW_FIELDS, RawScoreKeeper, on_raw_scores
from tests.conftest import auroc_by_ranks, make_model

# Three positives, three negatives; the post-processor below maps x -> clamp(x, 0, 1), so everything >= 1 ties.
RAW_SCORES = torch.tensor([0.1, 2.0, 3.0, 20.0, 25.0, 30.0])
LABELS = torch.tensor([0, 0, 1, 0, 1, 1])


def _tested_batch() -> ImageBatch:
    """A batch with raw scores and maps whose normalised values tie (min 0, max 1, threshold 0.5: x -> x)."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[LABELS.bool(), 4:9, 5:11] = True
    maps = torch.rand(6, 1, 16, 16, generator=generator) * 3  # values in [0, 3]: a third of them clamp to 1
    maps[:, 0][masks] += 1.0
    return ImageBatch(
        image=torch.zeros(6, 3, 16, 16),
        gt_label=LABELS.clone(),
        gt_mask=masks,
        pred_score=RAW_SCORES.clone(),
        anomaly_map=maps,
    )


def _post_processor() -> PostProcessor:
    post = PostProcessor()
    for name, value in [("_image_threshold", 0.5), ("_pixel_threshold", 0.5)]:
        getattr(post, name).fill_(value)
    for name, value in [("image_min", 0.0), ("image_max", 1.0), ("pixel_min", 0.0), ("pixel_max", 1.0)]:
        getattr(post, name).fill_(value)
    return post


def _evaluate(evaluator: object, keep_raw: bool) -> dict[str, float]:
    batch = _tested_batch()
    if keep_raw:
        RawScoreKeeper().on_test_batch_end(None, None, batch, batch, 0)
    _post_processor().on_test_batch_end(None, None, batch)
    evaluator.on_test_batch_end(None, None, batch, batch, 0)  # type: ignore[attr-defined]
    return {metric.name: float(metric.compute()) for metric in evaluator.test_metrics}  # type: ignore[attr-defined]


def _with_aupro(evaluator: object) -> object:
    evaluator.test_metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_"))  # type: ignore[attr-defined]
    return evaluator


def test_ranking_metrics_read_raw_values_where_clamping_ties() -> None:
    raw = _evaluate(on_raw_scores(_with_aupro(AnomalibModule.configure_evaluator())), keep_raw=True)
    clamped = _evaluate(_with_aupro(AnomalibModule.configure_evaluator()), keep_raw=False)
    batch = _tested_batch()
    expected_image = auroc_by_ranks(RAW_SCORES, LABELS)
    expected_pixel = auroc_by_ranks(batch.anomaly_map, batch.gt_mask)
    assert expected_image == pytest.approx(8 / 9)
    assert raw["image_AUROC"] == pytest.approx(expected_image, abs=1e-6)
    assert raw["pixel_AUROC"] == pytest.approx(expected_pixel, abs=1e-6)
    # anomalib's default on the same batch: every score >= 1 ties at 1 (the test fails if the raw fields are ignored)
    assert clamped["image_AUROC"] == pytest.approx(auroc_by_ranks(RAW_SCORES.clamp(0, 1), LABELS), abs=1e-6)
    assert clamped["image_AUROC"] == pytest.approx(6 / 9, abs=1e-6)
    assert clamped["pixel_AUROC"] < expected_pixel - 0.01
    # AUPRO on the raw maps equals anomalib's AUPRO given the raw maps directly, and differs from the clamped one
    direct = AUPRO(fields=["anomaly_map", "gt_mask"])
    direct.update(_tested_batch())
    assert raw["pixel_AUPRO"] == pytest.approx(float(direct.compute()), abs=1e-6)
    assert raw["pixel_AUPRO"] != pytest.approx(clamped["pixel_AUPRO"], abs=1e-3)
    # F1 keeps anomalib's thresholded labels: the same value either way
    assert raw["image_F1Score"] == clamped["image_F1Score"]


def test_raw_values_skip_torchmetrics_sigmoid() -> None:
    """Scores above ~17 all become 1.0 through float32's sigmoid: the raw metric must not take that path."""
    metric = on_raw_scores(AnomalibModule.configure_evaluator()).test_metrics[0]
    assert isinstance(metric, AUROC)
    assert metric.fields == [RAW_FIELDS["pred_score"], "gt_label"]
    batch = ImageBatch(image=torch.zeros(6, 3, 4, 4), gt_label=LABELS, pred_score=RAW_SCORES)
    RawScoreKeeper().on_test_batch_end(None, None, batch, batch, 0)
    metric.update(batch)
    assert float(metric.compute()) == pytest.approx(8 / 9, abs=1e-6)
    sigmoid = AUROC(fields=["pred_score", "gt_label"])  # torchmetrics' default: 3 vs 20, 25 and 30 tie at 1.0
    sigmoid.update(ImageBatch(image=torch.zeros(6, 3, 4, 4), gt_label=LABELS, pred_score=RAW_SCORES))
    assert float(sigmoid.compute()) == pytest.approx(7 / 9, abs=1e-6)


def test_anomalygpt_evaluates_raw_scores_and_keeps_them_before_post_processing(weights: dict) -> None:
    evaluator = AnomalyGPT.configure_evaluator(explain=True)
    fields = {metric.name: list(metric.fields) for metric in evaluator.test_metrics}
    assert fields["image_AUROC"] == ["raw_pred_score", "gt_label"]
    assert fields["pixel_AUROC"] == ["raw_anomaly_map", "gt_mask"]
    assert fields["image_F1Score"] == ["pred_label", "gt_label"]
    order = [type(callback) for callback in make_model(**weights).configure_callbacks()]
    assert order.index(RawScoreKeeper) < order.index(PostProcessor)
