"""ExplanationVisualizer: ImageVisualizer's panels plus the answer band with labelled verdicts, under its file names."""

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
from anomalib_agpt.callbacks.visualizer import (
    ANOMALOUS_COLOR,
    NORMAL_COLOR,
    Band,
    drawable,
    score_threshold,
    score_verdict,
    verdicts,
    wrap_text,
)

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


def fake_module(threshold: float | None, normalization: bool = True) -> SimpleNamespace:
    """A model whose anomalib post-processor has fitted ``threshold`` (None: a fresh one, nothing fitted)."""
    from anomalib.post_processing import PostProcessor

    post = PostProcessor(enable_normalization=normalization)
    if threshold is not None:
        post._image_threshold = torch.tensor(threshold)
    return SimpleNamespace(post_processor=post)


def record_bands(visualizer: ExplanationVisualizer, monkeypatch: pytest.MonkeyPatch) -> list[Band]:
    """Every band ``visualizer`` composes (and then draws), in order."""
    bands: list[Band] = []
    compose = visualizer.compose_band

    def recording(*args: object, **kwargs: object) -> Band:
        band = compose(*args, **kwargs)  # type: ignore[arg-type]
        bands.append(band)
        return band

    monkeypatch.setattr(visualizer, "compose_band", recording)
    return bands


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


# --------------------------------------------------------------------------------------------
# Labelled verdicts: which comes from the answer, which from the score threshold
# --------------------------------------------------------------------------------------------
def test_verdicts_say_where_they_come_from() -> None:
    assert [v.text for v in verdicts(ANSWERS[0], 0.9, 0.5)] == ["answer: Anomalous", "score > threshold: Anomalous"]
    assert [v.text for v in verdicts(ANSWERS[1], 0.2, 0.5)] == ["answer: Normal", "score ≤ threshold: Normal"]
    # the two sources can disagree: both are shown, each with its label
    disagree = verdicts(ANSWERS[1], 0.9, 0.5)
    assert [(v.source, v.anomalous) for v in disagree] == [("answer", False), ("score > threshold", True)]
    assert [v.text for v in verdicts(None, 0.2, 0.5)] == ["score ≤ threshold: Normal"]  # no answer: no answer verdict
    assert verdicts("", None, None) == []


def test_a_missing_threshold_gives_no_score_verdict() -> None:
    for threshold in (None, float("nan")):
        assert [v.text for v in verdicts(ANSWERS[1], 0.9, threshold)] == ["answer: Normal"]
    band = ExplanationVisualizer().compose_band(ANSWERS[1], 0.9, None, width=256)
    assert [v.text for v in band.verdicts] == ["answer: Normal"]
    assert "No fitted threshold: no score verdict" in band.note
    fitted = ExplanationVisualizer().compose_band(ANSWERS[1], 0.9, 0.5, width=256)
    assert [v.text for v in fitted.verdicts] == ["answer: Normal", "score > threshold: Anomalous"]
    assert "score: the image score against the fitted threshold" in fitted.note


def test_score_threshold_is_the_post_processors_fitted_one() -> None:
    assert score_threshold(None) is None
    assert score_threshold(SimpleNamespace()) is None
    assert score_threshold(fake_module(None)) is None  # a fresh PostProcessor labels scores, but fitted nothing
    assert score_threshold(fake_module(3.2)) == pytest.approx(0.5)  # normalised scores: 0.5 is the fitted threshold


@pytest.mark.parametrize("normalization", [True, False])
def test_the_score_verdict_agrees_with_anomalib_s_own_label(normalization: bool) -> None:
    from anomalib.data import ImageBatch

    module = fake_module(3.2, normalization=normalization)
    scores = torch.tensor([0.2, 0.6, 3.0, 3.5])
    batch = ImageBatch(image=torch.zeros(4, 3, 8, 8), pred_score=scores.clone(), anomaly_map=torch.zeros(4, 1, 8, 8))
    module.post_processor.post_process_batch(batch)
    threshold = score_threshold(module)
    ours = [score_verdict(float(score), threshold).anomalous for score in batch.pred_score]
    assert ours == batch.pred_label.tolist()
    assert any(ours)
    assert not all(ours)


@pytest.mark.parametrize("hook", ["on_test_batch_end", "on_predict_batch_end"])
def test_hooks_label_both_verdicts_and_give_none_from_the_score_without_a_threshold(
    tmp_path: Path, hook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch(tmp_path)  # answers: Yes / No; scores 0.9 / 0.1
    visualizer = ExplanationVisualizer(output_dir=tmp_path / "out")
    bands = record_bands(visualizer, monkeypatch)
    getattr(visualizer, hook)(fake_trainer(tmp_path), fake_module(None), batch, batch, 0)
    assert [[v.text for v in band.verdicts] for band in bands] == [["answer: Anomalous"], ["answer: Normal"]]
    assert all("no score verdict" in band.note for band in bands)

    bands.clear()
    getattr(visualizer, hook)(fake_trainer(tmp_path), fake_module(0.3), batch, batch, 0)
    assert [[v.text for v in band.verdicts] for band in bands] == [
        ["answer: Anomalous", "score > threshold: Anomalous"],
        ["answer: Normal", "score ≤ threshold: Normal"],
    ]
    good = list(batch)[1]
    saved = np.asarray(Image.open(tmp_path / "out" / "good" / "001.png").convert("RGB"))
    assert np.array_equal(saved, np.asarray(visualizer.render(good, 0.5)))  # what was composed is what was saved


def test_drawn_lines_are_the_composed_ones_in_the_built_in_font() -> None:
    visualizer = ExplanationVisualizer()
    band = visualizer.compose_band("No, all good. " * 12, 0.1, 0.5, width=200)
    font_width = 200 - 2 * visualizer.padding
    from anomalib_agpt.callbacks.visualizer import load_font

    font = load_font(visualizer.font_size)
    assert len(band.lines) > 1
    assert all(font.getlength(line) <= font_width for line in band.lines + band.note_lines)
    assert drawable(band.verdicts[-1].text) == "score <= threshold: Normal"  # the font has no '≤'
    assert drawable("a ≥ b") == "a >= b"
