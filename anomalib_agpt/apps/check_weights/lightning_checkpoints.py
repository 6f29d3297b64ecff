"""Lightning checkpoints of this product: the class, k_shot and trained parts, and the weight files they name.

A checkpoint restores with the weight files its hyper-parameters name; this says which of them are found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anomalib_agpt.apps.check_weights.reading import _shape, _unreadable
from anomalib_agpt.apps.check_weights.report import LIGHTNING, WeightReport
from anomalib_agpt.errors import MissingFileError
from anomalib_agpt.module.legacy_options import group_flat_options
from anomalib_agpt.weights import checkpoints as ckpt

_RESTORED_KEYS = ("model.text_features", "model.reference_memory")
_WEIGHT_OPTIONS = ("imagebind_checkpoint", "anomalygpt_checkpoint", "llm", "pandagpt_checkpoint")


def _exists(value: object) -> bool:
    try:
        ckpt.resolve_weight_path(str(value), "check-weights")
    except MissingFileError:
        return False
    return True


def _describe_lightning(checkpoint: Mapping[str, Any], report: WeightReport) -> None:
    state = checkpoint.get("state_dict") or {}
    options = group_flat_options(checkpoint.get("hyper_parameters") or {})  # flat before 0.3
    weights = options.get("weights") or {}
    if "anomalygpt_class_name" not in checkpoint and not any(k in state for k in _RESTORED_KEYS):
        name = checkpoint.get("hparams_name") or "unknown"
        raise _unreadable(f"a Lightning checkpoint of another model (keys {ckpt._keys(state)}; hparams {name})")
    memory = state.get("model.reference_memory")
    trained = sorted(
        {".".join(k.split(".")[:2]) for k in state if k not in _RESTORED_KEYS and not k.startswith("post_processor.")},
    )
    report.kind = LIGHTNING
    report.sizes = {
        "class_name": checkpoint.get("anomalygpt_class_name"),
        "k_shot": (options.get("few_shot") or {}).get("k_shot", 0),
        "trained_parts": trained,
    }
    references = f" (reference memory {_shape(memory.shape)})" if memory is not None and memory.numel() else ""
    report.details.append(
        f"{LIGHTNING} of this product (AnomalyGPT): class '{report.sizes['class_name']}', "
        f"k_shot {report.sizes['k_shot']}{references}; trained parts: {', '.join(trained) or 'none'}",
    )
    if weights.get("preset"):
        report.details.append(f"built from preset '{weights['preset']}' (random weights, no files needed)")
        return
    needs = [
        f"weights.{o}={weights[o]} ({'found' if _exists(weights[o]) else 'NOT FOUND'})"
        for o in _WEIGHT_OPTIONS
        if weights.get(o)
    ]
    report.details.append("restores with " + (", ".join(needs) or "no weight files named"))
