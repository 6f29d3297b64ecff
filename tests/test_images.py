"""Images as people have them: every pixel mode, EXIF rotation, broken files and odd shapes read as 8-bit RGB."""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from anomalib.data import ImageItem
from anomalib.data.utils import read_image
from PIL import Image

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.data import PredictImages, geometry_warning, read_rgb_image
from anomalib_agpt.errors import ImageReadError, MissingFileError, OptionError
from anomalib_agpt.model.references import load_reference_images

from .conftest import FIXTURES, make_model

ONE_LEVEL = 1 / 255 + 1e-6  # one 8-bit grey level, plus float32 rounding of level / 255
HEIGHT, WIDTH = 40, 72  # not square, so that a wrong rotation changes the shape; big enough for no tiny-warning
ORIENTATION = 0x0112


def rgb_levels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def grey_levels(seed: int = 1) -> np.ndarray:
    grey = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    grey[0, 0], grey[0, 1] = 0, 255  # the full range, so that range rules (I, F) see 8-bit data's extremes
    return grey


def as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def sixteen_bit(levels: np.ndarray, seed: int = 2) -> np.ndarray:
    """``level * 257`` moved by up to +-128: still nearer ``level`` than any other (PIL's high byte is not)."""
    noise = np.random.default_rng(seed).integers(-128, 129, levels.shape)
    return np.clip(levels.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


def big_endian(grey: np.ndarray) -> bytes:
    """16-bit big-endian bytes of ``grey`` (PIL's ``convert("I;16B")`` clips to 255, so it cannot make them)."""
    return sixteen_bit(grey).astype(">u2").tobytes()


def write_png_16(path: Path, levels: np.ndarray, colour_type: int, exif: bytes | None = None) -> Path:
    """A 16-bit PNG written chunk by chunk (grey + alpha, colour type 4, is beyond PIL's and OpenCV's writers)."""
    height, width = levels.shape[:2]
    rows = b"".join(b"\x00" + levels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    extra = chunk(b"eXIf", exif) if exif else b""
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


# What the file stores for an upright ``original``, written from the EXIF specification's meaning of each
# tag (where row 0 and column 0 of the stored image lie in the upright one), independently of PIL's table.
STORED_FOR_ORIENTATION: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # row 0 = top, column 0 = right
    3: lambda a: np.rot90(a, 2),  # row 0 = bottom, column 0 = right
    4: lambda a: a[::-1],  # row 0 = bottom, column 0 = left
    5: lambda a: a.transpose(1, 0, 2),  # row 0 = left, column 0 = top
    6: lambda a: np.rot90(a, 1),  # row 0 = right, column 0 = top
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # row 0 = right, column 0 = bottom
    8: lambda a: np.rot90(a, -1),  # row 0 = left, column 0 = bottom
}


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


# name -> (upright 8-bit RGB original, writer of the converted file, PIL mode the converted file opens as)
def _cases() -> dict[str, tuple[np.ndarray, Callable[[Path], Path], str]]:
    rgb, grey = rgb_levels(), grey_levels()
    alpha = np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P")
    paletted = np.array(palette.convert("RGB"))
    black_white = grey > 127

    def with_transparency(path: Path) -> Path:
        return save(palette, path / "p_transparent.png", transparency=0)

    return {
        "L": (as_rgb(grey), lambda d: save(Image.fromarray(grey), d / "l.png"), "L"),
        "RGBA": (rgb, lambda d: save(Image.fromarray(np.dstack([rgb, alpha])), d / "rgba.png"), "RGBA"),
        "LA": (as_rgb(grey), lambda d: save(Image.fromarray(np.dstack([grey, alpha]), "LA"), d / "la.png"), "LA"),
        "P": (paletted, lambda d: save(palette, d / "p.png"), "P"),
        "P+transparency": (paletted, with_transparency, "P"),
        "PA": (paletted, lambda d: save(palette.convert("PA"), d / "pa.tif"), "PA"),
        "1": (as_rgb(black_white * np.uint8(255)), lambda d: save(Image.fromarray(black_white), d / "1.png"), "1"),
        "CMYK": (rgb, lambda d: save(Image.fromarray(rgb).convert("CMYK"), d / "cmyk.tif"), "CMYK"),
        "I;16 png": (as_rgb(grey), lambda d: save(Image.fromarray(sixteen_bit(grey)), d / "i16.png"), "I;16"),
        "I;16 tif": (as_rgb(grey), lambda d: save(Image.fromarray(sixteen_bit(grey)), d / "i16.tif"), "I;16"),
        "I;16B tif": (
            as_rgb(grey),
            lambda d: save(Image.frombytes("I;16B", (WIDTH, HEIGHT), big_endian(grey)), d / "i16b.tif"),
            "I;16B",
        ),
        "I 16-bit values": (
            as_rgb(grey),
            lambda d: save(Image.fromarray(sixteen_bit(grey).astype(np.int32)), d / "i_16.tif"),
            "I",
        ),
        "I 8-bit values": (as_rgb(grey), lambda d: save(Image.fromarray(grey.astype(np.int32)), d / "i_8.tif"), "I"),
        "F [0, 1]": (as_rgb(grey), lambda d: save(Image.fromarray(grey.astype(np.float32) / 255), d / "f1.tif"), "F"),
        "F [0, 255]": (as_rgb(grey), lambda d: save(Image.fromarray(grey.astype(np.float32)), d / "f255.tif"), "F"),
        "RGB 16-bit png": (
            rgb,
            lambda d: d / "rgb16.png" if cv2.imwrite(str(d / "rgb16.png"), sixteen_bit(rgb)[..., ::-1]) else d,
            "RGB",
        ),
        "RGBA 16-bit png": (
            rgb,
            lambda d: write_png_16(d / "rgba16.png", np.dstack([sixteen_bit(rgb), sixteen_bit(alpha)]), 6),
            "RGBA",
        ),
        "LA 16-bit png": (
            as_rgb(grey),
            lambda d: write_png_16(d / "la16.png", np.dstack([sixteen_bit(grey), sixteen_bit(alpha)]), 4),
            "RGBA",  # PIL opens grey + alpha 16-bit PNGs as RGBA (high bytes)
        ),
        "RGB 16-bit tif": (
            rgb,
            lambda d: d / "rgb16.tif" if cv2.imwrite(str(d / "rgb16.tif"), sixteen_bit(rgb)[..., ::-1]) else d,
            "RGB",
        ),
        "RGB 16-bit png, EXIF 6": (
            rgb,
            lambda d: write_png_16(d / "rgb16_exif.png", sixteen_bit(np.rot90(rgb, 1)), 2, exif_bytes(6)[6:]),
            "RGB",
        ),
        **{
            f"EXIF {tag} png": (
                rgb,
                lambda d, tag=tag: save(
                    Image.fromarray(np.ascontiguousarray(STORED_FOR_ORIENTATION[tag](rgb))),
                    d / f"exif_{tag}.png",
                    exif=exif_bytes(tag),
                ),
                "RGB",
            )
            for tag in STORED_FOR_ORIENTATION
        },
    }


CASES = _cases()


def write_pair(name: str, folder: Path) -> tuple[Path, Path]:
    original, write, _ = CASES[name]
    original_path = save(Image.fromarray(original), folder / "original.png")
    return original_path, write(folder)


@pytest.mark.parametrize("name", list(CASES))
def test_every_mode_reads_as_its_8_bit_rgb_original(name: str, tmp_path: Path) -> None:
    original, converted = write_pair(name, tmp_path)
    with Image.open(converted) as opened:
        assert opened.mode == CASES[name][2]  # the file really is of the mode under test
    ours, expected = read_rgb_image(converted), read_rgb_image(original)
    assert ours.dtype == torch.float32
    assert ours.shape == (3, HEIGHT, WIDTH)
    torch.testing.assert_close(ours, expected, atol=ONE_LEVEL, rtol=0)
    # every rule above is exact for files made from 8-bit levels (16-bit ones rounded, not truncated)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("name", ["I;16 png", "I;16B tif", "I 16-bit values", "F [0, 1]", "EXIF 6 png", "EXIF 8 png"])
def test_anomalib_reader_misreads_these(name: str, tmp_path: Path) -> None:
    """The reason for :func:`read_rgb_image`: ``Image.open(path).convert("RGB")`` clips or ignores the orientation."""
    original, converted = write_pair(name, tmp_path)
    theirs = read_image(converted, as_tensor=True)
    assert theirs.shape != (3, HEIGHT, WIDTH) or (theirs - read_image(original, as_tensor=True)).abs().max() > 0.5


def test_pil_keeps_the_high_byte_of_16_bit_colour(tmp_path: Path) -> None:
    """PIL truncates 16-bit colour (one level low for about half of the pixels here); OpenCV's values are rounded."""
    original, converted = write_pair("RGB 16-bit png", tmp_path)
    theirs, ours = read_image(converted, as_tensor=True), read_rgb_image(converted)
    torch.testing.assert_close(theirs, read_rgb_image(original), atol=ONE_LEVEL, rtol=0)
    assert not torch.equal(theirs, ours)
    assert torch.equal(ours, read_rgb_image(original))


@pytest.mark.parametrize("path", sorted((FIXTURES / "images").iterdir()), ids=lambda path: path.name)
def test_8_bit_files_read_exactly_as_anomalib_reads_them(path: Path) -> None:
    ours, theirs = read_rgb_image(path), read_image(path, as_tensor=True)
    assert ours.dtype == theirs.dtype
    assert type(ours) is type(theirs)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_8_bit_rgb_files_of_each_format_read_as_anomalib(suffix: str, tmp_path: Path) -> None:
    path = save(Image.fromarray(rgb_levels()), tmp_path / f"rgb{suffix}")
    assert torch.equal(read_rgb_image(path), read_image(path, as_tensor=True))


def test_exif_rotated_jpeg_is_shown_upright(tmp_path: Path) -> None:
    """A camera's portrait photo: stored sideways with tag 6; the decoded pixels turned a quarter clockwise."""
    stored = np.ascontiguousarray(STORED_FOR_ORIENTATION[6](rgb_levels()))
    path = save(Image.fromarray(stored), tmp_path / "portrait.jpg", exif=exif_bytes(6), quality=95)
    sideways = read_image(path, as_tensor=True)  # anomalib: as stored
    assert sideways.shape == (3, WIDTH, HEIGHT)
    assert torch.equal(read_rgb_image(path), torch.rot90(sideways, -1, dims=(1, 2)))


def test_a_broken_exif_block_still_reads_the_pixels(tmp_path: Path) -> None:
    path = save(Image.fromarray(rgb_levels()), tmp_path / "bad_exif.jpg", exif=b"Exif\x00\x00garbage", quality=95)
    assert torch.equal(read_rgb_image(path), read_image(path, as_tensor=True))


@pytest.fixture(scope="module")
def zero_shot(weights: dict[str, Any]) -> AnomalyGPT:
    return make_model(**weights, class_name="washer").eval()


def anomaly_maps(model: AnomalyGPT, paths: list[Path]) -> torch.Tensor:
    """The product's pre-processing and forward on the files as :func:`read_rgb_image` reads them."""
    images = torch.stack([read_rgb_image(path) for path in paths])
    with torch.no_grad():
        return model.model(model.pre_processor.transform(images)).anomaly_map


def test_16_bit_and_rotated_files_give_the_8_bit_originals_anomaly_map(zero_shot: AnomalyGPT, tmp_path: Path) -> None:
    grey = np.array(Image.open(FIXTURES / "images" / "query_1_gray_scratch.png"))
    colour = np.array(Image.open(FIXTURES / "images" / "query_0_rgb_blob.png"))
    paths = [
        save(Image.fromarray(as_rgb(grey)), tmp_path / "grey.png"),
        save(Image.fromarray(sixteen_bit(grey)), tmp_path / "grey16.png"),  # I;16
        save(Image.fromarray(colour), tmp_path / "colour.png"),
        save(Image.fromarray(np.ascontiguousarray(np.rot90(colour, 1))), tmp_path / "tag6.png", exif=exif_bytes(6)),
        save(Image.fromarray(np.ascontiguousarray(np.rot90(colour, -1))), tmp_path / "tag8.png", exif=exif_bytes(8)),
    ]
    assert Image.open(paths[1]).mode == "I;16"
    maps = anomaly_maps(zero_shot, paths)
    # The reader gives the same 8-bit levels (asserted above), so the model's input is identical and
    # its deterministic CPU forward gives the same map; 1e-6 only allows for a kernel's summation
    # order. It is far below what a real difference moves: one grey level on every pixel, below.
    tolerance = 1e-6
    torch.testing.assert_close(maps[1], maps[0], atol=tolerance, rtol=0)
    torch.testing.assert_close(maps[3], maps[2], atol=tolerance, rtol=0)
    torch.testing.assert_close(maps[4], maps[2], atol=tolerance, rtol=0)
    darker = save(Image.fromarray((as_rgb(grey).astype(np.int64) - 1).clip(0).astype(np.uint8)), tmp_path / "d.png")
    assert (anomaly_maps(zero_shot, [darker])[0] - maps[0]).abs().max() > 100 * tolerance
    # what anomalib's reader would have fed the model: an all-but-white image, another map
    with torch.no_grad():
        misread = zero_shot.model(zero_shot.pre_processor.transform(read_image(paths[1], as_tensor=True)[None]))
    assert (misread.anomaly_map[0] - maps[0]).abs().max() > 100 * tolerance


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    whole = save(Image.fromarray(rgb_levels()), tmp_path / "whole.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError, match=r"cannot read image '.*truncated\.png': .*truncated"):
        read_rgb_image(truncated)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"not an image at all", "cannot identify"), (None, "no such file"), ("folder", "folder")],
    ids=["garbage", "missing", "folder"],
)
def test_unreadable_files_name_the_path_and_reason(content: bytes | str | None, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=rf"'{path}'.*{reason}") as caught:
        read_rgb_image(path)
    assert isinstance(caught.value, ValueError)  # serve's handlers catch it as a ValueError


