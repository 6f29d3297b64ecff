"""ExplanationVisualizer: ImageVisualizer's panels plus the answer band, saved under ImageVisualizer's names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.item_visualizer import visualize_image_item
from PIL import Image

from anomalib_agpt.callbacks import ExplanationVisualizer
from anomalib_agpt.callbacks.visualizer import ANOMALOUS_COLOR, NORMAL_COLOR, wrap_text

ANSWERS = [
    "Yes, there is an anomaly in the image, at the top left of the image.",
    "No, there is no anomaly in the image.",
]


def make_batch(tmp_path: Path, explanation: list[str] | None = ANSWERS) -> ImageBatch:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    paths = []
    for index, image in enumerate(images):
        folder = tmp_path / "data" / ("crack" if index == 0 else "good")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:03d}.png"
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    anomaly_map = torch.rand(2, 64, 64, generator=generator)
    return ImageBatch(
        image=images,
        image_path=paths,
        gt_label=torch.tensor([1, 0]),
        anomaly_map=anomaly_map,
        pred_score=torch.tensor([0.9, 0.1]),
        pred_label=torch.tensor([True, False]),
        pred_mask=anomaly_map > 0.7,
        explanation=explanation,
    )


def band(image: Image.Image, height: int) -> np.ndarray:
    """The pixels below the first ``height`` rows (the explanation band)."""
    return np.asarray(image.convert("RGB"))[height:].astype(int)


def count_near(pixels: np.ndarray, color: tuple[int, int, int], tolerance: int = 30) -> int:
    return int((np.abs(pixels - np.array(color)).max(axis=-1) <= tolerance).sum())


def fake_trainer(root: Path) -> SimpleNamespace:
    return SimpleNamespace(default_root_dir=str(root), datamodule=None)


def test_same_constructor_defaults_as_image_visualizer() -> None:
    ours, theirs = ExplanationVisualizer(), ImageVisualizer()
    for name in ("fields", "overlay_fields", "field_size", "fields_config", "overlay_fields_config", "text_config"):
        assert getattr(ours, name) == getattr(theirs, name)
    assert ours.output_dir is None
    custom = ExplanationVisualizer(field_size=(128, 96), fields=["image"], output_dir="x")
    assert custom.field_size == (128, 96)
    assert custom.fields == ["image"]
    assert custom.output_dir == "x"


def test_explanation_adds_a_band_under_the_panels(tmp_path: Path) -> None:
    visualizer = ExplanationVisualizer()
    with_text = [visualizer.render(item) for item in make_batch(tmp_path)]
    without_text = [visualizer.render(item) for item in make_batch(tmp_path, explanation=None)]
    for plain, annotated in zip(without_text, with_text, strict=True):
        assert plain is not None
        assert annotated is not None
        assert annotated.width == plain.width
        assert annotated.height > plain.height
        # The panels are untouched; the band has text on it (not just background).
        assert np.array_equal(np.asarray(annotated)[: plain.height], np.asarray(plain.convert("RGB")))
        pixels = band(annotated, plain.height)
        assert (pixels != 255).any(axis=-1).sum() > 100
        assert count_near(pixels, (20, 20, 20), tolerance=60) > 20  # the dark answer text


def test_verdict_colour_follows_the_yes_rule(tmp_path: Path) -> None:
    visualizer = ExplanationVisualizer()
    plain_height = visualizer.render(next(iter(make_batch(tmp_path, explanation=None)))).height
    anomalous, normal = (visualizer.render(item) for item in make_batch(tmp_path))
    anomalous_band, normal_band = band(anomalous, plain_height), band(normal, plain_height)
    assert count_near(anomalous_band, ANOMALOUS_COLOR) > 200
    assert count_near(anomalous_band, NORMAL_COLOR) == 0
    assert count_near(normal_band, NORMAL_COLOR) > 200
    assert count_near(normal_band, ANOMALOUS_COLOR) == 0
    # Red-ish and green-ish in plain terms, too.
    red = anomalous_band[..., 0] - np.maximum(anomalous_band[..., 1], anomalous_band[..., 2])
    green = normal_band[..., 1] - np.maximum(normal_band[..., 0], normal_band[..., 2])
    assert (red > 100).sum() > 200
    assert (green > 80).sum() > 200


def test_without_explanation_equals_image_visualizer(tmp_path: Path) -> None:
    visualizer = ExplanationVisualizer()
    reference = ImageVisualizer()
    for item in make_batch(tmp_path, explanation=None):
        ours = visualizer.render(item)
        theirs = visualize_image_item(
            item,
            fields=reference.fields,
            overlay_fields=reference.overlay_fields,
            field_size=reference.field_size,
            fields_config=reference.fields_config,
            overlay_fields_config=reference.overlay_fields_config,
            text_config=reference.text_config,
        )
        assert ours.size == theirs.size
        assert ours.mode == theirs.mode
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_empty_explanation_gives_no_band(tmp_path: Path) -> None:
    visualizer = ExplanationVisualizer()
    plain = visualizer.render(next(iter(make_batch(tmp_path, explanation=None))))
    empty = visualizer.render(next(iter(make_batch(tmp_path, explanation=["", ""]))))
    assert np.array_equal(np.asarray(plain), np.asarray(empty))


def test_long_answers_wrap_to_the_image_width(tmp_path: Path) -> None:
    visualizer = ExplanationVisualizer(field_size=(64, 64), fields=["image"], overlay_fields=[("image", [])])
    long_answer = "Yes, " + " ".join(["there is a scratch on the surface near the edge"] * 6) + " longword" * 3
    short, long = (visualizer.render(item) for item in make_batch(tmp_path, explanation=["Yes, a dent.", long_answer]))
    assert short.width == long.width
    assert long.height > short.height + 50  # several wrapped lines


def test_wrap_text_respects_the_width() -> None:
    from anomalib_agpt.callbacks.visualizer import load_font

    font = load_font(15)
    text = "Yes, there is an anomaly in the image, at the top left. " + "x" * 80
    lines = wrap_text(text, font, 120)
    assert len(lines) > 2
    assert all(font.getlength(line) <= 120 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_visualize_returns_the_rendered_images(tmp_path: Path) -> None:
    visualizer = ExplanationVisualizer()
    batch = make_batch(tmp_path)
    images = visualizer.visualize(batch)
    assert isinstance(images, list)
    assert len(images) == 2
    for image, item in zip(images, batch, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(visualizer.render(item)))


@pytest.mark.parametrize("hook", ["on_test_batch_end", "on_predict_batch_end"])
def test_hooks_save_under_image_visualizer_names(tmp_path: Path, hook: str) -> None:
    batch = make_batch(tmp_path)
    ours_root, theirs_root = tmp_path / "ours", tmp_path / "theirs"
    visualizer, reference = ExplanationVisualizer(), ImageVisualizer()
    getattr(visualizer, hook)(fake_trainer(ours_root), None, batch, batch, 0)
    getattr(reference, hook)(fake_trainer(theirs_root), None, batch, batch, 0)

    ours = sorted(path.relative_to(ours_root) for path in ours_root.rglob("*.png"))
    theirs = sorted(path.relative_to(theirs_root) for path in theirs_root.rglob("*.png"))
    assert ours == theirs == [Path("images/crack/000.png"), Path("images/good/001.png")]
    for relative, item in zip(ours, batch, strict=True):
        saved = Image.open(ours_root / relative)
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(visualizer.render(item).convert("RGB")))
        assert saved.height > Image.open(theirs_root / relative).height


def test_hooks_without_explanation_save_image_visualizer_files(tmp_path: Path) -> None:
    batch = make_batch(tmp_path, explanation=None)
    ExplanationVisualizer(output_dir=tmp_path / "ours").on_test_batch_end(fake_trainer(tmp_path), None, batch, batch, 0)
    ImageVisualizer(output_dir=tmp_path / "theirs").on_test_batch_end(fake_trainer(tmp_path), None, batch, batch, 0)
    for name in ("crack/000.png", "good/001.png"):
        ours, theirs = Image.open(tmp_path / "ours" / name), Image.open(tmp_path / "theirs" / name)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
