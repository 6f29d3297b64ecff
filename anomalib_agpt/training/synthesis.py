"""NSA-style synthetic anomalies: the training signal AnomalyGPT learns from normal images only.

Why: AnomalyGPT is trained without real defects. A patch cut from *another* normal image is
Poisson-blended (``cv2.seamlessClone`` with ``NORMAL_CLONE``) into the target, so the seam is
invisible and only the patch's *content* is out of place ("natural synthetic anomalies"). The
pixel label is a soft mask: how much the blend changed each pixel, squashed by a logistic and
limited to the pasted rectangles. The text label names where the anomalies are, in the same
sentences the LLM is taught to answer with.

Every random draw of a sample comes from one ``numpy.random.Generator``; ``SyntheticPairs``
seeds it with ``(seed, epoch, index)`` so a sample never depends on loading order, worker or
process, which is what lets a resumed run reproduce an uninterrupted one exactly.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from anomalib_agpt.errors import OptionError, OptionTypeError
from anomalib_agpt.explanation.conversation import NORMAL_ANSWER

__all__ = [
    "SynthesisSettings",
    "SyntheticPairs",
    "SyntheticSample",
    "answer_for",
    "collate_pairs",
    "object_settings",
    "position_name",
    "synthesize",
    "texture_settings",
]

Box = tuple[int, int, int, int]
"""A pasted rectangle in target pixels: ``(top, left, bottom, right)``, bottom/right exclusive."""

_MARGIN = 1
"""Pixels kept free at the image border: seamlessClone needs a ring around the mask."""
_MIN_PATCH = 8
"""Smallest pasted side: below it seamlessClone's inner region is empty and nothing changes."""
_MEDIAN_KSIZE = 5

_ROWS = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))


# --------------------------------------------------------------------------------------
# Text labels
# --------------------------------------------------------------------------------------


def _third(fraction: float) -> int:
    """0, 1 or 2: which third of a side a relative coordinate lies in (boundaries belong to the lower third)."""
    if fraction <= 1 / 3:
        return 0
    if fraction <= 2 / 3:
        return 1
    return 2


def position_name(row: float, col: float, height: int, width: int) -> str:
    """Name the 3x3 cell of a point, in the words the LLM answers with (e.g. "top left", "center")."""
    if height <= 0 or width <= 0:
        raise OptionError(f"height and width must be positive, got {height}x{width}")
    return _ROWS[_third(row / height)][_third(col / width)]


def answer_for(centers: Sequence[tuple[float, float]], height: int, width: int) -> str:
    """The assistant's answer for anomalies centred at ``centers`` ((row, col) pixels); none -> normal."""
    if not centers:
        return NORMAL_ANSWER
    names = [position_name(row, col, height, width) for row, col in centers]
    if len(names) == 1:
        return f"Yes, there is an anomaly in the image, at the {names[0]} of the image."
    unique = list(dict.fromkeys(names))  # a place is named once, even if two anomalies share it
    places = unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + f" and {unique[-1]}"
    return f"Yes, there are {len(names)} anomalies in the image, they are at the {places} of the image."


# --------------------------------------------------------------------------------------
# Settings and samples
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisSettings:
    """How patches are drawn and labelled; frozen so one instance can be shared by all workers.

    Attributes:
        width_bounds: Patch width and height as fractions of the image's width and height, drawn independently.
        resize_bounds: Range of the factor the cut patch is rescaled by before pasting.
        second_patch_probability: Chance of pasting a second patch.
        skip_background: ``(intensity, tolerance)`` in 0..255 grey: a patch centre must not land on target
            pixels within ``tolerance`` of ``intensity`` (objects on a plain background); ``None`` disables it.
        logistic: ``(k, x0)`` of the soft mask ``1 / (1 + exp(-k * (diff - x0)))``, ``diff`` in 0..255 grey.

    """

    width_bounds: tuple[float, float] = (0.05, 0.25)
    resize_bounds: tuple[float, float] = (0.7, 1.3)
    second_patch_probability: float = 0.5
    skip_background: tuple[int, int] | None = None
    logistic: tuple[float, float] = (1 / 12, 24)

    def __post_init__(self) -> None:
        """Reject settings that would silently produce empty or out-of-image patches."""
        low, high = self.width_bounds
        if not 0 < low <= high <= 1:
            raise OptionError(f"width_bounds must satisfy 0 < low <= high <= 1, got {self.width_bounds}")
        low, high = self.resize_bounds
        if not 0 < low <= high:
            raise OptionError(f"resize_bounds must satisfy 0 < low <= high, got {self.resize_bounds}")
        if not 0 <= self.second_patch_probability <= 1:
            raise OptionError(f"second_patch_probability must be in [0, 1], got {self.second_patch_probability}")
        if self.skip_background is not None:
            intensity, tolerance = self.skip_background
            if not 0 <= intensity <= 255 or tolerance < 0:
                raise OptionError(f"skip_background must be (0..255, >= 0), got {self.skip_background}")
        if self.logistic[0] <= 0:
            raise OptionError(f"logistic k must be positive, got {self.logistic}")


