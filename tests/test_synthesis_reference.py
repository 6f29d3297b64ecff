"""The synthetic anomalies follow the original AnomalyGPT generator's distributions (KS distance per statistic).

``tests/fixtures/synthesis_reference`` (see its README) holds, per class, 1000 per-sample statistics of
what the original generator made from twelve fixed images. The product's generator runs on the same
images with the same pairing scheme (its own seed) and every statistic's two-sample Kolmogorov-Smirnov
distance must stay within the reference's tolerance (0.15; two runs of the original differ by ~0.07).
"""

from __future__ import annotations

import json
import math
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from anomalib_agpt.training.synthesis import settings_for, synthesize

REFERENCE = Path(__file__).parent / "fixtures" / "synthesis_reference"


@cache
def _reference() -> dict[str, Any]:
    return json.loads((REFERENCE / "stats.json").read_text())


CLASSES = sorted(_reference()["classes"])


def _images(name: str, count: int) -> list[np.ndarray]:
    """The class's images as (H, W, 3) RGB uint8."""
    return [
        np.ascontiguousarray(cv2.imread(str(REFERENCE / "images" / name / f"{i:02d}.png"))[..., ::-1])
        for i in range(count)
    ]


def _round(value: float) -> float:
    """Six significant digits, as the reference stores its values (NaN stays NaN)."""
    return value if math.isnan(value) else float(f"{value:.6g}")


def _statistics(image: torch.Tensor, mask: torch.Tensor, target: np.ndarray, background: np.ndarray | None) -> dict:
    """The README's per-sample statistics of one sample; ``background``: the target's plain-background pixels."""
    height, width = target.shape[:2]
    produced = np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    soft = mask[0].numpy()
    hard = soft > 0.5
    found = bool(hard.any())
    weak = soft > 0.05
    values = {
        "area": np.count_nonzero(hard) / hard.size,
        "n_components": cv2.connectedComponents(hard.view(np.uint8), connectivity=8)[0] - 1,
        "soft_mean": soft[weak].astype(np.float64).mean() if weak.any() else math.nan,
        "any": float(found),
        "changed": np.count_nonzero(cv2.absdiff(produced, target).any(axis=-1)) / hard.size,
        "bbox_w": math.nan,
        "bbox_h": math.nan,
    }
    if found:
        rows, cols = np.nonzero(hard)
        values["bbox_w"] = (cols.max() - cols.min() + 1) / width
        values["bbox_h"] = (rows.max() - rows.min() + 1) / height
    if background is not None:
        values["on_background"] = np.count_nonzero(background[hard]) / np.count_nonzero(hard) if found else math.nan
    return {name: _round(float(value)) for name, value in values.items()}


def _ks_distance(first: list[float | None], second: list[float | None]) -> float:
    """Two-sample Kolmogorov-Smirnov distance, nulls/NaNs dropped (one side empty, the other not: 1)."""
    a = np.sort([v for v in first if v is not None and not math.isnan(v)])
    b = np.sort([v for v in second if v is not None and not math.isnan(v)])
    if a.size == 0 or b.size == 0:
        return 0.0 if a.size == b.size else 1.0
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def test_ks_distance_matches_its_definition() -> None:
    assert _ks_distance([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0
    assert _ks_distance([0.0, 0.0], [1.0, 1.0]) == 1
    assert _ks_distance([0.0, 1.0], [1.0, 1.0]) == 0.5
    assert _ks_distance([None, 1.0], [math.nan, 1.0, None]) == 0
    assert _ks_distance([None], [1.0]) == 1


@pytest.mark.parametrize("name", CLASSES)
def test_class_settings_are_those_the_reference_was_made_with(name: str) -> None:
    """The reference records the original's arguments per class: ``settings_for`` has the same."""
    args = _reference()["classes"][name]["original_patch_ex_args"]
    settings = settings_for(name)
    assert settings.width_bounds == tuple(tuple(axis) for axis in args["width_bounds_pct"])
    assert settings.logistic == pytest.approx(tuple(args["intensity_logistic_params"]))
    background = args["skip_background"]
    assert settings.skip_background == (None if background is None else tuple(background))
    assert settings.half_width_gamma == (args["gamma_params"][0], args["gamma_params"][1], args["gamma_params"][2])
    assert settings.min_object == args["min_object_pct"]
    assert settings.min_overlap == args["min_overlap_pct"]
    assert settings.second_patch_probability == 0.5  # num_patches 2: the second on a coin flip
    assert settings.resize_bounds == tuple(args.get("resize_bounds", (0.7, 1.3)))  # the generator's default


@pytest.mark.parametrize("name", CLASSES)
def test_synthetic_anomalies_match_the_original_distribution(name: str) -> None:
    reference = _reference()["classes"][name]
    count, tolerance = reference["N"], _reference()["comparison"]["tolerance"]
    settings = settings_for(name)
    images = _images(name, reference["n_images"])
    tensors = [torch.from_numpy(image).permute(2, 0, 1).float() / 255 for image in images]
    # on_background is defined by the reference's own background entry: |mean of R, G, B - brightness| <= tol
    backgrounds: list[np.ndarray | None] = [None] * len(images)
    if "on_background" in reference["stats"]:
        brightness, within = reference["original_patch_ex_args"]["skip_background"]
        backgrounds = [np.abs(image.mean(axis=-1) - brightness) <= within for image in images]
    rng = np.random.default_rng(zlib.crc32(f"product:{name}".encode()))

    ours: dict[str, list[float]] = {statistic: [] for statistic in reference["stats"]}
    for _ in range(count):
        target = int(rng.integers(len(images)))
        source = int(rng.integers(len(images) - 1))
        source += source >= target
        sample = synthesize(tensors[target], tensors[source], settings, rng)
        for statistic, value in _statistics(sample.image, sample.mask, images[target], backgrounds[target]).items():
            ours[statistic].append(value)

    distances = {statistic: _ks_distance(reference["stats"][statistic], ours[statistic]) for statistic in ours}
    report = ", ".join(f"{statistic} {distance:.3f}" for statistic, distance in distances.items())
    print(f"{name}: {report}")
    assert max(distances.values()) <= tolerance, f"{name}: KS distances {report} (tolerance {tolerance})"
