"""Reading image files as people have them (16-bit, float, palette, CMYK, EXIF-rotated) as 8-bit RGB tensors.

anomalib's reader (``Image.open(path).convert("RGB")``) is right for 8-bit files but PIL's
``convert`` clips instead of scaling: a 16-bit greyscale PNG (``I;16``) or a 32-bit integer image
(``I``) reads as nearly all white, a float image (``F``) in [0, 1] as nearly all black, and the EXIF
orientation a camera wrote is ignored. :func:`read_rgb_image` reads all of them as the 8-bit RGB
image a person sees; :class:`PredictImages` is anomalib's ``PredictDataset`` with that reader, which
skips (and names) unreadable files instead of failing half-way through a folder.
"""

from __future__ import annotations

import typing
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from anomalib.data import ImageItem, PredictDataset
from PIL import Image
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2.functional import to_dtype, to_image

from anomalib_agpt.errors import ImageReadError, MissingFileError, OptionError, check_choice

ResizeMode = typing.Literal["crop", "squash"]
"""How a picture becomes the square model view: short side + centre crop, or squashed (both sides resized)."""

MIN_SIDE = 32  # a model view interpolated from fewer pixels than a MIN_SIDE x MIN_SIDE image is "tiny"
MAX_CROP_ASPECT = 4.0  # in crop mode, a longer side beyond 4x the shorter one loses most of the image
UINT16_TO_UINT8 = 257.0  # 65535 / 255: 16-bit level v is 8-bit level v / 257
INT32_MAX = 2**31 - 1
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright, as ``PIL.ImageOps.exif_transpose`` applies it
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")
# raw layouts of 16-bit colour files (PNG, TIFF) that PIL reduces to their high bytes; LA;16 opens as RGBA
SIXTEEN_BIT_COLOUR = ("RGB;16", "RGBA;16", "RGBX;16", "LA;16")


class _UnreadableError(Exception):
    """Why a file cannot be decoded (the caller adds the path)."""


def _raw_mode(image: Image.Image) -> str:
    """The decoder's pixel layout (e.g. ``RGB;16B`` for a 16-bit RGB PNG), read before ``load`` clears it."""
    tile = getattr(image, "tile", None)
    if not tile:
        return image.mode
    args = tile[0][3]
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else image.mode


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation tag; 1 (upright) when absent or unreadable, so a broken tag loses no image."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF blocks raise anything; the pixels are still good
        return 1
    return value if isinstance(value, int) and value in ORIENTATION_TRANSPOSE else 1


def _round_16_bit(levels: np.ndarray) -> np.ndarray:
    """16-bit levels 0..65535 -> the nearest 8-bit level (``v / 257`` never ties: 257 is odd)."""
    return np.rint(levels.astype(np.float64) / UINT16_TO_UINT8).astype(np.uint8)


def _integer_to_8_bit(levels: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Mode ``I`` rule: negatives -> 0; max <= 255 -> 8-bit levels; <= 65535 -> 16-bit scale; else int32 scale."""
    levels = np.clip(levels.astype(np.int64), 0, None)
    top = int(levels.max()) if levels.size else 0
    if sixteen_bit or 255 < top <= 65535:
        return _round_16_bit(np.clip(levels, 0, 65535))
    if top <= 255:
        return levels.astype(np.uint8)
    return np.rint(levels.astype(np.float64) * (255 / INT32_MAX)).astype(np.uint8)


def _float_to_8_bit(values: np.ndarray) -> np.ndarray:
    """Mode ``F`` rule: NaN -> 0; max <= 1 -> [0, 1] scale; else [0, 255] scale; clipped to the range."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0)
    top = float(values.max()) if values.size else 0.0
    scale = 255.0 if top <= 1 else 1.0
    return np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)


def _opencv_16_bit(path: Path) -> np.ndarray | None:
    """A 16-bit colour file as 8-bit RGB levels via OpenCV (PIL keeps only each level's high byte); None if it fails."""
    data = np.fromfile(path, dtype=np.uint8)  # imdecode, not imread: any path encoding works
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if decoded is None or decoded.ndim != 3 or decoded.shape[2] not in (3, 4):
        return None
    bgr = decoded[..., :3]  # alpha dropped, as anomalib's convert("RGB") drops it
    if bgr.dtype == np.uint16:
        levels = _round_16_bit(bgr)
    elif bgr.dtype == np.uint8:
        levels = bgr
    elif bgr.dtype.kind == "f":
        levels = _float_to_8_bit(bgr)
    else:
        return None
    return np.ascontiguousarray(levels[..., ::-1])


