"""NSA-style synthetic anomalies: text labels, per-class settings, mask properties, centres and reproducibility.

That the samples follow the original generator's distributions is tested in test_synthesis_reference.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from anomalib_agpt.explanation.conversation import NORMAL_ANSWER
from anomalib_agpt.training.recipe import synthesis_settings as recipe_settings
from anomalib_agpt.training.synthesis import (
    MVTEC_AD_CLASSES,
    VISA_CLASSES,
    SynthesisSettings,
    SyntheticPairs,
    SyntheticSample,
    answer_for,
    collate_pairs,
    object_settings,
    position_name,
    settings_for,
    synthesize,
    texture_settings,
)
from anomalib_agpt.training.synthetic_pairs import _pick_source

SEEDS = st.integers(0, 2**32 - 1)
SIDES = st.integers(64, 160)
BIG = SynthesisSettings(width_bounds=(0.15, 0.3), resize_bounds=(0.9, 1.1))
"""Patches of at least 10 px a side on 64 px images: no patch is ever too small to blend."""


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _target(seed: int, height: int, width: int) -> torch.Tensor:
    """A smooth coloured gradient: a pasted texture clearly changes it."""
    rng = np.random.default_rng([seed, 0])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
    slope = rng.uniform(-0.1, 0.1, size=(3, 2)).astype(np.float32)
    image = base[:, None, None] + slope[:, :1, None] * yy / height + slope[:, 1:, None] * xx / width
    return torch.from_numpy(image).clamp(0, 1)


def _texture(seed: int, height: int, width: int) -> torch.Tensor:
    """Black/white 4-pixel blocks: strong gradients everywhere, so any cut patch shows after blending."""
    rng = np.random.default_rng([seed, 1])
    blocks = rng.integers(0, 2, size=(math.ceil(height / 4), math.ceil(width / 4))).astype(np.float32)
    image = np.kron(blocks, np.ones((4, 4), np.float32))[:height, :width]
    return torch.from_numpy(np.repeat(image[None], 3, axis=0))


@st.composite
def synthesis_settings(draw: st.DrawFn) -> SynthesisSettings:
    """Any settings within sensible bounds (half-widths per axis)."""
    rows_low, cols_low = draw(st.floats(0.02, 0.3)), draw(st.floats(0.02, 0.3))
    resize_low = draw(st.floats(0.5, 1.0))
    return SynthesisSettings(
        width_bounds=((rows_low, draw(st.floats(rows_low, 0.45))), (cols_low, draw(st.floats(cols_low, 0.45)))),
        resize_bounds=(resize_low, draw(st.floats(resize_low, 2.0))),
        second_patch_probability=draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)),
        logistic=(draw(st.floats(1 / 24, 1)), draw(st.floats(3.0, 40.0))),
    )


@st.composite
def samples(draw: st.DrawFn) -> tuple[SyntheticSample, torch.Tensor, SynthesisSettings]:
    """A synthesized sample of a textured patch in a smooth target, with its target and settings."""
    seed, height, width = draw(SEEDS), draw(SIDES), draw(SIDES)
    config = draw(synthesis_settings())
    target = _target(seed, height, width)
    source = _texture(seed, draw(SIDES), draw(SIDES))  # any size: it is resized to the target's
    return synthesize(target, source, config, np.random.default_rng(seed)), target, config


def _inside(boxes: list[tuple[int, int, int, int]], height: int, width: int, grow: int = 0) -> torch.Tensor:
    inside = torch.zeros(height, width, dtype=torch.bool)
    for top, left, bottom, right in boxes:
        inside[max(top - grow, 0) : bottom + grow, max(left - grow, 0) : right + grow] = True
    return inside


def _center(box: tuple[int, int, int, int]) -> tuple[float, float]:
    top, left, bottom, right = box
    return (top + bottom) / 2, (left + right) / 2


@dataclass
class _Item:
    """Stands in for an anomalib ``ImageItem``: only ``.image`` is used."""

    image: torch.Tensor


# --------------------------------------------------------------------------------------
# Text labels
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "col", "expected"),
    [
        (0, 0, "top left"),
        (30, 30, "top left"),  # exactly one third belongs to the first third
        (30, 31, "top"),
        (30, 60, "top"),  # exactly two thirds belongs to the middle third
        (30, 61, "top right"),
        (31, 0, "left"),
        (45, 45, "center"),
        (60, 60, "center"),
        (60, 90, "right"),
        (61, 0, "bottom left"),
        (61, 60, "bottom"),
        (90, 90, "bottom right"),
    ],
)
def test_position_name_thirds(row: float, col: float, expected: str) -> None:
    assert position_name(row, col, 90, 90) == expected


def test_position_name_uses_each_side_separately() -> None:
    assert position_name(10, 50, 30, 100) == "top"  # 10/30 is a third of the height, 50/100 is not of the width
    assert position_name(29.9, 99, 30, 100) == "bottom right"
    assert position_name(15, 10, 30, 100) == "left"


def test_answer_for_all_forms() -> None:
    assert answer_for([], 90, 90) == NORMAL_ANSWER
    assert answer_for([(10, 80)], 90, 90) == "Yes, there is an anomaly in the image, at the top right of the image."
    assert (
        answer_for([(10, 80), (80, 10)], 90, 90)
        == "Yes, there are 2 anomalies in the image, they are at the top right and bottom left of the image."
    )
    assert (
        answer_for([(45, 45), (40, 50)], 90, 90)
        == "Yes, there are 2 anomalies in the image, they are at the center of the image."
    )


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


def test_defaults() -> None:
    default = SynthesisSettings()
    assert default == object_settings()
    assert default.width_bounds == ((0.03, 0.4), (0.03, 0.4))  # half-widths, rows then columns
    assert default.resize_bounds == (0.7, 1.3)
    assert default.logistic == (1 / 12, 24)
    assert default.skip_background is None
    assert default.second_patch_probability == 0.5
    assert default.half_width_gamma == (2.0, 0.05, 0.03)
    assert default.resize_spread == 0.5
    assert (default.min_object, default.min_overlap, default.min_change, default.attempts) == (0, 0.25, 1, 200)
    assert object_settings((0, 20)).skip_background == (0, 20)
    texture = texture_settings()
    assert texture.resize_bounds == (0.5, 2.0)
    assert texture.logistic == (1 / 3, 7)
    assert texture.skip_background is None
    assert texture.width_bounds == default.width_bounds


def test_settings_normalise_their_sequences() -> None:
    flat = SynthesisSettings(width_bounds=(0.1, 0.2))  # one pair: both axes
    assert flat.width_bounds == ((0.1, 0.2), (0.1, 0.2))
    from_lists = SynthesisSettings(width_bounds=[[0.1, 0.2], [0.05, 0.3]], resize_bounds=[1, 2], logistic=[1, 3])
    assert from_lists.width_bounds == ((0.1, 0.2), (0.05, 0.3))
    assert from_lists.resize_bounds == (1.0, 2.0)
    assert hash(from_lists) == hash(
        SynthesisSettings(width_bounds=((0.1, 0.2), (0.05, 0.3)), resize_bounds=(1, 2), logistic=(1, 3))
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width_bounds": ((0.3, 0.2), (0.1, 0.2))},
        {"width_bounds": (0.0, 0.2)},
        {"width_bounds": (0.1, 0.6)},
        {"width_bounds": (0.1, 0.2, 0.3)},
        {"resize_bounds": (0.0, 1.0)},
        {"second_patch_probability": 1.5},
        {"skip_background": (300, 10)},
        {"logistic": (0.0, 24)},
        {"half_width_gamma": (0.0, 0.05, 0.03)},
        {"resize_spread": -1.0},
        {"min_overlap": 1.0},
        {"min_change": -1.0},
        {"attempts": 0},
    ],
)
def test_settings_reject_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must"):
        SynthesisSettings(**kwargs)


def test_settings_for_has_every_mvtec_class_with_the_original_numbers() -> None:
    from anomalib.data.datasets.image.mvtecad import CATEGORIES

    assert set(MVTEC_AD_CLASSES) == set(CATEGORIES)
    assert all(settings_for(name) != object_settings() for name in MVTEC_AD_CLASSES if name != "transistor")
    screw = settings_for("screw")
    assert screw.width_bounds == ((0.03, 0.12), (0.03, 0.12))
    assert screw.logistic == (1, 3)
    assert screw.skip_background == (200, 60)
    assert screw.resize_bounds == (0.7, 1.3)
    capsule = settings_for("capsule")
    assert capsule.width_bounds == ((0.03, 0.15), (0.03, 0.4))
    assert capsule.logistic == (1 / 2, 4)
    assert capsule.skip_background == (200, 60)
    bottle = settings_for("bottle")
    assert (bottle.width_bounds, bottle.logistic, bottle.skip_background) == (
        ((0.03, 0.4),) * 2,
        (1 / 12, 24),
        (200, 60),
    )
    assert settings_for("cable").width_bounds == ((0.05, 0.4), (0.05, 0.4))
    assert settings_for("cable").skip_background is None
    assert settings_for("hazelnut").skip_background == (20, 20)
    assert settings_for("toothbrush").width_bounds == ((0.03, 0.4), (0.03, 0.2))
    assert settings_for("pill").width_bounds == ((0.03, 0.2), (0.03, 0.4))
    assert settings_for("pill").logistic == (1 / 3, 7)
    assert settings_for("zipper").logistic == (1 / 6, 15)
    for texture in ("carpet", "grid", "leather", "tile", "wood"):
        settings = settings_for(texture)
        assert settings.resize_bounds == (0.5, 2.0)
        assert settings.skip_background is None
        assert settings.logistic == ((1 / 6, 15) if texture == "wood" else (1 / 3, 7))


@pytest.mark.parametrize("spelling", ["metal_nut", "metal nut", "Metal Nut", "metal-nut", " metal_nut "])
def test_settings_for_accepts_spellings(spelling: str) -> None:
    metal_nut = settings_for(spelling)
    assert metal_nut.width_bounds == ((0.03, 0.4), (0.03, 0.4))
    assert metal_nut.logistic == (1 / 3, 7)
    assert metal_nut.skip_background == (20, 20)
    assert metal_nut.resize_bounds == (0.7, 1.3)


def test_settings_for_visa_and_unknown_classes() -> None:
    from anomalib.data.datasets.image.visa import CATEGORIES

    assert set(VISA_CLASSES) == set(CATEGORIES)
    for name in (*VISA_CLASSES, "pipe fryum"):
        visa = settings_for(name)
        assert visa.width_bounds == ((0.03, 0.4), (0.03, 0.4))
        assert visa.logistic == (1 / 12, 24)
        assert visa.skip_background is None
        assert visa.resize_bounds == (0.5, 2.0)
    assert settings_for("sprocket") == object_settings() == settings_for(None) == settings_for("")
    assert settings_for("sprocket", "texture") == texture_settings()
    assert settings_for("screw", "texture") == settings_for("screw")  # a known class keeps its own entry
    with pytest.raises(ValueError, match="default"):
        settings_for("sprocket", "fabric")  # type: ignore[arg-type]


def test_old_module_path_gives_the_same_generator() -> None:
    from anomalib_agpt.synthesis import settings_for as old_settings_for
    from anomalib_agpt.synthesis import synthesize as old_synthesize

    assert old_settings_for is settings_for
    assert old_synthesize is synthesize


def test_training_uses_the_class_settings() -> None:
    assert recipe_settings("auto", "screw") == settings_for("screw")
    assert recipe_settings("auto", "metal nut") == settings_for("metal_nut")
    assert recipe_settings("auto", "pcb1") == settings_for("pcb1")
    assert recipe_settings("auto", "weave") == texture_settings()  # the demo's texture, not in the tables
    assert recipe_settings("auto", "sprocket") == object_settings()
    assert recipe_settings("auto", None) == object_settings()
    assert recipe_settings("texture", "screw") == texture_settings()
    assert recipe_settings("object", "carpet") == object_settings()


def test_rejects_bad_images() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3, H, W"):
        synthesize(torch.rand(1, 64, 64), torch.rand(3, 64, 64), SynthesisSettings(), rng)
    with pytest.raises(TypeError, match="float"):
        synthesize(torch.zeros(3, 64, 64, dtype=torch.uint8), torch.rand(3, 64, 64), SynthesisSettings(), rng)
    with pytest.raises(ValueError, match="at least"):
        synthesize(torch.rand(3, 8, 64), torch.rand(3, 64, 64), SynthesisSettings(), rng)


# --------------------------------------------------------------------------------------
# synthesize: properties
# --------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(samples())
def test_mask_is_soft_and_confined_to_the_pasted_boxes(case: tuple) -> None:
    sample, target, config = case
    height, width = target.shape[1:]
    assert sample.image.shape == target.shape
    assert sample.mask.shape == (1, height, width)
    assert len(sample.boxes) <= 2
    if config.second_patch_probability == 0.0:
        assert len(sample.boxes) <= 1
    (rows_low, rows_high), (cols_low, cols_high) = config.width_bounds
    for top, left, bottom, right in sample.boxes:  # a border is kept for seamlessClone
        assert 1 <= top < bottom <= height - 1
        assert 1 <= left < right <= width - 1
        # a rescaled patch stays within the half-width pixel bounds, as in the original
        assert max(1, round(rows_low * height)) <= bottom - top <= max(1, round(rows_high * height))
        assert max(1, round(cols_low * width)) <= right - left <= max(1, round(cols_high * width))
        assert (bottom - top - 2) * (right - left - 2) >= 50  # smaller patches are skipped

    mask = sample.mask[0]
    assert float(mask.min()) >= 0.0
    assert float(mask.max()) <= 1.0
    # The 5x5 median may carry a label up to 2 pixels past a box (at a corner where two boxes meet), no farther.
    assert torch.all(mask[~_inside(sample.boxes, height, width, grow=2)] == 0)
    # Outside the boxes the image is the target itself, bit for bit (no quantisation shortcut).
    inside = _inside(sample.boxes, height, width)
    assert torch.equal(sample.image[:, ~inside], target[:, ~inside])
    assert float(sample.image.min()) >= 0.0
    assert float(sample.image.max()) <= 1.0


@settings(max_examples=25, deadline=None)
@given(samples())
def test_mask_is_zero_or_a_logistic_of_a_change(case: tuple) -> None:
    sample, _, config = case
    k, x0 = config.logistic
    floor = 1 / (1 + math.exp(k * x0))  # the logistic of "nothing changed"
    labelled = sample.mask[0][sample.mask[0] > 0]
    assert torch.all(labelled >= floor * (1 - 1e-5))
    assert torch.all(labelled <= 1)


def test_textured_patches_are_mostly_labelled() -> None:
    """A busy patch in a smooth image shows: nearly every sample's mask has pixels above 0.5."""
    target, source = _target(0, 128, 128), _texture(0, 128, 128)
    rng = np.random.default_rng(0)
    found = [bool((synthesize(target, source, BIG, rng).mask > 0.5).any()) for _ in range(40)]
    assert sum(found) >= 36


