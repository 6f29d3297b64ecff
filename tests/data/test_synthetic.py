"""Behavioural tests for the synthetic MVTec-AD-layout dataset writer."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomalib_agpt.data import SYNTHETIC_CATEGORIES, make_synthetic_mvtec
from anomalib_agpt.data.synthetic import DEFECT_TYPES

SMALL = {"num_train": 4, "num_test_good": 2, "num_test_defect": 3, "image_size": 48}
DEFAULTS = {"num_train": 12, "num_test_good": 6, "num_test_defect": 6, "image_size": 128}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset with the default arguments, shared by the read-only tests."""
    return make_synthetic_mvtec(tmp_path_factory.mktemp("synthetic"))


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def _read(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, path
    return image


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------
# Layout, counts and masks
# --------------------------------------------------------------------------------------


def test_categories_cover_texture_and_object() -> None:
    assert isinstance(SYNTHETIC_CATEGORIES, tuple)
    assert 2 <= len(SYNTHETIC_CATEGORIES) <= 3
    assert "weave" in SYNTHETIC_CATEGORIES
    assert "washer" in SYNTHETIC_CATEGORIES
    for category in SYNTHETIC_CATEGORIES:
        assert len(DEFECT_TYPES[category]) == 2


def test_returns_root_as_path(tmp_path: Path) -> None:
    out = make_synthetic_mvtec(str(tmp_path), categories=("weave",), **SMALL)
    assert isinstance(out, Path)
    assert out == tmp_path


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_layout_and_counts(default_root: Path, category: str) -> None:
    cat_dir = default_root / category
    assert sorted(p.name for p in cat_dir.iterdir() if not p.name.startswith(".")) == [
        "ground_truth",
        "test",
        "train",
    ]
    assert [p.name for p in (cat_dir / "train").iterdir()] == ["good"]
    train = _pngs(cat_dir / "train" / "good")
    assert [p.name for p in train] == [f"{i:03d}.png" for i in range(DEFAULTS["num_train"])]
    test_dirs = sorted(p.name for p in (cat_dir / "test").iterdir())
    assert test_dirs == sorted(["good", *DEFECT_TYPES[category]])
    assert len(_pngs(cat_dir / "test" / "good")) == DEFAULTS["num_test_good"]
    for defect in DEFECT_TYPES[category]:
        images = _pngs(cat_dir / "test" / defect)
        masks = _pngs(cat_dir / "ground_truth" / defect)
        assert len(images) == DEFAULTS["num_test_defect"]
        assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_images_have_requested_size_and_are_8bit_colour(default_root: Path, category: str) -> None:
    size = DEFAULTS["image_size"]
    for path in (default_root / category).rglob("*.png"):
        if "ground_truth" in path.parts:
            continue
        image = _read(path)
        assert image.dtype == np.uint8
        assert image.shape == (size, size, 3), path


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_masks_binary_same_size_nonempty_and_only_for_defects(default_root: Path, category: str) -> None:
    cat_dir = default_root / category
    gt_dirs = sorted(p.name for p in (cat_dir / "ground_truth").iterdir())
    assert gt_dirs == sorted(DEFECT_TYPES[category]), "good images must not have masks"
    for defect in DEFECT_TYPES[category]:
        for image_path in _pngs(cat_dir / "test" / defect):
            mask = _read(cat_dir / "ground_truth" / defect / f"{image_path.stem}_mask.png")
            image = _read(image_path)
            assert mask.dtype == np.uint8
            assert mask.ndim == 2
            assert mask.shape == image.shape[:2]
            assert set(np.unique(mask).tolist()) <= {0, 255}
            assert (mask == 255).any(), f"empty mask for {image_path}"
            assert (mask == 255).mean() < 0.25, "defects should be local"


def test_normal_images_vary(default_root: Path) -> None:
    """Normal samples must not be copies, or models would not need to generalise."""
    for category in SYNTHETIC_CATEGORIES:
        images = [_read(p).astype(np.int16) for p in _pngs(default_root / category / "train" / "good")]
        for a, b in itertools.pairwise(images):
            assert np.abs(a - b).mean() > 1.0


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_defect_pixels_are_atypical_inside_mask(default_root: Path, category: str) -> None:
    """Defect pixels deviate from normal statistics far more than held-out normals do.

    Compared over the same (masked) pixels, against per-pixel train mean and std.
    """
    cat_dir = default_root / category
    train = np.stack([_read(p).astype(np.float64) for p in _pngs(cat_dir / "train" / "good")])
    mean, std = train.mean(axis=0), train.std(axis=0) + 5.0
    goods = [_read(p).astype(np.float64) for p in _pngs(cat_dir / "test" / "good")]

    def deviation(image: np.ndarray, mask: np.ndarray) -> float:
        return float((np.abs(image - mean) / std)[mask].mean())

    for defect in DEFECT_TYPES[category]:
        for image_path in _pngs(cat_dir / "test" / defect):
            mask = _read(cat_dir / "ground_truth" / defect / f"{image_path.stem}_mask.png") > 0
            defect_dev = deviation(_read(image_path).astype(np.float64), mask)
            normal_dev = max(deviation(g, mask) for g in goods)
            assert defect_dev > 1.3 * normal_dev, (image_path, defect_dev, normal_dev)


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
@pytest.mark.parametrize("size", [32, 128])
def test_mask_exactly_covers_the_drawn_defect(category: str, size: int) -> None:
    """Rendering a sample with vs. without its defect changes exactly the masked pixels.

    Nothing outside the mask may change, and almost every masked pixel must change.
    """
    from anomalib_agpt.data import scenes

    for k, defect in enumerate(DEFECT_TYPES[category]):
        for index in range(5):
            image, mask = scenes.render_sample(category, 2 + k, index, 0, size, defect)
            clean, no_mask = scenes.render_sample(category, 2 + k, index, 0, size, None)
            assert no_mask is None
            assert mask is not None
            changed = (image != clean).any(axis=2)
            assert not changed[mask == 0].any(), "defect leaks outside its mask"
            assert changed[mask > 0].mean() > 0.8, "mask covers pixels that were not changed"


def test_minimum_image_size_still_has_nonempty_masks(tmp_path: Path) -> None:
    make_synthetic_mvtec(tmp_path, num_train=1, num_test_good=1, num_test_defect=8, image_size=32)
    for category in SYNTHETIC_CATEGORIES:
        for defect in DEFECT_TYPES[category]:
            masks = _pngs(tmp_path / category / "ground_truth" / defect)
            assert len(masks) == 8
            for mask_path in masks:
                mask = _read(mask_path)
                assert mask.shape == (32, 32)
                assert (mask == 255).any()


def test_zero_counts_write_empty_folders(tmp_path: Path) -> None:
    make_synthetic_mvtec(
        tmp_path,
        categories=("washer",),
        num_train=2,
        num_test_good=0,
        num_test_defect=0,
        image_size=32,
    )
    assert len(_pngs(tmp_path / "washer" / "train" / "good")) == 2
    assert _pngs(tmp_path / "washer" / "test" / "good") == []
    assert list((tmp_path / "washer" / "ground_truth").rglob("*.png")) == []


# --------------------------------------------------------------------------------------
# Determinism and idempotence
# --------------------------------------------------------------------------------------


def test_deterministic_byte_identical(tmp_path: Path) -> None:
    a = make_synthetic_mvtec(tmp_path / "a", **SMALL, seed=3)
    b = make_synthetic_mvtec(tmp_path / "b", **SMALL, seed=3)
    files_a, files_b = _tree_bytes(a), _tree_bytes(b)
    assert files_a.keys() == files_b.keys()
    assert len(files_a) > 0
    for name, data in files_a.items():
        assert files_b[name] == data, name


def test_default_dataset_is_deterministic(default_root: Path, tmp_path: Path) -> None:
    again = make_synthetic_mvtec(tmp_path)
    assert _tree_bytes(again) == _tree_bytes(default_root)


def test_seed_changes_images(tmp_path: Path) -> None:
    a = make_synthetic_mvtec(tmp_path / "a", categories=("weave",), **SMALL, seed=0)
    b = make_synthetic_mvtec(tmp_path / "b", categories=("weave",), **SMALL, seed=1)
    first = "weave/train/good/000.png"
    assert (a / first).read_bytes() != (b / first).read_bytes()


def test_category_subset_gives_same_images(tmp_path: Path) -> None:
    """Images depend on the category, not on which other categories are requested."""
    full = make_synthetic_mvtec(tmp_path / "full", **SMALL)
    only = make_synthetic_mvtec(tmp_path / "only", categories=["tablet"], **SMALL)
    assert sorted(p.name for p in only.iterdir()) == ["tablet"]
    assert _tree_bytes(only / "tablet") == _tree_bytes(full / "tablet")


def test_single_string_category_accepted(tmp_path: Path) -> None:
    make_synthetic_mvtec(tmp_path, categories="washer", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["washer"]


def test_marker_records_arguments(tmp_path: Path) -> None:
    make_synthetic_mvtec(tmp_path, categories=("weave",), **SMALL, seed=7)
    meta = json.loads((tmp_path / "weave" / ".synthetic.json").read_text())
    assert meta["complete"] is True
    assert meta["seed"] == 7
    assert meta["image_size"] == SMALL["image_size"]
    assert meta["num_train"] == SMALL["num_train"]
    assert meta["defect_types"] == list(DEFECT_TYPES["weave"])


def test_idempotent_when_args_match(tmp_path: Path) -> None:
    make_synthetic_mvtec(tmp_path, categories=("weave",), **SMALL)
    files = sorted(p for p in (tmp_path / "weave").rglob("*") if p.is_file())
    old = time.time() - 1000
    for p in files:
        os.utime(p, (old, old))
    before = {p: p.stat().st_mtime_ns for p in files}
    make_synthetic_mvtec(tmp_path, categories=("weave",), **SMALL)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_rewrites_when_args_change_and_removes_stale_files(tmp_path: Path) -> None:
    make_synthetic_mvtec(tmp_path, categories=("washer",), **SMALL)
    first = (tmp_path / "washer" / "train" / "good" / "000.png").read_bytes()
    smaller = {**SMALL, "num_train": 2, "num_test_defect": 1}
    make_synthetic_mvtec(tmp_path, categories=("washer",), **smaller, seed=5)
    assert len(_pngs(tmp_path / "washer" / "train" / "good")) == 2
    for defect in DEFECT_TYPES["washer"]:
        assert len(_pngs(tmp_path / "washer" / "test" / defect)) == 1
        assert len(_pngs(tmp_path / "washer" / "ground_truth" / defect)) == 1
    assert (tmp_path / "washer" / "train" / "good" / "000.png").read_bytes() != first
    meta = json.loads((tmp_path / "washer" / ".synthetic.json").read_text())
    assert meta["seed"] == 5


def test_incomplete_previous_write_is_redone(tmp_path: Path) -> None:
    make_synthetic_mvtec(tmp_path, categories=("weave",), **SMALL)
    marker = tmp_path / "weave" / ".synthetic.json"
    meta = json.loads(marker.read_text())
    marker.write_text(json.dumps({**meta, "complete": False}))
    victim = tmp_path / "weave" / "test" / "good" / "001.png"
    victim.unlink()
    make_synthetic_mvtec(tmp_path, categories=("weave",), **SMALL)
    assert victim.is_file()
    assert json.loads(marker.read_text())["complete"] is True


def test_refuses_to_overwrite_foreign_dataset(tmp_path: Path) -> None:
    foreign = tmp_path / "washer" / "train" / "good"
    foreign.mkdir(parents=True)
    (foreign / "real.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="washer"):
        make_synthetic_mvtec(tmp_path, categories=("washer",), **SMALL)
    assert (foreign / "real.png").read_bytes() == b"not ours"


# --------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["num_train", "num_test_good", "num_test_defect"])
def test_negative_counts_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be >= 0, got -1"):
        make_synthetic_mvtec(tmp_path, **{name: -1})
    assert not any(tmp_path.iterdir()), "validation must happen before writing"


def test_small_image_size_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"image_size must be >= 32, got 31"):
        make_synthetic_mvtec(tmp_path, image_size=31)


def test_negative_seed_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"seed must be >= 0, got -2"):
        make_synthetic_mvtec(tmp_path, seed=-2)


def test_unknown_category_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'bottle'.*expected names from.*'weave'"):
        make_synthetic_mvtec(tmp_path, categories=("weave", "bottle"))
    assert not any(tmp_path.iterdir()), "validation must happen before writing"


def test_empty_categories_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        make_synthetic_mvtec(tmp_path, categories=())


def test_non_integer_count_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="num_train must be an int"):
        make_synthetic_mvtec(tmp_path, num_train=2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# anomalib integration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_anomalib_mvtec_reads_dataset(default_root: Path, category: str) -> None:
    from anomalib.data import MVTecAD

    dm = MVTecAD(
        root=default_root,
        category=category,
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    dm.prepare_data()  # must find the folder and not try to download
    dm.setup()
    n_defect = 2 * DEFAULTS["num_test_defect"]
    assert len(dm.train_data) == DEFAULTS["num_train"]
    assert len(dm.test_data) == DEFAULTS["num_test_good"] + n_defect
    samples = dm.test_data.samples
    abnormal = samples[samples.label_index == 1]
    normal = samples[samples.label_index == 0]
    assert len(abnormal) == n_defect
    assert len(normal) == DEFAULTS["num_test_good"]
    assert abnormal.mask_path.notna().all()
    assert normal.mask_path.isna().all()
    for image_path, mask_path in zip(abnormal.image_path, abnormal.mask_path, strict=True):
        assert Path(mask_path).name == f"{Path(image_path).stem}_mask.png"
        assert Path(mask_path).parent.name == Path(image_path).parent.name
    assert set(samples.label) == {"good", *DEFECT_TYPES[category]}

    item = dm.test_data[int(abnormal.index[0])]
    assert item.gt_mask is not None
    assert item.gt_mask.shape[-2:] == item.image.shape[-2:]
    assert bool(item.gt_mask.any())
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape[0] == 4
