"""Cut, place and paste one patch, and the soft pixel label of what changed: the geometry of a synthetic anomaly.

A patch is cut from the source where it shows the object, rescaled, placed where its object lands on
the target's object, and Poisson-blended (``cv2.seamlessClone``) in; the label is the logistic of the
disk-median-filtered change. :func:`~anomalib_agpt.training.synthesis.synthesize` draws up to two
patches with these and turns them into a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from anomalib_agpt.training.synthesis_settings import SynthesisSettings

Box = tuple[int, int, int, int]
"""A pasted rectangle in target pixels: ``(top, left, bottom, right)``, bottom/right exclusive."""

_MIN_CLONE_AREA = 50
"""Fewest inner pixels a pasted patch needs; smaller ones are skipped (seamlessClone is unreliable there)."""
_LABEL_MEDIAN = 5
"""Median size that cleans the "changed at all" mask."""
_SOFT_MEDIAN_RADIUS = 5
"""Radius of the disk the change is median-filtered over before the logistic."""


def _pixel_bounds(bounds: tuple[float, float], side: int) -> tuple[int, int]:
    """Half-width bounds in pixels; kept where a patch can still be cut and pasted with a free border."""
    low = min(max(1, round(bounds[0] * side)), (side - 1) // 2)
    high = min(max(low, round(bounds[1] * side)), side - 3)
    return low, high


@dataclass(frozen=True)
class _Paste:
    """One pasted patch: the blended image, where it landed, and where a change may be labelled."""

    image: np.ndarray
    box: Box
    labelled: np.ndarray
    """uint8 0/1 over the box: 0 where both source and target are background (never labelled)."""


def _cut(
    source: np.ndarray,
    settings: SynthesisSettings,
    rng: np.random.Generator,
    bounds: tuple[tuple[int, int], tuple[int, int]],
    source_object: np.ndarray | None,
) -> tuple[int, int, int, int] | None:
    """Where to cut: a rectangle of gamma-distributed half-widths around a random centre (on the object)."""
    height, width = source.shape[:2]
    (low_r, high_r), (low_c, high_c) = bounds
    shape, scale, offset = settings.half_width_gamma
    half_r = int(np.clip((offset + rng.gamma(shape, scale)) * height, low_r, high_r))
    half_c = int(np.clip((offset + rng.gamma(shape, scale)) * width, low_c, high_c))
    for _ in range(settings.attempts):
        row, col = int(rng.integers(low_r, height - low_r)), int(rng.integers(low_c, width - low_c))
        top, bottom = max(row - half_r, 0), min(row + half_r, height)
        left, right = max(col - half_c, 0), min(col + half_c, width)
        if source_object is None or source_object[top:bottom, left:right].mean() > settings.min_object:
            return top, left, bottom, right
    return None


def _rescaled_size(
    size: tuple[int, int],
    settings: SynthesisSettings,
    rng: np.random.Generator,
    bounds: tuple[tuple[int, int], tuple[int, int]],
) -> tuple[int, int]:
    """Rescale by ``N(1, spread)`` clipped to the resize bounds, keeping the aspect ratio within the pixel bounds.

    Both sides stay within the half-width pixel bounds (so a patch never grows past ``high`` pixels a side);
    the width follows the clipped height, and the height is recomputed in case the width was clipped.
    """
    (height, width), ((low_r, high_r), (low_c, high_c)) = size, bounds
    factor = float(np.clip(rng.normal(1.0, settings.resize_spread), *settings.resize_bounds))
    new_height = float(np.clip(factor * height, low_r, high_r))
    new_width = int(np.clip(int(new_height / height * width), low_c, high_c))
    return int(np.clip(int(new_width / width * height), low_r, high_r)), new_width


def _place(
    size: tuple[int, int],
    canvas_size: tuple[int, int],
    settings: SynthesisSettings,
    rng: np.random.Generator,
    patch_object: np.ndarray | None,
    target_object: np.ndarray | None,
) -> tuple[int, int] | None:
    """Top-left of the paste: uniform with a one-pixel border, its object overlapping the target's object.

    With the background rule a place is accepted when more than ``min_overlap`` of the patch's object
    pixels land on target object pixels; after ``attempts`` rejected places the patch is given up.
    """
    (ph, pw), (height, width) = size, canvas_size
    object_pixels = 0
    if patch_object is not None:
        object_pixels = int(np.count_nonzero(patch_object))
        if object_pixels / (ph * pw) <= settings.min_object:
            return None  # no place can ever be accepted
    for _ in range(settings.attempts):
        top = int(rng.integers(ph // 2 + 1, height - ph // 2 - 1)) - ph // 2
        left = int(rng.integers(pw // 2 + 1, width - pw // 2 - 1)) - pw // 2
        if patch_object is None or target_object is None:
            return top, left
        overlap = np.count_nonzero(target_object[top : top + ph, left : left + pw] & patch_object)
        if overlap / object_pixels > settings.min_overlap:
            return top, left
    return None


def _paste(
    canvas: np.ndarray,
    source: np.ndarray,
    settings: SynthesisSettings,
    rng: np.random.Generator,
    objects: tuple[np.ndarray, np.ndarray] | None,
) -> _Paste | None:
    """Cut a patch of ``source``, rescale it and Poisson-blend it into ``canvas``; ``None`` when it fails.

    ``objects`` are the (source, target) object masks of the background rule. A patch fails when no
    place is found within the attempts, or when its inner area is too small for a stable blend.
    """
    height, width = canvas.shape[:2]
    bounds = (_pixel_bounds(settings.width_bounds[0], height), _pixel_bounds(settings.width_bounds[1], width))
    source_object, target_object = objects if objects is not None else (None, None)
    cut = _cut(source, settings, rng, bounds, source_object)
    if cut is None:
        return None
    top, left, bottom, right = cut
    ph, pw = _rescaled_size((bottom - top, right - left), settings, rng, bounds)
    patch = cv2.resize(source[top:bottom, left:right], (pw, ph), interpolation=cv2.INTER_LINEAR)
    patch_object = None
    if source_object is not None:
        patch_object = cv2.resize(source_object[top:bottom, left:right], (pw, ph), interpolation=cv2.INTER_LINEAR)
    place = _place((ph, pw), (height, width), settings, rng, patch_object, target_object)
    if place is None:
        return None
    top, left = place
    box = (top, left, top + ph, left + pw)
    if max(ph - 2, 0) * max(pw - 2, 0) < _MIN_CLONE_AREA:
        return None

    # The whole rectangle is blended (its outermost ring kept as the boundary); the background rule only
    # decides where a change may be labelled. The centre is where the original puts it: with an odd width
    # the blended region sits one pixel right of the rectangle's centre, still inside the rectangle.
    clone_mask = np.zeros((ph, pw), np.uint8)
    clone_mask[1:-1, 1:-1] = 255
    center = (left + pw - pw // 2, top + ph // 2)
    try:
        blended = cv2.seamlessClone(patch, canvas, clone_mask, center, cv2.NORMAL_CLONE)
    except cv2.error:  # pragma: no cover - OpenCV rejects a degenerate region
        return None
    labelled = np.ones((ph, pw), np.uint8)
    if patch_object is not None and target_object is not None:
        labelled = patch_object | target_object[top : top + ph, left : left + pw]
    return _Paste(image=blended, box=box, labelled=labelled)


def _disk(radius: int) -> np.ndarray:
    """Boolean disk footprint of the given radius (``x² + y² <= r²``)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


