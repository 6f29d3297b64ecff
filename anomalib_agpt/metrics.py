"""Metrics for the explanation head, in anomalib's metric style (fields read from the batch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.metrics import AnomalibMetric
from torchmetrics.classification import BinaryAccuracy

from .conversation import is_anomalous_answer


class _AnswerBinaryAccuracy(BinaryAccuracy):
    """Binary accuracy whose predictions are answers: 'Yes' in the text means anomalous."""

    def update(self, explanation: Sequence[str], gt_label: torch.Tensor) -> None:  # type: ignore[override]
        """Turn answers into labels with the original's rule, then count agreements."""
        predicted = torch.tensor([is_anomalous_answer(text) for text in explanation], device=gt_label.device)
        super().update(predicted.long(), gt_label.long())


class AnswerAccuracy(AnomalibMetric, _AnswerBinaryAccuracy):  # type: ignore[misc]
    """Share of images whose answer agrees with the ground-truth label (the original's 'accuracy')."""

    default_fields = ("explanation", "gt_label")
