"""Threshold-free metrics on raw scores and maps, as the original and the AD papers compute them.

anomalib's ``PostProcessor`` maps scores and maps to ``((x - t) / (max - min) + 0.5).clamp(0, 1)`` around
the F1 threshold ``t`` before its ``Evaluator`` sees them: whatever the clamp ties moves AUROC, AUPR and
AUPRO. :class:`RawScoreKeeper` runs before the post-processor and keeps each batch's raw values in fields of
their own; :func:`on_raw_scores` points an evaluator's ranking metrics at those fields. F1 and the other
threshold metrics keep reading anomalib's thresholded fields.
"""

from __future__ import annotations

from typing import Any

from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from lightning.pytorch import Callback

RAW_FIELDS = {"pred_score": "raw_pred_score", "anomaly_map": "raw_anomaly_map"}
"""Batch field -> the field that keeps its value from before post-processing."""

RANKING_METRICS = (AUROC, AUPR, AUPRO, F1Max)
"""anomalib metrics whose value depends only on the order of the scores (no threshold of anomalib's)."""


def keep_raw_scores(batch: Any) -> None:  # noqa: ANN401 - any anomalib batch
    """Copy ``pred_score`` / ``anomaly_map`` into the raw fields (the post-processor assigns new tensors)."""
    for name, raw_name in RAW_FIELDS.items():
        value = getattr(batch, name, None)
        if value is not None:
            setattr(batch, raw_name, value)


class RawScoreKeeper(Callback):
    """Keeps the raw scores and maps of every evaluated batch; must run before the post-processor.

    Trainer callbacks run before a model's own (``configure_callbacks``), so an ``Engine(callbacks=[...])``
    instance serves any anomalib model; AnomalyGPT puts one ahead of its post-processor itself.
    """

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        """Validation metrics read raw values too."""
        keep_raw_scores(outputs)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        """Test metrics read the raw values."""
        keep_raw_scores(outputs)

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        """Predictions carry their raw score beside the normalised one."""
        keep_raw_scores(outputs)


def on_raw_scores(evaluator: Evaluator) -> Evaluator:
    """Point ``evaluator``'s ranking metrics (AUROC, AUPR, AUPRO, F1Max) at the raw fields, in place.

    Their curves take the values as they are: torchmetrics would otherwise put values outside [0, 1]
    through a sigmoid, batch by batch, and float32's sigmoid ties every score above ~17.
    """
    for metric in [*evaluator.val_metrics, *evaluator.test_metrics]:
        if not isinstance(metric, RANKING_METRICS):
            continue
        metric.fields = [RAW_FIELDS.get(field, field) for field in metric.fields]
        curve = metric.precision_recall_curve if isinstance(metric, F1Max) else metric
        if hasattr(curve, "normalization"):
            curve.normalization = None
    return evaluator
