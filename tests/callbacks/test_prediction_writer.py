"""PredictionWriter: one JSON line per image, maps as .npy, truncated per run, written after post-processing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from anomalib_agpt.callbacks import PredictionWriter

ANSWERS = [
    "Yes, there is an anomaly in the image, at the top left of the image.",
    "No, there is no anomaly in the image.",
]


def make_batch(
    tmp_path: Path,
    explanation: list[str] | None = ANSWERS,
    folders: tuple[str, str] = ("crack", "good"),
    names: tuple[str, str] = ("000.png", "001.png"),
    seed: int = 0,
) -> ImageBatch:
    generator = torch.Generator().manual_seed(seed)
    return ImageBatch(
        image=torch.rand(2, 3, 64, 64, generator=generator),
        image_path=[str(tmp_path / "data" / folder / name) for folder, name in zip(folders, names, strict=True)],
        anomaly_map=torch.rand(2, 64, 64, generator=generator),
        pred_score=torch.tensor([0.9, 0.1]),
        pred_label=torch.tensor([True, False]),
        explanation=explanation,
    )


def read_lines(writer: PredictionWriter) -> list[dict[str, Any]]:
    return [json.loads(line) for line in writer.predictions_file.read_text(encoding="utf-8").splitlines()]


def fake_trainer(root: Path) -> SimpleNamespace:
    return SimpleNamespace(default_root_dir=str(root), datamodule=None)


def test_lines_match_the_batch(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path / "out")
    writer.start()
    batch = make_batch(tmp_path)
    writer.write_batch(batch)
    lines = read_lines(writer)
    assert len(lines) == 2
    for index, line in enumerate(lines):
        assert set(line) == {"image_path", "pred_score", "pred_label", "explanation", "anomaly_map"}
        assert line["image_path"] == batch.image_path[index]
        assert isinstance(line["pred_score"], float)
        assert line["pred_score"] == pytest.approx(float(batch.pred_score[index]))
        assert line["pred_label"] is bool(batch.pred_label[index])
        assert line["explanation"] == ANSWERS[index]
        saved = np.load(writer.output_dir / line["anomaly_map"])
        assert saved.dtype == np.float32
        assert saved.shape == (64, 64)
        np.testing.assert_array_equal(saved, batch.anomaly_map[index].numpy())
    assert [line["anomaly_map"] for line in lines] == ["maps/000.npy", "maps/001.npy"]


def test_missing_fields_are_null(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path / "out")
    writer.start()
    writer.write_batch(ImageBatch(image=torch.rand(2, 3, 8, 8), pred_score=torch.tensor([0.3, 0.7])))
    nulls = {"image_path": None, "pred_label": None, "explanation": None, "anomaly_map": None}
    assert read_lines(writer) == [
        {**nulls, "pred_score": pytest.approx(0.3)},
        {**nulls, "pred_score": pytest.approx(0.7)},
    ]


def test_explanation_none_is_null(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path / "out")
    writer.start()
    writer.write_batch(make_batch(tmp_path, explanation=None))
    lines = read_lines(writer)
    assert [line["explanation"] for line in lines] == [None, None]
    assert [line["pred_label"] for line in lines] == [True, False]


def test_save_maps_false(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path / "out", save_maps=False)
    writer.start()
    writer.write_batch(make_batch(tmp_path))
    assert [line["anomaly_map"] for line in read_lines(writer)] == [None, None]
    assert not (tmp_path / "out" / "maps").exists()


def test_equal_stems_get_unique_map_names(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path / "out")
    writer.start()
    first = make_batch(tmp_path, folders=("crack", "good"), names=("000.png", "000.png"), seed=1)
    second = make_batch(tmp_path, folders=("crack", "crack"), names=("000.png", "000.jpg"), seed=2)
    writer.write_batch(first)
    writer.write_batch(second)
    lines = read_lines(writer)
    names = [line["anomaly_map"] for line in lines]
    assert names == ["maps/000.npy", "maps/good_000.npy", "maps/crack_000.npy", "maps/crack_000_1.npy"]
    maps = [*first.anomaly_map, *second.anomaly_map]
    for line, expected in zip(lines, maps, strict=True):
        np.testing.assert_array_equal(np.load(writer.output_dir / line["anomaly_map"]), expected.numpy())


def test_start_truncates_and_defaults_under_default_root_dir(tmp_path: Path) -> None:
    writer = PredictionWriter()
    trainer = fake_trainer(tmp_path / "run")
    for start, end in (("on_test_start", "on_test_end"), ("on_predict_start", "on_predict_end")):
        getattr(writer, start)(trainer, None)
        assert writer.predictions_file == tmp_path / "run" / "predictions" / "predictions.jsonl"
        assert writer.predictions_file.read_text() == ""
        writer.on_test_batch_end(trainer, None, make_batch(tmp_path), make_batch(tmp_path), 0)
        writer.on_predict_batch_end(trainer, None, make_batch(tmp_path), make_batch(tmp_path), 1)
        getattr(writer, end)(trainer, None)
        lines = read_lines(writer)
        assert len(lines) == 4  # this run only: the earlier run's lines are gone
        # Names restart with the run, so a rerun overwrites rather than piles up maps.
        assert [line["anomaly_map"] for line in lines[:2]] == ["maps/000.npy", "maps/001.npy"]


def test_write_batch_needs_an_output_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="output_dir"):
        PredictionWriter().write_batch(make_batch(tmp_path))


# ----------------------------------------------------------------------------------------------
# Through a real Trainer: the writer (a trainer callback) runs before the model's callbacks, such
# as anomalib's post-processor, yet must write the post-processed values.


class ThresholdCallback(Callback):
    """Stands in for anomalib's PostProcessor: normalises scores and sets labels in on_*_batch_end."""

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: ImageBatch, *args) -> None:
        outputs.pred_score = outputs.pred_score / 10
        outputs.pred_label = outputs.pred_score > 0.05

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: ImageBatch, *args) -> None:
        self.on_test_batch_end(trainer, pl_module, outputs)


