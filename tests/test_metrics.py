"""Answer accuracy and explanation grounding."""

from __future__ import annotations

import torch
from anomalib.data import ImageBatch

from anomalib_agpt.explanation.metrics import (
    AnswerAccuracy,
    ExplanationGrounding,
    is_grounded,
    mask_cell,
    named_positions,
)

YES_TOP_LEFT = "Yes, there is an anomaly in the image, at the top left of the image."
NO = "No, there is no anomaly in the image."


def square_mask(row: int, col: int, size: int = 90) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, row : row + 6, col : col + 6] = 1
    return mask


def test_named_positions_prefer_two_word_cells() -> None:
    assert named_positions(YES_TOP_LEFT) == ["top left"]
    two = "Yes, there are 2 anomalies in the image, they are at the top and bottom right of the image."
    assert named_positions(two) == ["top", "bottom right"]
    assert named_positions(NO) == []


def test_mask_cell_uses_the_centroid() -> None:
    assert mask_cell(square_mask(5, 5)) == "top left"
    assert mask_cell(square_mask(42, 42)) == "center"
    assert mask_cell(square_mask(80, 40)) == "bottom"
    assert mask_cell(torch.zeros(1, 8, 8)) is None


def test_grounding_rules() -> None:
    assert is_grounded(YES_TOP_LEFT, 1, square_mask(5, 5))
    assert not is_grounded(YES_TOP_LEFT, 1, square_mask(80, 80))  # right verdict, wrong place
    assert not is_grounded(NO, 1, square_mask(5, 5))
    assert is_grounded(NO, 0, torch.zeros(1, 90, 90))
    assert not is_grounded(YES_TOP_LEFT, 0, torch.zeros(1, 90, 90))


def test_metrics_over_a_batch() -> None:
    masks = torch.stack([square_mask(5, 5)[0], square_mask(80, 80)[0], torch.zeros(90, 90), torch.zeros(90, 90)])
    batch = ImageBatch(
        image=torch.rand(4, 3, 90, 90),
        gt_label=torch.tensor([1, 1, 0, 0]),
        gt_mask=masks.bool(),
        explanation=[YES_TOP_LEFT, YES_TOP_LEFT, NO, YES_TOP_LEFT],
    )
    grounding, accuracy = ExplanationGrounding(), AnswerAccuracy()
    grounding.update(batch)
    accuracy.update(batch)
    assert grounding.compute().item() == 0.5  # 1st and 3rd
    assert accuracy.compute().item() == 0.75  # all but the 4th
    assert grounding.name == "ExplanationGrounding"
