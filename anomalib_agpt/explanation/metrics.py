"""Metrics for the explanation head, in anomalib's metric style (fields read from the batch)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
from anomalib.metrics import AnomalibMetric
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy

from anomalib_agpt.explanation.conversation import is_anomalous_answer
from anomalib_agpt.explanation.positions import position_name

AccuracyRule = Literal["anomalib", "paper"]


def answer_is_right(answer: str, label: int, rule: AccuracyRule = "anomalib") -> bool:
    """Whether an answer agrees with the label.

    ``anomalib``: 'Yes' in the answer means anomalous, anything else normal (the model's own decision
    rule). ``paper``: the original evaluation's count: a normal image is right when 'No' is in the
    answer, an anomalous one when 'Yes' is (an answer with neither is wrong either way).
    """
    if rule == "paper":
        return "Yes" in answer if label else "No" in answer
    return is_anomalous_answer(answer) == bool(label)


class _AnswerBinaryAccuracy(BinaryAccuracy):
    """Binary accuracy whose predictions are answers, counted by :func:`answer_is_right`."""

    def __init__(self, rule: AccuracyRule = "anomalib", **kwargs) -> None:
        super().__init__(**kwargs)
        self.rule = rule

    def update(self, explanation: Sequence[str], gt_label: torch.Tensor) -> None:  # type: ignore[override]
        """Count answers that agree with the label (a wrong answer counts as the other label)."""
        labels = gt_label.long()
        right = torch.tensor(
            [answer_is_right(text, int(label), self.rule) for text, label in zip(explanation, labels, strict=True)],
            device=gt_label.device,
        )
        super().update(torch.where(right, labels, 1 - labels), labels)


class AnswerAccuracy(AnomalibMetric, _AnswerBinaryAccuracy):  # type: ignore[misc]
    """Share of images whose answer agrees with the ground-truth label (``rule``: see :func:`answer_is_right`)."""

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
