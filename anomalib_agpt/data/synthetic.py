"""Tiny, deterministic, MVTec-AD-layout datasets generated on the fly.

Why: tests, examples and smoke benchmarks need an anomaly detection dataset that exists
offline, is small enough to train on in seconds, has pixel-exact ground truth, and is
still not trivially separable. ``make_synthetic_mvtec`` writes such a dataset in the
directory layout that ``anomalib.data.MVTecAD`` reads, so no download is ever needed::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect_type>/000.png
    root/<category>/ground_truth/<defect_type>/000_mask.png

Every image is drawn from its own ``numpy.random.default_rng`` seeded by
``(seed, category index, split, image index)``, so the same arguments always produce
byte-identical files and a category's images do not depend on which other categories
are requested.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from anomalib_agpt.data.scenes import DEFECT_TYPES, SYNTHETIC_CATEGORIES, render_sample
from anomalib_agpt.errors import OptionError, OptionTypeError, OutputExistsError

__all__ = ["DEFECT_TYPES", "SYNTHETIC_CATEGORIES", "make_synthetic_mvtec"]

_MARKER = ".synthetic.json"
_FORMAT_VERSION = 1
_MIN_IMAGE_SIZE = 32
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]

# Split codes used in the per-image seed; defect type ``k`` uses ``_SPLIT_DEFECT + k``.
_SPLIT_TRAIN = 0
_SPLIT_TEST_GOOD = 1
_SPLIT_DEFECT = 2


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a PNG with fixed encoder settings (byte-identical output for equal input)."""
    if not cv2.imwrite(str(path), array, _PNG_PARAMS):
        msg = f"Could not write image file {path}"
        raise OSError(msg)


def _check_count(name: str, value: int) -> None:
    """Reject non-integer or negative sample counts early, with a clear message."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        msg = f"{name} must be an int, got {value!r} of type {type(value).__name__}"
        raise OptionTypeError(msg)
    if value < 0:
        msg = f"{name} must be >= 0, got {value}"
        raise OptionError(msg)


def _validate(categories: Sequence[str] | str, counts: dict[str, int], image_size: int, seed: int) -> tuple[str, ...]:
    """Validate all arguments before touching the file system; return the category tuple."""
    if isinstance(categories, str):
        categories = (categories,)
    cats = tuple(dict.fromkeys(categories))
    if not cats:
        msg = f"categories must name at least one of {SYNTHETIC_CATEGORIES}, got an empty list"
        raise OptionError(msg)
    unknown = [c for c in cats if c not in SYNTHETIC_CATEGORIES]
    if unknown:
        msg = f"Unknown synthetic category {unknown!r}; expected names from {SYNTHETIC_CATEGORIES}"
        raise OptionError(msg)
    for name, value in counts.items():
        _check_count(name, value)
    _check_count("image_size", image_size)
    if image_size < _MIN_IMAGE_SIZE:
        msg = f"image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}"
        raise OptionError(msg)
    _check_count("seed", seed)
    return cats


def _is_up_to_date(category_dir: Path, meta: dict[str, object]) -> bool:
    """Tell whether a complete dataset written with exactly these args is on disk."""
    marker = category_dir / _MARKER
    try:
        return json.loads(marker.read_text()) == {**meta, "complete": True}
    except (OSError, ValueError):
        return False


def _prepare_dir(category_dir: Path) -> None:
    """Clear a previous synthetic dataset; refuse to overwrite a foreign (e.g. real) one."""
    if category_dir.exists() and any(category_dir.iterdir()):
        if not (category_dir / _MARKER).is_file():
            msg = (
                f"{category_dir} exists, is not empty and has no {_MARKER} marker; refusing to "
                "overwrite what may be a real dataset. Use an empty root for synthetic data."
            )
            raise OutputExistsError(msg)
        for sub in ("train", "test", "ground_truth"):
            shutil.rmtree(category_dir / sub, ignore_errors=True)
    category_dir.mkdir(parents=True, exist_ok=True)


def _write_marker(category_dir: Path, meta: dict[str, object], complete: bool) -> None:
    """Record the generation args; written incomplete first so a crash forces a rewrite."""
    text = json.dumps({**meta, "complete": complete}, indent=2, sort_keys=True) + "\n"
    tmp = category_dir / (_MARKER + ".tmp")
    tmp.write_text(text)
    tmp.replace(category_dir / _MARKER)


def _write_category(category_dir: Path, category: str, counts: dict[str, int], size: int, seed: int) -> None:
    """Write all images and masks of one category."""
    width = max(3, len(str(max(counts.values(), default=0) - 1)))
    jobs: list[tuple[str, str, int, str | None, int]] = [
        ("train", "good", _SPLIT_TRAIN, None, counts["num_train"]),
        ("test", "good", _SPLIT_TEST_GOOD, None, counts["num_test_good"]),
    ]
    for k, defect in enumerate(DEFECT_TYPES[category]):
        jobs.append(("test", defect, _SPLIT_DEFECT + k, defect, counts["num_test_defect"]))
    for split, label, split_code, defect, n in jobs:
        image_dir = category_dir / split / label
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir = category_dir / "ground_truth" / label
        if defect is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = render_sample(category, split_code, i, seed, size, defect)
            _write_png(image_dir / f"{i:0{width}d}.png", image)
            if mask is not None:
                _write_png(mask_dir / f"{i:0{width}d}_mask.png", mask)


def make_synthetic_mvtec(
    root: str | Path,
    categories: Sequence[str] = SYNTHETIC_CATEGORIES,
    num_train: int = 12,
    num_test_good: int = 6,
    num_test_defect: int = 6,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a small synthetic dataset that ``anomalib.data.MVTecAD`` can read.

    Why: gives tests and demos a realistic, offline, deterministic MVTec AD stand-in.

    Args:
        root: Dataset root; pass it as ``MVTecAD(root=root, category=...)``.
        categories: Subset of :data:`SYNTHETIC_CATEGORIES` to write.
        num_train: Normal training images per category.
        num_test_good: Normal test images per category.
        num_test_defect: Test images per defect type (two defect types per category).
        image_size: Side length of the square images, at least 32.
        seed: Non-negative base seed; same args give byte-identical files.

    Returns:
        The dataset root as a :class:`~pathlib.Path`.

    Raises:
        ValueError: Unknown category, negative count or seed, or ``image_size < 32``.
        TypeError: A count, size or seed that is not an ``int``.
        FileExistsError: ``root/<category>`` holds files not written by this function.

    """
    counts = {
        "num_train": num_train,
        "num_test_good": num_test_good,
        "num_test_defect": num_test_defect,
    }
    cats = _validate(categories, counts, image_size, seed)
    counts = {k: int(v) for k, v in counts.items()}
    image_size, seed = int(image_size), int(seed)
    root = Path(root)
    for category in cats:
        category_dir = root / category
        meta: dict[str, object] = {
            "category": category,
            "defect_types": list(DEFECT_TYPES[category]),
            "format_version": _FORMAT_VERSION,
            "image_size": image_size,
            "seed": seed,
            **counts,
        }
        if _is_up_to_date(category_dir, meta):
            continue
        _prepare_dir(category_dir)
        _write_marker(category_dir, meta, complete=False)
        _write_category(category_dir, category, counts, image_size, seed)
        _write_marker(category_dir, meta, complete=True)
    return root
