"""AnomalyGPT through anomalib: fit, test from the checkpoint, predict, export, for zero- and few-shot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib import LearningType
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from anomalib.models import get_model, list_models
from lightning.pytorch import Callback

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.data import make_synthetic_mvtec

from .conftest import auroc_by_ranks, f1_by_counts, grouped, make_model

CATEGORY = "washer"
NUM_TRAIN, NUM_GOOD, NUM_DEFECT = 4, 2, 2
NUM_TEST = NUM_GOOD + 2 * NUM_DEFECT  # two defect types


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"),
        categories=(CATEGORY,),
        num_train=NUM_TRAIN,
        num_test_good=NUM_GOOD,
        num_test_defect=NUM_DEFECT,
        image_size=64,
    )


def datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=3, num_workers=0)


def engine(root: Path, callbacks: list[Callback] | None = None) -> Engine:
    return Engine(
        default_root_dir=root,
        logger=False,
        devices=1,
        max_epochs=1,
        enable_progress_bar=False,
        callbacks=callbacks,
    )


class KeepTestBatches(Callback):
    """Keeps a reference to every test batch.

    anomalib's post-processor and evaluator update these very objects, so after the run they hold the
    scores, labels, maps and masks the reported metrics were computed from.
    """

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
        self.batches.append(outputs)


@pytest.fixture(scope="module", params=[0, 2], ids=["zero_shot", "few_shot"])
def fitted(
    request: pytest.FixtureRequest,
    weights: dict[str, Any],
    dataset_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One ``Engine.fit`` per learning type; later tests start from its checkpoint."""
    k_shot = request.param
    results = tmp_path_factory.mktemp(f"results_k{k_shot}")
    model = make_model(**weights, k_shot=k_shot)
    engine(results).fit(model=model, datamodule=datamodule(dataset_root))
    checkpoint = results / "AnomalyGPT" / "MVTecAD" / CATEGORY / "v0" / "weights" / "lightning" / "model.ckpt"
    return {"k_shot": k_shot, "model": model, "checkpoint": checkpoint, "results": results}


def test_learning_type_and_registration(weights: dict[str, Any]) -> None:
    assert make_model(**weights).learning_type == LearningType.ZERO_SHOT
    assert make_model(**weights, k_shot=3).learning_type == LearningType.FEW_SHOT
    assert make_model(**weights).trainer_arguments == {}
    assert "anomaly_g_p_t" in list_models()
    assert isinstance(get_model("AnomalyGPT", **grouped(**weights)), AnomalyGPT)


def test_fit_resolves_class_name_and_references(fitted: dict[str, Any], dataset_root: Path) -> None:
    model = fitted["model"]
    assert model.model.class_name == CATEGORY
    assert model.model.num_reference_images == fitted["k_shot"]
    if fitted["k_shot"]:
        # the first k train files in file order, through the query pre-processing
        paths = sorted((dataset_root / CATEGORY / "train" / "good").glob("*.png"))[: fitted["k_shot"]]
        images = torch.stack([model.pre_processor.transform(read_image(p, as_tensor=True)) for p in paths])
        expected = make_model(**_weights_of(model))
        expected.model.set_references(images)
        torch.testing.assert_close(model.model.reference_memory, expected.model.reference_memory)


def _weights_of(model: AnomalyGPT) -> dict[str, Any]:
    keys = ("imagebind_checkpoint", "anomalygpt_checkpoint", "vision_heads", "text_heads")
    return {key: getattr(model.hparams["weights"], key) for key in keys}