class TinyModel(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def test_step(self, batch: ImageBatch, *args) -> ImageBatch:
        return batch.update(pred_score=batch.image.mean(dim=(1, 2, 3)), anomaly_map=batch.image.mean(dim=1))

    def predict_step(self, batch: ImageBatch, *args) -> ImageBatch:
        return self.test_step(batch)

    def configure_callbacks(self) -> list[Callback]:
        return [ThresholdCallback()]


@pytest.mark.parametrize("stage", ["test", "predict"])
def test_trainer_run_writes_post_processed_values(tmp_path: Path, stage: str) -> None:
    batches = [
        ImageBatch(
            image=torch.full((2, 3, 4, 4), value),
            image_path=[str(tmp_path / f"a{value}.png"), str(tmp_path / f"b{value}.png")],
            explanation=["Yes, a crack.", "No."],
        )
        for value in (0.2, 0.8, 0.4)
    ]
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)
    writer = PredictionWriter(tmp_path / "out")
    trainer = Trainer(
        callbacks=[writer], accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    for _ in range(2):  # a rerun replaces the file
        getattr(trainer, stage)(TinyModel(), loader)
        lines = read_lines(writer)
        assert len(lines) == 6
        assert [line["pred_score"] for line in lines] == pytest.approx([0.02, 0.02, 0.08, 0.08, 0.04, 0.04])
        assert [line["pred_label"] for line in lines] == [False, False, True, True, False, False]
        assert [line["explanation"] for line in lines] == ["Yes, a crack.", "No."] * 3
        assert [line["image_path"] for line in lines] == [p for batch in batches for p in batch.image_path]
        np.testing.assert_allclose(np.load(writer.output_dir / lines[2]["anomaly_map"]), np.full((4, 4), 0.8))
