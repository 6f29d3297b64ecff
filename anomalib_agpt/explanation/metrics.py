"""Metrics for the explanation head, in anomalib's metric style (fields read from the batch)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from anomalib.metrics import AnomalibMetric
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy

from anomalib_agpt.explanation.conversation import is_anomalous_answer
from anomalib_agpt.training.synthesis import position_name


class _AnswerBinaryAccuracy(BinaryAccuracy):
    """Binary accuracy whose predictions are answers: 'Yes' in the text means anomalous."""

    def update(self, explanation: Sequence[str], gt_label: torch.Tensor) -> None:  # type: ignore[override]
        """Turn answers into labels with the original's rule, then count agreements."""
        predicted = torch.tensor([is_anomalous_answer(text) for text in explanation], device=gt_label.device)
        super().update(predicted.long(), gt_label.long())


class AnswerAccuracy(AnomalibMetric, _AnswerBinaryAccuracy):  # type: ignore[misc]
    """Share of images whose answer agrees with the ground-truth label (the original's 'accuracy')."""

    default_fields = ("explanation", "gt_label")


_POSITIONS = re.compile(r"\b(top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b")


def named_positions(answer: str) -> list[str]:
    """The 3x3 cells an answer names ('top left', 'center', ...), longest names first."""
    return _POSITIONS.findall(answer)


def mask_cell(mask: torch.Tensor) -> str | None:
    """The 3x3 cell that holds a mask's centroid, named as AnomalyGPT's answers name it."""
    pixels = torch.nonzero(mask.reshape(mask.shape[-2:]) > 0, as_tuple=False).float()
    if pixels.numel() == 0:
        return None
    row, col = pixels.mean(dim=0).tolist()
    return position_name(row, col, mask.shape[-2], mask.shape[-1])


def is_grounded(answer: str, label: int, mask: torch.Tensor | None) -> bool:
    """Normal: answered 'No'. Anomalous: answered 'Yes' AND named the cell of the mask's centroid."""
    if not label:
        return not is_anomalous_answer(answer)
    cell = mask_cell(mask) if mask is not None else None
    return is_anomalous_answer(answer) and cell is not None and cell in named_positions(answer)


class _GroundingRate(Metric):
    """Share of images whose answer is grounded (see :func:`is_grounded`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("grounded", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, explanation: Sequence[str], gt_label: torch.Tensor, gt_mask: torch.Tensor) -> None:  # type: ignore[override]
        """Count grounded answers of a batch."""
        for index, answer in enumerate(explanation):
            self.grounded += int(is_grounded(answer, int(gt_label[index]), gt_mask[index]))
            self.total += 1

    def compute(self) -> torch.Tensor:
        """Grounded answers / answers."""
        return self.grounded.float() / self.total.clamp(min=1)


class ExplanationGrounding(AnomalibMetric, _GroundingRate):  # type: ignore[misc]
    """Share of answers that name the ground-truth defect's 3x3 cell (normal images: answered 'No')."""

    default_fields = ("explanation", "gt_label", "gt_mask")
