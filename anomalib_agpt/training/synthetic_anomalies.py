"""NSA-style synthetic anomalies: the training signal AnomalyGPT learns from normal images only.

Why: AnomalyGPT is trained without real defects. A patch cut from *another* normal image is
Poisson-blended (``cv2.seamlessClone`` with ``NORMAL_CLONE``) into the target, so the seam is
invisible and only the patch's *content* is out of place ("natural synthetic anomalies"). This
module draws them from the same distributions as AnomalyGPT's own training data (checked against
statistics of the original generator's output by ``tests/test_synthesis_reference.py``):

* up to two patches, the first always, the second on a coin flip;
* half-widths ``0.03 + Gamma(2, 0.05)`` of the side, clipped to the class's bounds; the cut patch
  is rescaled by ``N(1, 0.5)`` clipped to the class's resize bounds and to the same pixel bounds;
* objects on a plain background (the class's ``(brightness, tolerance)``) are cut where the source
  shows the object and pasted where more than a quarter of it lands on the target's object;
* the pixel label is the logistic, with the class's ``(k, x0)``, of the disk-median-filtered mean
  absolute RGB change, only where that change exceeds 1; it is often ragged and sometimes empty
  although the text label names a place, exactly like the original's;
* the text label names where the anomalies are, in the sentences the LLM is taught to answer with.

Per-class settings come from :func:`settings_for` (``synthesis_settings``). Every random draw of a
sample comes from one ``numpy.random.Generator``; ``SyntheticPairs`` seeds it with
``(seed, epoch, index)`` so a sample never depends on loading order, worker or process, which is
what lets a resumed run reproduce an uninterrupted one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from anomalib_agpt.errors import OptionError, OptionTypeError
from anomalib_agpt.explanation.positions import answer_for
from anomalib_agpt.training.patch_blending import Box, _paste, _soft_label
from anomalib_agpt.training.synthesis_settings import (
    SynthesisSettings,
)

__all__ = ["SyntheticSample", "synthesize"]

_MIN_SIDE = 10
"""Smallest target side: room for a patch with a free one-pixel border on both sides."""
_OBJECT_MEDIAN = 7
"""Median size that cleans the background rule's object mask."""

# --------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------


@dataclass
class SyntheticSample:
    """One synthetic anomaly: image, soft pixel label, anomaly centres and the answer they imply."""

    image: torch.Tensor
    """(3, H, W) float in [0, 1]; equal to the target outside ``boxes``."""
    mask: torch.Tensor
    """(1, H, W) float in [0, 1]; zero farther than 2 pixels from ``boxes``, often ragged, sometimes empty."""
    centers: list[tuple[float, float]]
    """(row, col) pixels: patch 1's centre, then (if any) the centre of the box around both patches."""
    answer: str
    boxes: list[Box] = field(default_factory=list)
    """The pasted rectangles ``(top, left, bottom, right)``, bottom/right exclusive; none when every patch failed."""


# --------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------


