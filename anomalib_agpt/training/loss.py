"""AnomalyGPT's pixel losses: focal on the 2-class softmax map plus dice on the abnormal channel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MASK_THRESHOLD = 0.3
"""Synthetic soft masks are binarised at this value before the pixel losses."""


def focal_loss(
    probabilities: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> torch.Tensor:
    """Mean focal loss of ``(B, C, H, W)`` class probabilities against ``(B, H, W)`` class indices.

    The one-hot target is clipped to ``[smooth / (C - 1), 1 - smooth]`` and ``p_t`` gets ``smooth``
    added, so the logarithm stays finite on saturated maps.
    """
    classes = probabilities.shape[1]
    one_hot = nn.functional.one_hot(target.long(), classes).movedim(-1, 1).to(probabilities.dtype)
    one_hot = one_hot.clamp(smooth / (classes - 1), 1.0 - smooth)
    p_t = (one_hot * probabilities).sum(dim=1) + smooth
    return (-((1.0 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_b (2 |P*T| + s) / (|P| + |T| + s)`` over images of ``(B, H, W)`` maps."""
    predicted = probability.flatten(1)
    truth = target.flatten(1).to(predicted.dtype)
    dice = (2 * (predicted * truth).sum(dim=1) + smooth) / (predicted.sum(dim=1) + truth.sum(dim=1) + smooth)
    return 1.0 - dice.mean()


def pixel_loss(tap_probabilities: Sequence[torch.Tensor], soft_mask: torch.Tensor) -> torch.Tensor:
    """Sum over taps of focal(2-class map) + dice(abnormal channel), mask binarised at 0.3.

    Args:
        tap_probabilities: Per tap, ``(B, 2, H, W)`` softmax maps [normal, abnormal].
        soft_mask: ``(B, 1, H, W)`` or ``(B, H, W)`` synthetic mask in [0, 1].

    """
    target = (soft_mask.reshape(soft_mask.shape[0], *soft_mask.shape[-2:]) > MASK_THRESHOLD).long()
    return sum(
        (
            focal_loss(probabilities, target) + dice_loss(probabilities[:, 1], target)
            for probabilities in tap_probabilities
        ),
        start=torch.zeros((), device=soft_mask.device),
    )
