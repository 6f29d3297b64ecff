"""Uploads of the web demo: size and header checked before decoding, then decoded; a bad file is a message.

Hostile uploads are refused before anything is decoded: a file over the size limit (``--max-upload-mb``)
by its size, an image over the pixel limit (``--max-image-pixels``, decompression bombs included) by its
header; :func:`limit_pil_decoding` makes PIL itself refuse to decode more.

A refused upload raises :class:`BadInputError`, which the handlers turn into the page's message.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from anomalib_agpt.data.images import read_rgb_image
from anomalib_agpt.errors import AnomalyGPTError

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""Largest upload (width x height) decoded: 25 MP, ~300 MB as a float tensor on the way to 224 x 224."""
DEFAULT_MAX_UPLOAD_MB = 20.0
"""Largest uploaded file, in MB (:data:`MB` bytes each, as Gradio counts them)."""
MB = 1024 * 1024


class BadInputError(AnomalyGPTError, ValueError):
    """Input the page explains to its user as a message (a missing, non-image or huge file, an empty question)."""


def limit_pil_decoding(max_pixels: int) -> None:
    """Make PIL refuse to open images over ``max_pixels`` pixels (x 2) in this process: decompression bombs.

    The handlers already refuse larger images from their header; this also covers any other decoder call.
    PIL warns above ``Image.MAX_IMAGE_PIXELS`` and raises ``DecompressionBombError`` above twice that. The
    setting is process-wide, so the server (``serve``), not :class:`ServeSession`, makes it.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels


def check_image_file(
    path: str | Path | None,
    max_pixels: int,
    what: str = "image",
    max_bytes: int | None = None,
) -> Path:
    """The upload as a path, after checking its size and header (nothing decoded yet): a sane image within limits."""
    if path is None or not str(path).strip():
        msg = f"No {what}: upload one or pick an example."
        raise BadInputError(msg)
    path = Path(path)
    if not path.is_file():
        msg = f"The {what} '{path.name}' did not arrive; upload it again."
        raise BadInputError(msg)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        msg = (
            f"The {what} '{path.name}' is {size / MB:.3g} MB; this server accepts files up to "
            f"{max_bytes / MB:.3g} MB (--max-upload-mb). Nothing was opened: upload a smaller file."
        )
        raise BadInputError(msg)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        declared = f"declares {int(found.group(1)) / 1e6:.1f} megapixels" if found else "declares too many pixels"
        msg = (
            f"The {what} '{path.name}' {declared} (a decompression bomb?); this server accepts up to "
            f"{max_pixels / 1e6:.1f} megapixels (--max-image-pixels). Nothing was decoded."
        )
        raise BadInputError(msg) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        msg = f"'{path.name}' is not an image file this page can read; upload a PNG, JPEG, BMP, TIFF or WebP image."
        raise BadInputError(msg) from error
    if width * height > max_pixels:
        msg = (
            f"The {what} '{path.name}' is {width} x {height} = {width * height / 1e6:.1f} megapixels; this server "
            f"accepts up to {max_pixels / 1e6:.1f} megapixels (--max-image-pixels). The model sees 224 x 224 "
            "pixels anyway: downscale it first."
        )
        raise BadInputError(msg)
    return path


def read_upload(path: Path) -> torch.Tensor:
    """Decode a checked upload as a ``(3, H, W)`` tensor in [0, 1]; a corrupt file is bad input."""
    try:
        return read_rgb_image(path)
    except ValueError as error:
        raise BadInputError(str(error)) from error