def texture_settings() -> SynthesisSettings:
    """Textures: any place is foreground, and a stronger rescale still looks like the texture."""
    return SynthesisSettings(resize_bounds=(0.5, 2.0))


def object_settings(skip_background: tuple[int, int] | None = None) -> SynthesisSettings:
    """Objects: milder rescale, and optionally keep anomalies on the object rather than the background."""
    return SynthesisSettings(resize_bounds=(0.7, 1.3), skip_background=skip_background)


@dataclass
class SyntheticSample:
    """One synthetic anomaly: image, soft pixel label, anomaly centres and the answer they imply."""

    image: torch.Tensor
    """(3, H, W) float in [0, 1]; equal to the target outside the changed pixels."""
    mask: torch.Tensor
    """(1, H, W) float in [0, 1]; zero outside ``boxes``."""
    centers: list[tuple[float, float]]
    """(row, col) pixels: patch 1's centre, then (if any) the centre of the box around both patches."""
    answer: str
    boxes: list[Box] = field(default_factory=list)
    """The pasted rectangles ``(top, left, bottom, right)``, bottom/right exclusive."""


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


def _to_bgr_uint8(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB float [0, 1] -> (H, W, 3) BGR uint8, the layout seamlessClone works on."""
    return np.ascontiguousarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)[..., ::-1])


def _destination(
    rng: np.random.Generator, size: tuple[int, int], image_size: tuple[int, int], foreground: np.ndarray | None
) -> tuple[int, int]:
    """Top-left of a pasted patch: uniform over places inside the margin, centre on foreground if possible.

    Why direct sampling: drawing uniformly among the foreground-centred places has the same distribution
    as retrying until a centre is on the object, but needs no retry bound and never gives up when a
    valid place exists; with no valid place at all it falls back to any place (accepts background).
    """
    (ph, pw), (height, width) = size, image_size
    rows, cols = height - 2 * _MARGIN - ph + 1, width - 2 * _MARGIN - pw + 1
    if foreground is not None:
        # foreground at each candidate's centre pixel (top + ph // 2, left + pw // 2)
        window = foreground[_MARGIN + ph // 2 : _MARGIN + ph // 2 + rows, _MARGIN + pw // 2 : _MARGIN + pw // 2 + cols]
        allowed = np.flatnonzero(window)
        if allowed.size:
            row, col = divmod(int(allowed[rng.integers(allowed.size)]), cols)
            return _MARGIN + row, _MARGIN + col
    return _MARGIN + int(rng.integers(rows)), _MARGIN + int(rng.integers(cols))


def _paste(
    canvas: np.ndarray,
    source: np.ndarray,
    settings: SynthesisSettings,
    rng: np.random.Generator,
    foreground: np.ndarray | None,
) -> tuple[np.ndarray, Box]:
    """Cut a random patch from ``source``, rescale it and Poisson-blend it at a random place of ``canvas``."""
    height, width = canvas.shape[:2]
    cut_h = int(np.clip(round(rng.uniform(*settings.width_bounds) * height), 1, height))
    cut_w = int(np.clip(round(rng.uniform(*settings.width_bounds) * width), 1, width))
    src_top = int(rng.integers(height - cut_h + 1))
    src_left = int(rng.integers(width - cut_w + 1))
    factor = rng.uniform(*settings.resize_bounds)
    # Clamp: at least big enough for seamlessClone to change something, at most the image minus its margin.
    ph = int(np.clip(round(cut_h * factor), _MIN_PATCH, height - 2 * _MARGIN))
    pw = int(np.clip(round(cut_w * factor), _MIN_PATCH, width - 2 * _MARGIN))
    patch = cv2.resize(
        source[src_top : src_top + cut_h, src_left : src_left + cut_w], (pw, ph), interpolation=cv2.INTER_LINEAR
    )
    top, left = _destination(rng, (ph, pw), (height, width), foreground)

    # Source and destination of the same size, the mask at the destination: with the clone centre at the
    # mask's centre, OpenCV maps the mask's bounding box onto itself, so the patch lands exactly at the box.
    placed = canvas.copy()
    placed[top : top + ph, left : left + pw] = patch
    mask = np.zeros((height, width), np.uint8)
    mask[top : top + ph, left : left + pw] = 255
    blended = cv2.seamlessClone(placed, canvas, mask, (left + pw // 2, top + ph // 2), cv2.NORMAL_CLONE)
    return blended, (top, left, top + ph, left + pw)


def _box_center(box: Box) -> tuple[float, float]:
    """Continuous centre (row, col) of a half-open box."""
    top, left, bottom, right = box
    return (top + bottom) / 2, (left + right) / 2


def synthesize(
    target: torch.Tensor, source: torch.Tensor, settings: SynthesisSettings, rng: np.random.Generator
) -> SyntheticSample:
    """Paste one or two patches of ``source`` into ``target`` and label them.

    Args:
        target: (3, H, W) RGB float image in [0, 1] that receives the anomaly.
        source: (3, H', W') RGB float image in [0, 1] the patches are cut from; resized to (H, W) first.
        settings: How patches are drawn and labelled.
        rng: The only randomness used, so equal generator states give equal samples.

    """
    _check_image(target, "target")
    _check_image(source, "source")
    height, width = target.shape[1:]
    if min(height, width) < _MIN_PATCH + 2 * _MARGIN:
        raise OptionError(f"target must be at least {_MIN_PATCH + 2 * _MARGIN} pixels a side, got {height}x{width}")

    target_rgb = _to_numpy(target)
    original = _to_bgr_uint8(target_rgb)
    src = _to_bgr_uint8(_to_numpy(source))
    if src.shape[:2] != (height, width):
        src = cv2.resize(src, (width, height), interpolation=cv2.INTER_LINEAR)
    grey = cv2.cvtColor(original, cv2.COLOR_BGR2GRAY)
    foreground = None
    if settings.skip_background is not None:
        intensity, tolerance = settings.skip_background
        foreground = np.abs(grey.astype(np.int16) - int(intensity)) > tolerance

    n_patches = 2 if rng.random() < settings.second_patch_probability else 1
    blended, boxes = original, []
    for _ in range(n_patches):
        blended, box = _paste(blended, src, settings, rng, foreground)
        boxes.append(box)

    diff = cv2.medianBlur(cv2.absdiff(cv2.cvtColor(blended, cv2.COLOR_BGR2GRAY), grey), _MEDIAN_KSIZE)
    k, x0 = settings.logistic
    soft = 1.0 / (1.0 + np.exp(-k * (diff.astype(np.float32) - np.float32(x0))))
    inside = np.zeros((height, width), bool)
    for top, left, bottom, right in boxes:
        inside[top:bottom, left:right] = True
    soft = np.where(inside, soft, 0.0).astype(np.float32)

    # Add the blend's change instead of using the 8-bit result: unchanged pixels keep the target's exact
    # float values, so the anomalous image never differs from its normal twin by quantisation alone.
    delta = (blended.astype(target_rgb.dtype) - original.astype(target_rgb.dtype))[..., ::-1] / 255
    image_rgb = np.where(delta != 0, np.clip(target_rgb + delta, 0, 1), target_rgb)
    image = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1))).to(target.device, target.dtype)

    centers = [_box_center(boxes[0])]
    if len(boxes) == 2:
        # As the original labels it: the second place is the middle of the box around both patches.
        union = (
            min(boxes[0][0], boxes[1][0]),
            min(boxes[0][1], boxes[1][1]),
            max(boxes[0][2], boxes[1][2]),
            max(boxes[0][3], boxes[1][3]),
        )
        centers.append(_box_center(union))
    mask = torch.from_numpy(soft)[None].to(target.device)
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