def _decoded_levels(image: Image.Image, raw_mode: str, path: Path) -> np.ndarray:
    """A loaded PIL image -> ``(H, W, 3)`` uint8 RGB levels by the rules of :func:`read_rgb_image`."""
    if image.mode in SIXTEEN_BIT_GREY:
        grey = _round_16_bit(np.asarray(image))
    elif image.mode == "I":
        grey = _integer_to_8_bit(np.asarray(image), sixteen_bit=raw_mode.startswith("I;16"))
    elif image.mode == "F":
        grey = _float_to_8_bit(np.asarray(image))
    else:
        colour = _opencv_16_bit(path) if raw_mode.startswith(SIXTEEN_BIT_COLOUR) else None
        if colour is None:  # 8-bit modes (L, RGB(A), P, PA, LA, 1, CMYK, YCbCr, ...): PIL's own conversion
            colour = np.array(image if image.mode == "RGB" else image.convert("RGB"))  # a writable copy
        return colour
    return np.repeat(grey[..., None], 3, axis=2)


def _rgb_levels(path: Path) -> np.ndarray:
    """Decode ``path`` -> upright ``(H, W, 3)`` uint8 RGB levels; raises :class:`_UnreadableError` with the reason."""
    if path.is_dir():
        msg = "it is a folder, not an image file"
        raise _UnreadableError(msg)
    if not path.exists():
        msg = "no such file"
        raise _UnreadableError(msg)
    try:
        with Image.open(path) as image:
            raw_mode = _raw_mode(image)
            image.load()  # decodes every pixel: a truncated or corrupt file fails here, not later
            orientation = _orientation(image)
            levels = _decoded_levels(image, raw_mode, path)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        reason = str(error) or type(error).__name__
        raise _UnreadableError(reason) from error
    if orientation != 1:
        levels = np.array(Image.fromarray(levels).transpose(ORIENTATION_TRANSPOSE[orientation]))
    return levels


def read_rgb_image(path: str | Path) -> torch.Tensor:
    """Read an image file as the 8-bit RGB image a person sees: ``(3, H, W)`` float32 in [0, 1].

    Every result holds 8-bit levels (``level / 255``), as the model's pre-processing works on
    8-bit pixels (it equals PIL on the 8-bit image). Rules, by the PIL mode the file opens as:

    * 8-bit ``RGB``: exactly anomalib's ``read_image(path, as_tensor=True)``; ``L``, ``RGBA``, ``P``,
      ``PA``, ``LA``, ``1``, ``CMYK``, ``YCbCr``, ...: PIL's ``convert("RGB")``, as anomalib (alpha dropped).
    * 16-bit greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): level ``v`` -> ``round(v / 257)``
      (``v = 257 * k`` gives ``k`` exactly).
    * 16-bit colour (PNG/TIFF ``RGB;16``/``RGBA;16``; PIL keeps only the high byte): decoded with
      OpenCV and rounded as above; PIL's high byte (at most one level lower) if OpenCV cannot.
    * ``I`` (32-bit integer): negatives -> 0; if the decoder's raw layout is 16-bit (some PIL versions
      open 16-bit PNGs as ``I``) or the image's maximum is in 256..65535: the 16-bit rule; maximum
      <= 255: the values are 8-bit levels; above 65535: scaled by 255 / (2**31 - 1).
    * ``F`` (float): NaN -> 0; maximum <= 1: [0, 1] scale (``round(255 x)``); else [0, 255] scale;
      clipped to that range.
    * EXIF (or XMP) orientation 2..8 is applied as ``PIL.ImageOps.exif_transpose`` does; an
      unreadable EXIF block counts as upright. Multi-frame files give their first frame.

    Raises:
        ImageReadError: the file is missing, a folder, not an image, truncated or corrupt; the
            message names the path and the decoder's reason.

    """
    path = Path(path)
    try:
        levels = _rgb_levels(path)
    except _UnreadableError as error:
        msg = f"cannot read image '{path}': {error}"
        raise ImageReadError(msg) from error
    return to_dtype(to_image(levels), torch.float32, scale=True)  # anomalib's own conversion, bit for bit