def test_an_invisible_patch_names_a_place_with_an_empty_mask() -> None:
    """Like the original: a patch that changes nothing still gets a "yes, at ..." answer, with no labelled pixel."""
    flat = torch.full((3, 64, 64), 0.5)
    sample = synthesize(flat, flat.clone(), BIG, np.random.default_rng(0))
    assert sample.boxes
    assert sample.answer.startswith("Yes")
    assert float((sample.image - flat).abs().max()) <= 1 / 255 + 1e-6  # the blend's rounding at most
    assert float(sample.mask.max()) == 0.0


@settings(max_examples=25, deadline=None)
@given(samples())
def test_centers_and_answer(case: tuple) -> None:
    sample, target, _ = case
    height, width = target.shape[1:]
    assert len(sample.centers) == len(sample.boxes)
    if not sample.boxes:  # every patch was too small: no anomaly, the normal answer
        assert sample.answer == NORMAL_ANSWER
        assert torch.equal(sample.image, target)
        return
    assert sample.centers[0] == _center(sample.boxes[0])
    if len(sample.boxes) == 2:
        (t1, l1, b1, r1), (t2, l2, b2, r2) = sample.boxes
        union = (min(t1, t2), min(l1, l2), max(b1, b2), max(r1, r2))
        assert sample.centers[1] == _center(union)  # the box around both patches, not patch 2 alone
    assert sample.answer == answer_for(sample.centers, height, width)
    names = [position_name(row, col, height, width) for row, col in sample.centers]
    if len(names) == 1:
        assert sample.answer.endswith(f"at the {names[0]} of the image.")
    elif names[0] == names[1]:
        assert sample.answer.endswith(f"they are at the {names[0]} of the image.")
    else:
        assert sample.answer.endswith(f"they are at the {names[0]} and {names[1]} of the image.")


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, height=SIDES, width=SIDES, data=st.data())
def test_skip_background_pastes_onto_the_object(seed: int, height: int, width: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    background, tolerance = int(data.draw(st.integers(0, 60))), 25
    grey = np.clip(background + rng.integers(-10, 11, size=(height, width)), 0, 255).astype(np.float32)
    # An object of at least 16 px a side (the object mask's 7x7 median keeps it) that covers the image centre.
    top = data.draw(st.integers(0, height // 2 - 8))
    left = data.draw(st.integers(0, width // 2 - 8))
    bottom = data.draw(st.integers(height // 2 + 8, height))
    right = data.draw(st.integers(width // 2 + 8, width))
    grey[top:bottom, left:right] = 200
    target = torch.from_numpy(np.repeat(grey[None] / 255, 3, axis=0))
    on_object = np.zeros((height, width), bool)
    on_object[top:bottom, left:right] = True
    source = 0.5 + 0.5 * _texture(seed, height, width)  # grey 128..255: object everywhere

    config = SynthesisSettings(
        width_bounds=(0.05, 0.4), second_patch_probability=1.0, skip_background=(background, tolerance)
    )
    sample = synthesize(target, source, config, rng)
    for box_top, box_left, box_bottom, box_right in sample.boxes:
        # more than a quarter of the patch's object pixels (here: all of it) lands on the target's object
        overlap = on_object[box_top:box_bottom, box_left:box_right].sum()
        assert overlap > 0.25 * (box_bottom - box_top) * (box_right - box_left)


def test_skip_background_gives_up_when_all_is_background() -> None:
    """No object to cut from: no patch, as the original ("no suitable patch"), so the sample is normal."""
    target = torch.zeros(3, 64, 80)
    config = object_settings(skip_background=(0, 10))
    sample = synthesize(target, target.clone(), config, np.random.default_rng(0))
    assert sample.boxes == []
    assert sample.centers == []
    assert sample.answer == NORMAL_ANSWER
    assert torch.equal(sample.image, target)
    assert float(sample.mask.max()) == 0.0


def test_labels_skip_where_source_and_target_are_background() -> None:
    """A change where both the patch and the target show the plain background is not labelled."""
    size = 96
    target = torch.full((3, size, size), 200 / 255)
    target[:, 24:72, 24:72] = 0.3 * _texture(1, 48, 48)  # a dark busy object on a 200 grey ground
    noise = np.random.default_rng(1).uniform(-40, 40, size=(size, size)).astype(np.float32)
    source = torch.from_numpy(np.repeat((200 + noise)[None] / 255, 3, axis=0))  # busy, but background
    source[:, 42:54, 42:54] = 0.1  # with a small object to cut around
    on_background = (target.mean(0) - 200 / 255).abs() <= 60 / 255

    def labelled_on_background(rule: tuple[int, int] | None) -> int:
        config = SynthesisSettings(width_bounds=(0.1, 0.3), second_patch_probability=0.0, skip_background=rule)
        total = 0
        for seed in range(30):
            sample = synthesize(target, source, config, np.random.default_rng(seed))
            total += int(((sample.mask[0] > 0) & on_background).sum())
        return total

    without_rule = labelled_on_background(None)
    assert without_rule > 0
    assert labelled_on_background((200, 60)) < 0.2 * without_rule


def test_inputs_are_not_modified() -> None:
    target, source = _target(1, 70, 90), _texture(1, 50, 60)
    target_copy, source_copy = target.clone(), source.clone()
    synthesize(target, source, texture_settings(), np.random.default_rng(1))
    assert torch.equal(target, target_copy)
    assert torch.equal(source, source_copy)


# --------------------------------------------------------------------------------------
# SyntheticPairs
# --------------------------------------------------------------------------------------


def _dataset(seed: int, count: int, height: int = 64, width: int = 72) -> list[_Item]:
    return [
        _Item(_texture(seed + i, height, width) * 0.5 + _target(seed + i, height, width) * 0.5) for i in range(count)
    ]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, data=st.data())
def test_pairs_keep_the_normal_twin_and_are_reproducible(seed: int, data: st.DataObject) -> None:
    items = _dataset(seed % 1000, 3)
    pairs_seed = data.draw(st.integers(0, 2**31))
    epoch = data.draw(st.integers(0, 100))
    index = data.draw(st.integers(0, 2))
    pairs = SyntheticPairs(items, BIG, seed=pairs_seed)
    pairs.set_epoch(epoch)
    item = pairs[index]
    assert torch.equal(item["normal_image"], items[index].image)
    assert item["normal_answer"] == NORMAL_ANSWER
    assert item["index"] == index
    assert item["answer"] == answer_for(item["centers"], 64, 72)

    # Same (seed, epoch, index) from a fresh wrapper, after other items were drawn: the same sample.
    again = SyntheticPairs(items, BIG, seed=pairs_seed)
    again.set_epoch(epoch)
    for other in (2, 0, 1):
        again[other]
    _assert_same(item, again[index])

    again.set_epoch(epoch + 1)
    changed = again[index]
    assert not (
        torch.equal(changed["anomalous_image"], item["anomalous_image"]) and changed["mask"].equal(item["mask"])
    )


def test_pairs_accept_tensors_dicts_and_items() -> None:
    images = [item.image for item in _dataset(3, 2)]
    variants = [images, [{"image": image} for image in images], [SimpleNamespace(image=image) for image in images]]
    results = [SyntheticPairs(dataset, texture_settings(), seed=5)[1] for dataset in variants]
    for result in results[1:]:
        _assert_same(results[0], result)
    assert torch.equal(results[0]["normal_image"], images[1])
    with pytest.raises(IndexError):
        SyntheticPairs(images, texture_settings())[2]
    _assert_same(SyntheticPairs(images, texture_settings())[-1], SyntheticPairs(images, texture_settings())[1])


def test_pairs_take_the_source_from_another_image() -> None:
    flat = torch.full((3, 64, 64), 0.5)
    dataset = [flat, _texture(0, 64, 64)]
    pairs = SyntheticPairs(dataset, BIG)  # patches big enough to blend: every sample has one
    for epoch in range(5):
        pairs.set_epoch(epoch)
        item = pairs[0]  # pasting the flat image into itself would change nothing
        assert not torch.equal(item["anomalous_image"], flat)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, length=st.integers(1, 6), data=st.data())
def test_pick_source_never_picks_itself(seed: int, length: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, length - 1))
    picked = _pick_source(index, length, np.random.default_rng(seed))
    assert 0 <= picked < length
    assert picked != index or length == 1


def test_settings_may_depend_on_the_index() -> None:
    def per_item(index: int) -> SynthesisSettings:
        return dataclasses.replace(BIG, second_patch_probability=float(index % 2))

    pairs = SyntheticPairs(_dataset(0, 4), per_item)
    assert [len(pairs[i]["centers"]) for i in range(4)] == [1, 2, 1, 2]


def test_collate_and_workers_match_direct_access() -> None:
    pairs = SyntheticPairs(_dataset(7, 4), texture_settings(), seed=11)
    pairs.set_epoch(3)
    direct = collate_pairs([pairs[i] for i in range(4)])
    assert direct["normal_image"].shape == (4, 3, 64, 72)
    assert direct["anomalous_image"].shape == (4, 3, 64, 72)
    assert direct["mask"].shape == (4, 1, 64, 72)
    assert direct["answer"] == [pairs[i]["answer"] for i in range(4)]
    assert direct["normal_answer"] == [NORMAL_ANSWER] * 4
    assert torch.equal(direct["index"], torch.arange(4))
    assert isinstance(direct["centers"], list)

    loader = DataLoader(pairs, batch_size=2, num_workers=2, collate_fn=collate_pairs, shuffle=False)
    batches = list(loader)
    merged = {key: torch.cat([b[key] for b in batches]) for key in ("anomalous_image", "mask", "index")}
    for key, value in merged.items():
        assert torch.equal(value, direct[key]), key
    assert [a for b in batches for a in b["answer"]] == direct["answer"]
    with pytest.raises(ValueError, match="empty"):
        collate_pairs([])