_DISK = _disk(_SOFT_MEDIAN_RADIUS)


def _soft_label(
    change: np.ndarray, allowed: np.ndarray, boxes: Sequence[Box], settings: SynthesisSettings
) -> np.ndarray:
    """The soft pixel label (H, W) float32 of an RGB ``change``, labelled only where ``allowed``.

    ``change`` is the per-pixel *sum* of the absolute R, G, B changes (three times their mean; medians
    and comparisons commute with that scale). A pixel is labelled when its mean change exceeds
    ``min_change``, cleaned by a 5x5 median; its value is the logistic of the disk-median of the labelled
    change. Nothing here fills holes or drops specks: a patch of similar content gives a ragged or empty
    label, as in AnomalyGPT's own training data.
    """
    height, width = change.shape
    soft = np.zeros((height, width), np.float32)
    labelled = cv2.medianBlur(((change * allowed) > 3 * settings.min_change).astype(np.uint8), _LABEL_MEDIAN)
    if not labelled.any():
        return soft
    kept = change * labelled
    smoothed = np.zeros((height, width), np.float64)
    # The medians are local: a label can only appear within 2 pixels of a box, and needs the change within
    # the disk's radius of it, so each box is filtered on a crop instead of the whole image (far cheaper).
    grow = _LABEL_MEDIAN // 2
    for top, left, bottom, right in boxes:
        rows = slice(max(top - grow, 0), min(bottom + grow, height))
        cols = slice(max(left - grow, 0), min(right + grow, width))
        if not labelled[rows, cols].any():
            continue
        crop_rows = slice(max(rows.start - _SOFT_MEDIAN_RADIUS, 0), min(rows.stop + _SOFT_MEDIAN_RADIUS, height))
        crop_cols = slice(max(cols.start - _SOFT_MEDIAN_RADIUS, 0), min(cols.stop + _SOFT_MEDIAN_RADIUS, width))
        filtered = ndimage.median_filter(kept[crop_rows, crop_cols], footprint=_DISK, mode="nearest")
        smoothed[rows, cols] = filtered[
            rows.start - crop_rows.start : rows.stop - crop_rows.start,
            cols.start - crop_cols.start : cols.stop - crop_cols.start,
        ]
    k, x0 = settings.logistic
    where = labelled.astype(bool)
    soft[where] = 1.0 / (1.0 + np.exp(-k * (smoothed[where] / 3 - x0)))
    return soft
