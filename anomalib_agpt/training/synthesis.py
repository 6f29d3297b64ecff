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

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from anomalib_agpt.errors import OptionError, OptionTypeError
from anomalib_agpt.explanation.conversation import NORMAL_ANSWER
from anomalib_agpt.explanation.positions import answer_for, position_name
from anomalib_agpt.training.synthesis_settings import (
    MVTEC_AD_CLASSES,
    VISA_CLASSES,
    SynthesisSettings,
    normalise_class_name,
    object_settings,
    settings_for,
    texture_settings,
)

__all__ = [
    "MVTEC_AD_CLASSES",
    "VISA_CLASSES",
    "SynthesisSettings",
    "SyntheticPairs",
    "SyntheticSample",
    "answer_for",
    "collate_pairs",
    "normalise_class_name",
    "object_settings",
    "position_name",
    "settings_for",
    "synthesize",
    "texture_settings",
]

Box = tuple[int, int, int, int]
"""A pasted rectangle in target pixels: ``(top, left, bottom, right)``, bottom/right exclusive."""

_MIN_SIDE = 10
"""Smallest target side: room for a patch with a free one-pixel border on both sides."""
_MIN_CLONE_AREA = 50
"""Fewest inner pixels a pasted patch needs; smaller ones are skipped (seamlessClone is unreliable there)."""
_OBJECT_MEDIAN = 7
"""Median size that cleans the background rule's object mask."""
_LABEL_MEDIAN = 5
"""Median size that cleans the "changed at all" mask."""
_SOFT_MEDIAN_RADIUS = 5
"""Radius of the disk the change is median-filtered over before the logistic."""

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


# --------------------------------------------------------------------------------------
# Dataset wrapper
# --------------------------------------------------------------------------------------


def _item_image(item: Any) -> torch.Tensor:  # noqa: ANN401 - any dataset item type is accepted
    """The image of a dataset item: a tensor itself, a mapping's "image", or an object's ``.image``."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, Mapping):
        return item["image"]
    image = getattr(item, "image", None)
    if image is None:
        raise OptionTypeError(f"dataset items must be tensors, mappings with 'image' or have .image, got {type(item)}")
    return image


def _pick_source(index: int, length: int, rng: np.random.Generator) -> int:
    """Uniformly one of the *other* indices (the item itself only when it is alone)."""
    if length <= 1:
        return index
    other = int(rng.integers(length - 1))
    return other + 1 if other >= index else other


class SyntheticPairs(Dataset):
    """Turn a dataset of normal images into (normal, synthetic anomalous) training pairs.

    Why pairs: the trainer shows the LLM both twins, so it learns to answer "no" and "yes, at ..."
    about the same object. All randomness of item ``index`` comes from
    ``numpy.random.default_rng([seed, epoch, index])``, so items are reproducible in any order, in
    any worker and after a resume. Call ``set_epoch`` before each epoch; with ``persistent_workers``
    the workers keep their own copy, so recreate the loader (or its iterator) to pass the epoch on.
    """

    def __init__(
        self,
        dataset: Any,  # noqa: ANN401 - any map-style dataset with image items
        settings: SynthesisSettings | Callable[[int], SynthesisSettings],
        seed: int = 0,
    ) -> None:
        if seed < 0:
            raise OptionError(f"seed must be non-negative, got {seed}")
        self.dataset = dataset
        self.settings = settings
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh anomalies for a new epoch (still reproducible per epoch)."""
        if epoch < 0:
            raise OptionError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _settings_for(self, index: int) -> SynthesisSettings:
        """Settings may depend on the item (e.g. its category): a callable gets the index."""
        if isinstance(self.settings, SynthesisSettings):
            return self.settings
        return self.settings(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        length = len(self)
        index = operator.index(index)
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f"index {index} out of range for {length} items")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        target = _item_image(self.dataset[index])
        source = _item_image(self.dataset[_pick_source(index, length, rng)])
        sample = synthesize(target, source, self._settings_for(index), rng)
        return {
            "normal_image": target,
            "anomalous_image": sample.image,
            "mask": sample.mask,
            "answer": sample.answer,
            "normal_answer": NORMAL_ANSWER,
            "centers": sample.centers,
            "index": index,
        }


def collate_pairs(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch ``SyntheticPairs`` items: images and masks stacked, text and centres kept as lists."""
    if not samples:
        raise OptionError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif key == "index":
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch
