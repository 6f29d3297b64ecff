"""The pre-processing is PIL's, in both resize modes, and checkpoints of 0.1 keep working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from PIL import Image
from torchvision import tv_tensors

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.model.pre_processing import ClipResize

from .conftest import FIXTURES, grouped, make_model

SIDE = 224
LEGACY = Path(__file__).parent / "fixtures" / "checkpoints_v0_1"


def pil_reference(image: np.ndarray, crop: bool) -> np.ndarray:
    """What the original does: PIL bicubic on the 8-bit image, then torchvision's centre crop."""
    height, width = image.shape[:2]
    if crop:
        short, long = min(height, width), max(height, width)
        resized = (SIDE, int(SIDE * long / short)) if height == short else (int(SIDE * long / short), SIDE)
    else:
        resized = (SIDE, SIDE)
    pil = Image.fromarray(image).resize((resized[1], resized[0]), Image.BICUBIC)
    top, left = round((resized[0] - SIDE) / 2), round((resized[1] - SIDE) / 2)
    return np.asarray(pil.crop((left, top, left + SIDE, top + SIDE)))


@pytest.mark.parametrize("crop", [True, False], ids=["crop", "squash"])
@pytest.mark.parametrize("size", [(900, 900), (768, 1024), (1024, 768), (64, 64), (300, 190), (20, 1000)])
def test_resize_equals_pil_on_8_bit_images(size: tuple[int, int], crop: bool) -> None:
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = pil_reference(image, crop)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    ours = ClipResize(SIDE, crop=crop)(tensor)
    assert ours.shape == (3, SIDE, SIDE)
    np.testing.assert_array_equal(np.round(ours.permute(1, 2, 0).numpy() * 255).astype(np.uint8), expected)


def test_masks_take_nearest_neighbour_and_the_same_crop() -> None:
    mask = torch.zeros(1, 300, 600, dtype=torch.bool)
    mask[:, :, 300:] = True  # right half
    resized = ClipResize(SIDE, crop=True)(tv_tensors.Mask(mask))
    assert isinstance(resized, tv_tensors.Mask)
    assert resized.dtype == torch.bool
    # 300x600 -> 224x448, centre 224 columns from 112: the boundary (column 224 of 448) lands at 112
    assert resized.shape == (1, SIDE, SIDE)
    assert not resized[..., :112].any()
    assert resized[..., 112:].all()


def test_uint8_images_stay_uint8_with_the_same_levels() -> None:
    image = torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)
    resize = ClipResize(SIDE, crop=True)
    as_uint8 = resize(image)
    assert as_uint8.dtype == torch.uint8
    torch.testing.assert_close(as_uint8.float() / 255, resize(image.float() / 255), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "k_shot"), [("zero_shot.ckpt", 0), ("one_shot.ckpt", 1)])
def test_checkpoints_written_by_0_1_load_and_score(weights: dict[str, Any], name: str, k_shot: int) -> None:
    """0.1 stored a PIL-compatible resize + centre crop; it loads as ClipResize and scores as a fresh model."""
    restored = AnomalyGPT.load_from_checkpoint(LEGACY / name, **grouped(**weights)).eval()
    resize = restored.pre_processor.transform.transforms[0]
    assert isinstance(resize, ClipResize)
    assert resize.crop
    assert restored.model.class_name == "washer"
    assert restored.model.num_reference_images == k_shot

    fresh = make_model(**weights, k_shot=k_shot).eval()
    fresh.model.set_class_name("washer")
    torch.testing.assert_close(restored.model.text_features, fresh.model.text_features)
    if k_shot:
        fresh.model.reference_memory = restored.model.reference_memory.clone()
    image = read_image(FIXTURES / "images" / "query_0_rgb_blob.png", as_tensor=True).unsqueeze(0)
    pre_processed = fresh.pre_processor.transform(image)
    torch.testing.assert_close(restored.pre_processor(image), pre_processed)
    torch.testing.assert_close(restored.model(pre_processed).anomaly_map, fresh.model(pre_processed).anomaly_map)


def test_torch_exports_pickled_by_0_1_load_and_score_as_today(weights: dict[str, Any]) -> None:
    """0.1's torch export (whole module pickled) unpickles; its forward now pre-processes PIL-exactly."""
    exported = torch.load(LEGACY / "zero_shot_torch_export.pt", weights_only=False)["model"].eval()
    current = AnomalyGPT.load_from_checkpoint(LEGACY / "zero_shot.ckpt", **grouped(**weights)).eval()
    image = read_image(FIXTURES / "images" / "query_1_gray_scratch.png", as_tensor=True).unsqueeze(0)
    torch.testing.assert_close(exported.pre_processor(image), current.pre_processor(image))
    old, new = exported(image), current(image)
    torch.testing.assert_close(old.anomaly_map, new.anomaly_map)
    torch.testing.assert_close(old.pred_score, new.pred_score)


@pytest.mark.parametrize(
    ("size", "crop", "region"),
    [
        ((300, 600), True, (0, 150, 300, 300)),  # resized 224x448, columns 112..336 -> 150..450 of 600
        ((600, 300), True, (150, 0, 300, 300)),
        ((100, 50), False, (0, 0, 100, 50)),
    ],
)
def test_visible_region_is_the_crop_in_image_pixels(size: tuple[int, int], crop: bool, region: tuple) -> None:
    from anomalib_agpt.model.pre_processing import visible_region

    assert visible_region(*size, SIDE, crop) == region