def test_checkpoint_holds_no_frozen_weights(fitted: dict[str, Any]) -> None:
    checkpoint = torch.load(fitted["checkpoint"], weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert keys == {
        "model.text_features",
        "model.reference_memory",
        "post_processor._image_threshold",
        "post_processor._pixel_threshold",
        "post_processor.image_min",
        "post_processor.image_max",
        "post_processor.pixel_min",
        "post_processor.pixel_max",
    }
    assert checkpoint["anomalygpt_class_name"] == CATEGORY
    assert checkpoint["hyper_parameters"]["few_shot"]["k_shot"] == fitted["k_shot"]
    assert checkpoint["state_dict"]["model.reference_memory"].shape[1] == fitted["k_shot"] * 256


def test_load_from_checkpoint_reproduces_outputs(fitted: dict[str, Any], dataset_root: Path) -> None:
    restored = AnomalyGPT.load_from_checkpoint(fitted["checkpoint"]).eval()
    original = fitted["model"].eval()
    image = read_image(dataset_root / CATEGORY / "test" / "scratch" / "000.png", as_tensor=True).unsqueeze(0)
    assert restored.model.class_name == CATEGORY
    for field in ("pred_score", "anomaly_map"):
        torch.testing.assert_close(getattr(restored(image), field), getattr(original(image), field))


def test_checkpoint_loads_whatever_evaluator_ran(weights: dict[str, Any]) -> None:
    """Metric buffers (AUPRO's fpr_limit, as the leaderboard adds) stay out of checkpoints and never block a load."""
    from anomalib.metrics import AUPRO

    evaluator = AnomalyGPT.configure_evaluator()
    evaluator.test_metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
    measured = make_model(**weights, evaluator=evaluator)
    assert any(key.startswith("evaluator.") for key in measured.state_dict())
    checkpoint = {"state_dict": measured.state_dict()}
    measured.on_save_checkpoint(checkpoint)
    assert not any(key.startswith("evaluator.") for key in checkpoint["state_dict"])

    older = {"state_dict": measured.state_dict()}  # as written before metric states were dropped
    make_model(**weights).on_load_checkpoint(older)
    assert not any(key.startswith("evaluator.") for key in older["state_dict"])


def test_test_from_checkpoint_reports_metrics(
    fitted: dict[str, Any],
    weights: dict[str, Any],
    dataset_root: Path,
) -> None:
    """Each reported metric equals the one computed by hand from the test images' scores, labels and maps."""
    model = make_model(**weights, k_shot=fitted["k_shot"])
    kept = KeepTestBatches()
    metrics = engine(fitted["results"], [kept]).test(
        model=model,
        datamodule=datamodule(dataset_root),
        ckpt_path=fitted["checkpoint"],
    )[0]
    assert set(metrics) == {"image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"}

    def field(name: str) -> torch.Tensor:
        return torch.cat([getattr(batch, name).flatten() for batch in kept.batches])

    labels, masks = field("gt_label"), field("gt_mask")
    assert len(labels) == NUM_TEST
    assert labels.sum() == 2 * NUM_DEFECT  # both classes present: the AUROC is defined
    assert metrics["image_AUROC"] == pytest.approx(auroc_by_ranks(field("pred_score"), labels), abs=1e-6)
    assert metrics["image_F1Score"] == pytest.approx(f1_by_counts(field("pred_label"), labels), abs=1e-6)
    # pixel AUROC: ~300,000 float32 values summed in a different order than torchmetrics does
    assert metrics["pixel_AUROC"] == pytest.approx(auroc_by_ranks(field("anomaly_map"), masks), abs=1e-5)
    assert metrics["pixel_F1Score"] == pytest.approx(f1_by_counts(field("pred_mask"), masks), abs=1e-6)
    # restored, not recomputed: the memory is the fitted one
    torch.testing.assert_close(model.model.reference_memory, fitted["model"].model.reference_memory)


def post_processed(raw: torch.Tensor, threshold: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """anomalib's normalisation written out: the threshold maps to 0.5, the validation range to width 1, clamped."""
    return ((raw - threshold) / (high - low) + 0.5).clamp(0, 1)


def assert_post_processed_raw_outputs(batches: list[Any], fitted: dict[str, Any]) -> None:
    """Scores, maps, labels and masks equal the fitted model's raw output normalised with the stored thresholds."""
    state = torch.load(fitted["checkpoint"], weights_only=False)["state_dict"]
    stats = {key.removeprefix("post_processor."): value for key, value in state.items() if "post_processor." in key}
    assert all(torch.isfinite(value) for value in stats.values())  # fitted, so no fallback path is taken
    module = fitted["model"].eval()
    for batch in batches:
        images = torch.cat([read_image(path, as_tensor=True).unsqueeze(0) for path in batch.image_path])
        with torch.no_grad():
            raw = module.model(module.pre_processor.transform(images))
        score = post_processed(raw.pred_score, stats["_image_threshold"], stats["image_min"], stats["image_max"])
        anomaly_map = post_processed(raw.anomaly_map, stats["_pixel_threshold"], stats["pixel_min"], stats["pixel_max"])
        torch.testing.assert_close(batch.pred_score, score, atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.anomaly_map.reshape(anomaly_map.shape), anomaly_map, atol=1e-5, rtol=0)
        # labels and masks: the normalised threshold is 0.5 (values within rounding of it may go either way)
        clear = (score - 0.5).abs() > 1e-4
        assert torch.equal(batch.pred_label[clear], (score > 0.5)[clear])
        clear = (anomaly_map - 0.5).abs() > 1e-4
        assert torch.equal(batch.pred_mask.reshape(anomaly_map.shape)[clear], (anomaly_map > 0.5)[clear])


def test_predict_with_datamodule_and_folder(
    fitted: dict[str, Any],
    weights: dict[str, Any],
    dataset_root: Path,
) -> None:
    run = engine(fitted["results"])
    batches = run.predict(
        model=make_model(**weights, k_shot=fitted["k_shot"]),
        datamodule=datamodule(dataset_root),
        ckpt_path=fitted["checkpoint"],
    )
    assert sum(len(batch.image) for batch in batches) == NUM_TEST
    assert batches[0].anomaly_map.shape[-2:] == (224, 224)
    assert_post_processed_raw_outputs(batches, fitted)
    folder = dataset_root / CATEGORY / "test" / "scratch"
    batches = run.predict(
        model=make_model(**weights, k_shot=fitted["k_shot"]),
        data_path=folder,
        ckpt_path=fitted["checkpoint"],
    )
    assert sorted(path for batch in batches for path in batch.image_path) == sorted(map(str, folder.glob("*.png")))
    assert_post_processed_raw_outputs(batches, fitted)


def test_text_features_are_computed_once_per_run(
    weights: dict[str, Any], dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit (validation set-up) then test over two batches each: the text tower encodes the class's prompts once."""
    model = make_model(**weights)
    encode = model.model.text_encoder.encode
    calls: list[int] = []

    def counting(sentences: Any) -> Any:
        calls.append(len(sentences))
        return encode(sentences)

    monkeypatch.setattr(model.model.text_encoder, "encode", counting)
    data = datamodule(dataset_root)
    run = engine(tmp_path)
    run.fit(model=model, datamodule=data)
    run.test(model=model, datamodule=data)
    assert data.eval_batch_size < NUM_TEST  # several test batches
    assert len(calls) == 1
    assert model.model.class_name == CATEGORY
