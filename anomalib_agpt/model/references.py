"""Few-shot reference images: found in file order, read with :func:`~anomalib_agpt.data.images.read_rgb_image`."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from anomalib.data.utils.image import is_image_file

from anomalib_agpt.data.images import geometry_warning, read_rgb_image
from anomalib_agpt.errors import MissingFileError, OptionError


def list_reference_images(folder: str | Path, k_shot: int) -> list[Path]:
    """The first ``k_shot`` image files of ``folder`` in sorted order; refuses a short or empty set."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        msg = f"few_shot.source='{folder}' is not a folder of normal reference images."
        raise MissingFileError(msg)
    images = sorted(path for path in folder.iterdir() if path.is_file() and is_image_file(path))
    if len(images) < k_shot:
        msg = (
            f"few_shot.source='{folder}' holds {len(images)} image(s); few_shot.k_shot={k_shot} needs at least "
            f"{k_shot}."
        )
        raise OptionError(msg)
    return images[:k_shot]


def round_reference_images(root: str | Path, category: str, family: str, k_shot: int, round_: int) -> list[Path]:
    """The original evaluation's references for ``round_``: which normal training images, by dataset.

    MVTec AD: ``<root>/<category>/train/good/{4*round + j:03d}.png`` for ``j < k_shot``. VisA: the
    ``train`` rows of ``<root>/split_csv/1cls.csv`` for the category, in file order, after skipping
    ``4*round`` of them (image paths relative to ``root``).
    """
    root = Path(root).expanduser()
    start = 4 * round_
    if family == "mvtec":
        folder = root / category / "train" / "good"
        paths = [folder / f"{start + j:03d}.png" for j in range(k_shot)]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            msg = (
                f"few_shot.reference_round={round_} with k_shot={k_shot} needs {', '.join(missing)}, "
                "which do not exist."
            )
            raise MissingFileError(msg)
        return paths
    if family == "visa":
        table = root / "split_csv" / "1cls.csv"
        if not table.is_file():
            msg = (
                f"few_shot.reference_round={round_} on VisA reads '{table}' (VisA's split file), which does not exist."
            )
            raise MissingFileError(msg)
        with table.open(newline="") as file:
            rows = [
                row for row in csv.DictReader(file) if row.get("object") == category and row.get("split") == "train"
            ]
        chosen = rows[start : start + k_shot]
        if len(chosen) < k_shot:
            msg = (
                f"few_shot.reference_round={round_} with k_shot={k_shot} needs train rows "
                f"{start}..{start + k_shot - 1} of '{category}' in '{table}'; it has {len(rows)}."
            )
            raise OptionError(msg)
        return [root / row["image"] for row in chosen]
    msg = f"few_shot.reference_round={round_} picks references of MVTec AD or VisA only; this datamodule is neither."
    raise OptionError(msg)


def load_reference_images(
    paths: Sequence[str | Path],
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
    resize_mode: str | None = None,
) -> torch.Tensor:
    """Read and pre-process reference images one by one (sizes may differ) -> ``(k, 3, S, S)``.

    ``resize_mode`` (``"crop"``/``"squash"``): warn about each reference the model will barely see
    (:func:`~anomalib_agpt.data.images.geometry_warning`: tiny, or in ``crop`` mode very elongated).
    """
    if not paths:
        msg = "the reference set is empty; few-shot needs at least one normal image."
        raise OptionError(msg)
    images = [read_rgb_image(path) for path in paths]
    if resize_mode is not None:
        for path, image in zip(paths, images, strict=True):
            warning = geometry_warning(path, int(image.shape[-1]), int(image.shape[-2]), resize_mode)
            if warning is not None:
                warnings.warn(f"reference {warning}", UserWarning, stacklevel=2)
    if transform is not None:
        images = [transform(image.unsqueeze(0))[0] for image in images]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        msg = f"reference images have different sizes after pre-processing: {sorted(shapes)}"
        raise OptionError(msg)
    return torch.stack(images)
