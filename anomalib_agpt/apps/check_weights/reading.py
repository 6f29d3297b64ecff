"""Reading weight files without loading them, and the one error for a file this product does not read.

PyTorch files are memory-mapped (``weights_only=True``; only legacy pre-zip files, which cannot be
mapped, are read whole); safetensors files are read for their headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib_agpt.errors import CheckpointError
from anomalib_agpt.weights import checkpoints as ckpt
from anomalib_agpt.weights.safetensors import read_safetensors_header


def _unreadable(reason: str) -> CheckpointError:
    return CheckpointError(f"not a weight file this product reads: {reason}")


def _torch_load(path: Path) -> object:
    """:func:`~anomalib_agpt.weights.checkpoints.read_torch_file`, pathlib objects in Lightning hparams allowed."""
    try:
        return ckpt.read_torch_file(path, ckpt.PATH_GLOBALS)
    except CheckpointError as error:
        raise _unreadable(str(error)) from error


def _safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"dtype", "shape", "data_offsets"}}`` from the header only."""
    try:
        return read_safetensors_header(path)[1]
    except CheckpointError as error:
        raise _unreadable(str(error)) from error


def _shape(values: Sequence[int]) -> str:
    return " x ".join(str(v) for v in values)
