"""The released files recognised from their keys: ImageBind weights, AnomalyGPT deltas, the PandaGPT delta.

Recognition is the model's own (:mod:`anomalib_agpt.weights.checkpoints`, the PandaGPT delta split of
:mod:`anomalib_agpt.explanation.lora`), so a file accepted here is a file the model accepts in that slot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from anomalib_agpt.apps.check_weights.reading import _unreadable
from anomalib_agpt.apps.check_weights.report import (
    _RELEASED_PANDAGPT,
    ANOMALYGPT,
    IMAGEBIND,
    PANDAGPT,
    WeightReport,
)
from anomalib_agpt.weights import checkpoints as ckpt

HUGE = {"vision_width": 1280, "vision_layers": 32, "text_width": 1024, "text_layers": 24}
"""ImageBind-Huge sizes (16 heads in both towers, the model's defaults)."""
PROTOCOLS = {
    "train_mvtec": "trained on MVTec AD: use it for VisA evaluation",
    "train_visa": "trained on VisA: use it for MVTec AD evaluation",
    "train_supervised": "trained on MVTec AD and VisA: not for cross-dataset (zero-/few-shot protocol) numbers",
}
_LORA_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _describe_imagebind(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    sizes = ckpt.imagebind_sizes(state, path)
    ckpt.convert_imagebind(state, path)  # every vision/text key understood (the model's own check)
    report.kind = IMAGEBIND
    report.sizes = {
        "embed_dim": sizes.embed_dim,
        "vision_width": sizes.vision_width,
        "vision_layers": sizes.vision_layers,
        "patch_size": sizes.patch_size,
        "image_size": sizes.image_size,
        "text_width": sizes.text_width,
        "text_layers": sizes.text_layers,
        "text_vocab_size": sizes.vocab_size,
        "context_length": sizes.context_length,
    }
    report.details.append(
        f"{IMAGEBIND}: vision width {sizes.vision_width}, {sizes.vision_layers} blocks, patch {sizes.patch_size}, "
        f"image {sizes.image_size}; text width {sizes.text_width}, {sizes.text_layers} blocks; "
        f"joint embedding {sizes.embed_dim}",
    )
    if all(report.sizes[k] == v for k, v in HUGE.items()):
        report.details.append("ImageBind-Huge sizes (16 heads per tower: the defaults vision_heads/text_heads)")
    else:
        report.details.append("not ImageBind-Huge: head counts are not stored; pass vision_heads/text_heads")


def protocol_of(path: Path) -> str:
    """Which evaluation protocol an AnomalyGPT delta suits, told from its folder or file name only."""
    for name in (path.parent.name, path.stem):
        if name in PROTOCOLS:
            return f"{PROTOCOLS[name]} (told from the name {name})"
    return (
        "training data cannot be told (the file does not say; the released deltas are told apart only by their "
        f"folder names {', '.join(PROTOCOLS)})"
    )


def _describe_anomalygpt(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    decoder, prompt = ckpt.split_anomalygpt_delta(state, path)
    layers, in_width, out_dim = ckpt.decoder_sizes(decoder, path)
    report.kind = ANOMALYGPT
    report.sizes = {"decoder_layers": layers, "decoder_in": in_width, "decoder_out": out_dim}
    parts = f"decoder {layers} x Linear({in_width} -> {out_dim})"
    base = prompt.get("base_prompts")
    if base is not None:
        report.sizes |= {"base_prompts": base.shape[0], "prompt_width": base.shape[1]}
        parts += f" + prompt learner ({base.shape[0]} base prompts, width {base.shape[1]})"
    elif prompt:
        raise _unreadable(f"AnomalyGPT delta '{path}' has prompt_learner.* keys but no prompt_learner.base_prompts")
    else:
        parts += "; no prompt learner (enough for maps, not for explanations)"
    report.sizes["protocol"] = protocol_of(path)
    report.details.append(f"{ANOMALYGPT}: {parts}")


def _describe_pandagpt(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    from anomalib_agpt.explanation.lora import LORA_TARGETS, split_pandagpt_delta

    projection, lora = split_pandagpt_delta(state, path)
    out_features, in_features = projection["weight"].shape
    a_shapes = [tuple(v.shape) for k, v in lora.items() if ".lora_A." in k]
    ranks = sorted({shape[0] for shape in a_shapes})
    hidden = sorted({shape[1] for shape in a_shapes})
    layers = len({match[1] for key in lora if (match := _LORA_LAYER.match(key))})
    present = {k.split(".")[4] for k in lora}
    targets = [t.removesuffix("_proj") for t in LORA_TARGETS if t in present] + sorted(present - set(LORA_TARGETS))
    report.kind = PANDAGPT
    report.sizes = {
        "proj_in": in_features,
        "proj_out": out_features,
        "lora_rank": ranks[0] if len(ranks) == 1 else ranks,
        "lora_hidden": hidden[0] if len(hidden) == 1 else hidden,
        "lora_layers": layers,
    }
    report.details.append(
        f"{PANDAGPT}: llama_proj Linear({in_features} -> {out_features}); LoRA rank "
        f"{'/'.join(map(str, ranks))} on {'/'.join(targets)} of {layers} layers, hidden size "
        f"{'/'.join(map(str, hidden))}",
    )
    folder = path.parent.name
    if folder.startswith("pandagpt_") and folder != _RELEASED_PANDAGPT:
        report.details.append(f"AnomalyGPT's released deltas were trained with {_RELEASED_PANDAGPT}, not {folder}")


def _describe_state_dict(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    found = ckpt.identify(state)
    if found == ckpt.IMAGEBIND:
        _describe_imagebind(state, path, report)
    elif found == ckpt.ANOMALYGPT:
        _describe_anomalygpt(state, path, report)
    elif found == ckpt.PANDAGPT:
        _describe_pandagpt(state, path, report)
    elif any(k.startswith(("model.layers.", "model.embed_tokens.", "lm_head.")) for k in state):
        raise _unreadable("LLM weights on their own; pass the LLM folder that holds them with config.json")
    else:
        raise _unreadable(f"its keys look like no file the model reads ({ckpt._keys(state)})")