def _check_image(image: torch.Tensor, name: str) -> None:
    """Fail early with a clear message instead of deep inside OpenCV."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise OptionError(f"{name} must be a (3, H, W) tensor, got {shape}")
    if not image.is_floating_point():
        raise OptionTypeError(f"{name} must be a float tensor in [0, 1], got {image.dtype}")


def _to_numpy(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) RGB numpy array (float32 unless float64); numpy is cheaper on small images."""
    image = image.detach().cpu()
    if image.dtype != torch.float64:
        image = image.float()
    return image.permute(1, 2, 0).numpy()


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float [0, 1] -> uint8 by ``round(x * 255)``, the 8-bit image the generator works on."""
    return np.ascontiguousarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def _channel_sum(image: np.ndarray) -> np.ndarray:
    """(H, W) uint16 sum of the R, G, B values of a uint8 image (adding planes beats a last-axis reduction)."""
    return image[..., 0].astype(np.uint16) + image[..., 1] + image[..., 2]


def _object_mask(image: np.ndarray, background: tuple[int, int]) -> np.ndarray:
    """uint8 0/1: pixels whose mean of R, G, B is farther than the tolerance from the background brightness.

    A 7x7 median removes the salt and pepper that a hard threshold leaves on texture near the tolerance.
    Compared as sums of R, G, B (three times each side), which is exact and cheaper than a float mean.
    """
    brightness, tolerance = background
    total = _channel_sum(image).astype(np.int32)
    return cv2.medianBlur((np.abs(total - 3 * brightness) > 3 * tolerance).astype(np.uint8), _OBJECT_MEDIAN)


def _box_center(box: Box) -> tuple[float, float]:
    """Continuous centre (row, col) of a half-open box."""
    top, left, bottom, right = box
    return (top + bottom) / 2, (left + right) / 2


def _centers(boxes: Sequence[Box]) -> list[tuple[float, float]]:
    """Centre of the first box, then of the box around the first two (as the original labels a second anomaly)."""
    centers = []
    for count in range(1, len(boxes) + 1):
        union = (
            min(box[0] for box in boxes[:count]),
            min(box[1] for box in boxes[:count]),
            max(box[2] for box in boxes[:count]),
            max(box[3] for box in boxes[:count]),
        )
        centers.append(_box_center(union))
    return centers


def synthesize(
    target: torch.Tensor, source: torch.Tensor, settings: SynthesisSettings, rng: np.random.Generator
) -> SyntheticSample:
    """Paste up to two patches of ``source`` into ``target`` and label them, as AnomalyGPT's training does.

    The first patch is always attempted, the second with ``settings.second_patch_probability``; a patch
    that finds no place (background rule) or is too small to blend is skipped, so a sample may have no
    anomaly at all (then its answer is the normal one). The mask is the soft label of what changed: it
    may be ragged or empty even when the answer names a place (a patch much like what it covers).

    Args:
        target: (3, H, W) RGB float image in [0, 1] that receives the anomaly.
        source: (3, H', W') RGB float image in [0, 1] the patches are cut from; resized to (H, W) first.
        settings: How patches are drawn and labelled (:func:`settings_for` gives a class's own).
        rng: The only randomness used, so equal generator states give equal samples.

    """
    _check_image(target, "target")
    _check_image(source, "source")
    height, width = target.shape[1:]
    if min(height, width) < _MIN_SIDE:
        raise OptionError(f"target must be at least {_MIN_SIDE} pixels a side, got {height}x{width}")

    target_rgb = _to_numpy(target)
    original = _to_uint8(target_rgb)
    src = _to_uint8(_to_numpy(source))
    if src.shape[:2] != (height, width):
        src = cv2.resize(src, (width, height), interpolation=cv2.INTER_LINEAR)
    objects = None
    if settings.skip_background is not None:
        objects = (_object_mask(src, settings.skip_background), _object_mask(original, settings.skip_background))

    blended, boxes = original, []
    allowed = np.zeros((height, width), np.uint8)
    for attempt in range(2):
        if attempt and rng.random() >= settings.second_patch_probability:
            continue
        pasted = _paste(blended, src, settings, rng, objects)
        if pasted is None:
            continue
        blended = pasted.image
        top, left, bottom, right = pasted.box
        allowed[top:bottom, left:right] = pasted.labelled  # a later patch decides over its own rectangle
        boxes.append(pasted.box)

    change = _channel_sum(cv2.absdiff(blended, original))
    mask = torch.from_numpy(_soft_label(change, allowed, boxes, settings))[None].to(target.device)

    # Add the blend's change instead of using the 8-bit result: unchanged pixels keep the target's exact
    # float values, so the anomalous image never differs from its normal twin by quantisation alone.
    # Only the boxes can change (seamlessClone writes inside the rectangle it is given).
    image = target.detach().clone()
    if boxes:
        rows = slice(min(box[0] for box in boxes), max(box[2] for box in boxes))
        cols = slice(min(box[1] for box in boxes), max(box[3] for box in boxes))
        dtype = target_rgb.dtype
        delta = (blended[rows, cols].astype(dtype) - original[rows, cols].astype(dtype)) / 255
        before = target_rgb[rows, cols]
        after = np.where(delta != 0, np.clip(before + delta, 0, 1), before)
        image[:, rows, cols] = torch.from_numpy(np.ascontiguousarray(after.transpose(2, 0, 1))).to(image)

    centers = _centers(boxes)
    return SyntheticSample(
        image=image, mask=mask, centers=centers, answer=answer_for(centers, height, width), boxes=boxes
    )


"""Names of :mod:`~anomalib_agpt.training.synthetic_pairs` that are imported from here too."""