def geometry_warning(path: str | Path, width: int, height: int, resize_mode: str, side: int = 224) -> str | None:
    """A warning about an image the model will barely see, naming ``path``; ``None`` when the geometry is fine.

    * Tiny: the part of the image the model sees (``crop``: the centre square of the short side,
      ``squash``: all of it) has fewer pixels than a 32 x 32 image, so the ``side x side`` model
      input is mostly interpolation.
    * ``crop`` only: a side longer than 4x the other; the centre crop keeps only ``short / long`` of it.
    """
    check_choice("resize_mode", resize_mode, typing.get_args(ResizeMode))
    crop = resize_mode == "crop"
    short, long = min(width, height), max(width, height)
    seen = short * short if crop else width * height
    problems = []
    if seen < MIN_SIDE * MIN_SIDE:
        shown = f"its centre {short} x {short} pixels" if crop else f"its {seen} pixel(s)"
        problems.append(
            f"it is {width} x {height} pixels, so the model's {side} x {side} input is interpolated from {shown} "
            f"(fewer than a {MIN_SIDE} x {MIN_SIDE} image); scores and maps of so little detail mean little"
        )
    if crop and long > MAX_CROP_ASPECT * short:
        fraction = short / long
        kept = f"{fraction:.0%}" if fraction >= 0.01 else "under 1%"
        axis = "width" if width > height else "height"
        problems.append(
            f"its aspect ratio is {long / short:.0f}:1 and resize_mode='crop' keeps only the centre {kept} of its "
            f"{axis} ({short} of {long} pixels); resize_mode='squash' shows the whole image"
        )
    if not problems:
        return None
    return f"image '{path}': " + "; ".join(problems) + "."


class PredictImages(PredictDataset):
    """anomalib's ``PredictDataset`` reading with :func:`read_rgb_image`, skipping files it cannot read.

    At construction every file is decoded once (about 3 ms per megapixel JPEG, 10 ms per PNG, on one
    core, well below the model's forward pass, and it spares a failure half-way through a folder):
    each unreadable one is left out with a ``warnings.warn`` naming it and the reason, and listed in
    :attr:`skipped` as ``(path, reason)``; each readable one the model will barely see (see
    :func:`geometry_warning` for ``resize_mode``) is warned about and kept. Items are the parent's
    ``ImageItem`` (``image``, ``image_path``), the image read with :func:`read_rgb_image`.

    Raises:
        MissingFileError: ``path`` does not exist.
        OptionError: ``path`` is not an image file / holds no image files, or ``resize_mode`` is unknown.
        ImageReadError: no file under ``path`` can be read (each is named with its reason).

    """

    def __init__(
        self,
        path: str | Path,
        transform: Transform | None = None,
        image_size: int | tuple[int, int] = (256, 256),
        resize_mode: str = "crop",
    ) -> None:
        check_choice("resize_mode", resize_mode, typing.get_args(ResizeMode))  # before any file is read
        try:
            super().__init__(path=path, transform=transform, image_size=image_size)
        except FileNotFoundError as error:
            msg = f"path='{path}' does not exist; expected an image file or a folder of images."
            raise MissingFileError(msg) from error
        except ValueError as error:
            msg = f"path='{path}': {error}; expected an image file or a folder holding image files."
            raise OptionError(msg) from error
        self.resize_mode = resize_mode
        self.skipped: list[tuple[Path, str]] = []
        readable: list[Path] = []
        for file in self.image_filenames:
            try:
                levels = _rgb_levels(Path(file))
            except _UnreadableError as error:
                self.skipped.append((Path(file), str(error)))
                warnings.warn(f"skipping image '{file}': cannot read it: {error}", UserWarning, stacklevel=2)
                continue
            readable.append(file)
            height, width = levels.shape[:2]
            warning = geometry_warning(file, width, height, resize_mode)
            if warning is not None:
                warnings.warn(warning, UserWarning, stacklevel=2)
        if not readable:
            listed = "; ".join(f"'{file}' ({reason})" for file, reason in self.skipped[:10])
            more = f"; and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            msg = f"no image under '{path}' can be read: {listed}{more}."
            raise ImageReadError(msg)
        self.image_filenames = readable

    def __getitem__(self, index: int) -> ImageItem:
        """The image at ``index`` read with :func:`read_rgb_image`, transformed as the parent does."""
        image_filename = self.image_filenames[index]
        image = read_rgb_image(image_filename)
        if self.transform:
            image = self.transform(image)
        return ImageItem(image=image, image_path=str(image_filename))