def write_folder(folder: Path, good: int, corrupt: int) -> list[Path]:
    folder.mkdir()
    for index in range(good):
        save(Image.fromarray(rgb_levels(index)), folder / f"good_{index}.png")
    broken = []
    for index in range(corrupt):
        broken.append(folder / f"corrupt_{index}.png")
        broken[-1].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return broken


def test_predict_images_skips_and_names_corrupt_files(tmp_path: Path) -> None:
    (corrupt,) = write_folder(tmp_path / "images", good=2, corrupt=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = PredictImages(tmp_path / "images")
    assert [str(warning.message).split(":")[0] for warning in caught] == [f"skipping image '{corrupt}'"]
    assert len(dataset) == 2
    assert [path for path, _ in dataset.skipped] == [corrupt]
    assert dataset.skipped[0][1]  # the reason
    items = [dataset[index] for index in range(len(dataset))]
    assert all(isinstance(item, ImageItem) for item in items)
    assert [Path(item.image_path).name for item in items] == ["good_0.png", "good_1.png"]
    assert torch.equal(items[1].image, read_rgb_image(tmp_path / "images" / "good_1.png"))
    batch = dataset.collate_fn(items)
    assert batch.image.shape == (2, 3, HEIGHT, WIDTH)


def test_predict_images_reads_16_bit_files_and_applies_the_transform(tmp_path: Path) -> None:
    path = save(Image.fromarray(sixteen_bit(grey_levels())), tmp_path / "grey16.png")
    dataset = PredictImages(path, transform=lambda image: image * 2)
    original = save(Image.fromarray(as_rgb(grey_levels())), tmp_path / "grey.png")
    assert torch.equal(dataset[0].image, 2 * read_rgb_image(original))


def test_predict_images_refuses_a_folder_of_corrupt_files(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", good=0, corrupt=2)
    listing = r"no image under '.*images' can be read: '.*corrupt_0\.png' \(.*\); '.*corrupt_1\.png' \(.*\)\."
    with pytest.warns(UserWarning, match="skipping image"), pytest.raises(ImageReadError, match=listing):
        PredictImages(tmp_path / "images")


def test_predict_images_names_bad_paths_and_options(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="missing"):
        PredictImages(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptionError, match="empty"):
        PredictImages(tmp_path / "empty")
    with pytest.raises(OptionError, match="resize_mode='stretch'"):
        PredictImages(tmp_path / "empty", resize_mode="stretch")


def test_geometry_warnings(tmp_path: Path) -> None:
    assert geometry_warning("strip.png", 2000, 20, "squash") is None  # 40000 pixels, all of them seen
    crop = geometry_warning("strip.png", 2000, 20, "crop")
    assert crop is not None
    assert "'strip.png'" in crop
    assert "centre 1% of its width" in crop
    assert "20 x 20" in crop  # tiny too: the crop sees 20 x 20 pixels
    assert "height" in str(geometry_warning("tall.png", 100, 500, "crop"))
    assert geometry_warning("square.png", 224, 224, "crop") is None
    assert geometry_warning("wide.png", 400, 100, "crop") is None  # 4:1 is still fine
    assert geometry_warning("dot.png", 1, 1, "squash") is not None
    with pytest.raises(OptionError, match="resize_mode='fit'"):
        geometry_warning("x.png", 10, 10, "fit")

    strip = save(Image.fromarray(np.zeros((20, 2000, 3), np.uint8)), tmp_path / "strip.png")
    with pytest.warns(UserWarning, match=r"strip\.png.*centre 1%"):
        PredictImages(strip, resize_mode="crop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PredictImages(strip, resize_mode="squash")


def test_reference_images_warn_about_a_1x1_reference(tmp_path: Path) -> None:
    dot = save(Image.fromarray(np.zeros((1, 1, 3), np.uint8)), tmp_path / "dot.png")
    also_tiny = save(Image.fromarray(np.zeros((1, 1, 3), np.uint8)), tmp_path / "also_tiny.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = load_reference_images([dot, also_tiny], transform=None, resize_mode="crop")
    assert images.shape == (2, 3, 1, 1)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2  # one per reference, each naming its file
    assert messages[0].startswith(f"reference image '{dot}': it is 1 x 1 pixels")
    assert f"'{also_tiny}'" in messages[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_reference_images([dot], transform=None)  # no resize_mode: no warning
