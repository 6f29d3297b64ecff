"""Pixel losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_agpt.training.loss import dice_loss, focal_loss, pixel_loss


def test_focal_loss_by_hand() -> None:
    # two pixels: p(abnormal) = 0.8 with target 1, p(abnormal) = 0.3 with target 0
    probabilities = torch.tensor([[[[0.2, 0.7]], [[0.8, 0.3]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    s = 1e-5
    p1 = (1 - s) * 0.8 + s * 0.2 + s  # clipped one-hot [s, 1 - s] on [0.2, 0.8]
    p2 = (1 - s) * 0.7 + s * 0.3 + s
    expected = (-((1 - p1) ** 2) * math.log(p1) - (1 - p2) ** 2 * math.log(p2)) / 2
    assert focal_loss(probabilities, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_is_small_for_confident_right_answers() -> None:
    probabilities = torch.tensor([[[[0.0]], [[1.0]]]])
    assert focal_loss(probabilities, torch.tensor([[[1]]])).item() < 1e-8
    assert focal_loss(probabilities, torch.tensor([[[0]]])).item() > 5.0


def test_dice_loss_by_hand() -> None:
    probability = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    target = torch.tensor([[[1, 1], [0, 0]]])
    expected = 1 - (2 * 1.5 + 1) / (1.75 + 2 + 1)
    assert dice_loss(probability, target).item() == pytest.approx(expected)


def test_dice_loss_averages_images() -> None:
    probability = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])
    target = torch.stack([torch.ones(2, 2), torch.ones(2, 2)])
    first, second = 1 - (2 * 4 + 1) / (4 + 4 + 1), 1 - 1 / (0 + 4 + 1)
    assert dice_loss(probability, target).item() == pytest.approx(1 - ((1 - first) + (1 - second)) / 2)


def test_pixel_loss_binarises_at_0_3_and_sums_taps() -> None:
    probabilities = torch.softmax(torch.randn(2, 2, 4, 4), dim=1)
    soft = torch.full((2, 1, 4, 4), 0.31)
    soft[:, :, :2] = 0.29
    target = (soft[:, 0] > 0.3).long()
    one_tap = focal_loss(probabilities, target) + dice_loss(probabilities[:, 1], target)
    assert pixel_loss([probabilities] * 4, soft).item() == pytest.approx(4 * one_tap.item(), rel=1e-6)
