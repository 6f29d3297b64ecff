"""From option groups to parts: the options checked together, the tensor model, the explanation head's spec.

Every check that can refuse a run happens here, before any weights load, so a mistake costs one line
and no time.
"""

from __future__ import annotations

import logging
from typing import Any

from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.llm_head import LLMHeadSpec
from anomalib_agpt.explanation.llm_loading import check_llm_options, check_quantization_support
from anomalib_agpt.model.dinov2_encoder import Dinov2VisionEncoder
from anomalib_agpt.model.presets import preset_sizes, random_anomalygpt_delta, random_imagebind_state_dict
from anomalib_agpt.model.protocol import Protocol, check_protocol
from anomalib_agpt.model.references import list_reference_images
from anomalib_agpt.model.torch_model import AnomalyGPTModel, FewShotMode, check_encoder_dtype
from anomalib_agpt.module.options import (
    ExplanationOptions,
    FewShotOptions,
    InferenceOptions,
    TrainingOptions,
    WeightOptions,
)
from anomalib_agpt.training.recipe import fresh_decoder_delta
from anomalib_agpt.weights import checkpoints as ckpt
from anomalib_agpt.weights.dinov2_onnx import load_dinov2_backbone

logger = logging.getLogger(__name__)


def check_options(
    few_shot: FewShotOptions,
    inference: InferenceOptions,
    training: TrainingOptions,
    protocol: Protocol,
    encoder_dtype: str,
    weights: WeightOptions,
) -> None:
    """Refuse contradictory or impossible options (before any weights load)."""
    check_backbone(weights, few_shot, training)
    if few_shot.k_shot < 0:
        msg = f"few_shot.k_shot={few_shot.k_shot}: expected 0 (zero-shot) or a positive number of reference images."
        raise OptionError(msg)
    check_protocol(protocol)
    if few_shot.source is not None and few_shot.reference_round is not None:
        msg = (
            f"few_shot.source='{few_shot.source}' and few_shot.reference_round={few_shot.reference_round} both "
            "choose the references: pass one (source: its first k_shot files; reference_round: the original's pick)."
        )
        raise OptionError(msg)
    if few_shot.reference_round is not None and few_shot.reference_round < 0:
        msg = (
            f"few_shot.reference_round={few_shot.reference_round}: expected a round >= 0 "
            "(references start at image 4 * round)."
        )
        raise OptionError(msg)
    if few_shot.source is not None and few_shot.k_shot:
        list_reference_images(few_shot.source, few_shot.k_shot)  # refuse a missing or short folder before any work
    check_encoder_dtype(encoder_dtype)
    check_llm_options(inference.attn_implementation, inference.llm_quantization, inference.merge_lora)
    if inference.llm_quantization is not None:
        check_quantization_support(inference.llm_quantization)
    if training.instruction_data is not None and not training.head_parts:
        msg = (
            f"training.instruction_data='{training.instruction_data}' trains through the answer loss; add a head "
            f"part (prompt_learner, llama_proj, lora or llm) to training.trainable={training.trainable} and pass "
            "weights.llm."
        )
        raise OptionError(msg)


def check_backbone(weights: WeightOptions, few_shot: FewShotOptions, training: TrainingOptions) -> None:
    """A backbone other than ImageBind has no text tower and no released decoder: refuse what cannot work."""
    if weights.backbone is None:
        return
    given = [
        f"weights.{name}"
        for name in ("imagebind_checkpoint", "anomalygpt_checkpoint", "preset")
        if getattr(weights, name) is not None
    ]
    if given:
        msg = (
            f"weights.backbone='{weights.backbone}' replaces ImageBind-Huge and its released decoder: drop "
            f"{', '.join(given)} (the backbone's decoder and anchors train with training.trainable=[decoder, ...])."
        )
        raise OptionError(msg)
    if not few_shot.k_shot and "decoder" not in training.parts:
        msg = (
            f"weights.backbone='{weights.backbone}' has no text tower, so a zero-shot map needs learned anchors: "
            "train it (training.trainable=[decoder, ...]) or give few_shot.k_shot reference images."
        )
        raise OptionError(msg)


def build_torch_model(weights: WeightOptions, few_shot_mode: FewShotMode, training: TrainingOptions) -> AnomalyGPTModel:
    """The tensor model from weight files, a DINOv2 backbone, or a random preset when explicitly asked for.

    Without an AnomalyGPT delta, a ``training.trainable`` that includes ``decoder`` trains one from scratch,
    as the original's training does: a fresh decoder (seeded by ``weights.seed``) of the ImageBind
    checkpoint's sizes.
    """
    imagebind, anomalygpt, seed = weights.imagebind_checkpoint, weights.anomalygpt_checkpoint, weights.seed
    heads = {"vision_heads": weights.vision_heads, "text_heads": weights.text_heads, "few_shot_mode": few_shot_mode}
    if weights.backbone is not None:
        vision = Dinov2VisionEncoder(load_dinov2_backbone(weights.backbone))
        logger.info(
            "AnomalyGPT: DINOv2 backbone '%s' (%d wide); decoder and anchors seed %d",
            weights.backbone,
            vision.width,
            seed,
        )
        return AnomalyGPTModel.with_learned_anchors(vision, seed, few_shot_mode)
    if weights.preset is not None:
        if imagebind or anomalygpt:
            msg = "pass either weights.preset or weight paths (imagebind_checkpoint, anomalygpt_checkpoint), not both."
            raise OptionError(msg)
        sizes = preset_sizes(weights.preset)
        logger.warning(
            "AnomalyGPT preset '%s': RANDOM weights; its numbers mean nothing for real data.", weights.preset
        )
        return AnomalyGPTModel.from_state_dicts(
            random_imagebind_state_dict(sizes, seed),
            random_anomalygpt_delta(sizes, seed),
            vision_heads=sizes.vision_heads,
            text_heads=sizes.text_heads,
            few_shot_mode=few_shot_mode,
            sources=(f"preset {weights.preset} (ImageBind part)", f"preset {weights.preset} (AnomalyGPT part)"),
        )
    from_scratch = "decoder" in training.parts
    if not imagebind or not (anomalygpt or from_scratch):
        missing = [
            f"weights.{name}"
            for name, value in (
                ("imagebind_checkpoint", imagebind),
                ("anomalygpt_checkpoint", anomalygpt or from_scratch),
            )
            if not value
        ]
        msg = (
            f"AnomalyGPT needs weights: {', '.join(missing)} not given. Pass weights.imagebind_checkpoint="
            "<imagebind_huge.pth> and weights.anomalygpt_checkpoint=<train_mvtec|train_visa|train_supervised/"
            "pytorch_model.pt> (local paths; see the README), or, to train a decoder from scratch, no "
            "anomalygpt_checkpoint with training.trainable=[decoder, ...], or weights.preset='random-small' for a "
            "random model."
        )
        raise OptionError(msg)
    if anomalygpt:
        return AnomalyGPTModel.from_files(imagebind, anomalygpt, **heads)
    imagebind_path = ckpt.resolve_weight_path(imagebind, "imagebind_checkpoint")
    imagebind_state = ckpt.load_state_dict_file(imagebind_path, "imagebind_checkpoint")
    ckpt.expect_kind(imagebind_state, ckpt.IMAGEBIND, imagebind_path, "imagebind_checkpoint")
    sizes = ckpt.imagebind_sizes(imagebind_state, imagebind_path)
    logger.info("AnomalyGPT: no anomalygpt_checkpoint; a fresh decoder (seed %d) trains from scratch.", seed)
    return AnomalyGPTModel.from_state_dicts(
        imagebind_state,
        fresh_decoder_delta(sizes.vision_width, sizes.embed_dim, seed),
        sources=(str(imagebind_path), f"fresh decoder (seed {seed})"),
        **heads,
    )


def explanation_spec(
    weights: WeightOptions,
    explanation: ExplanationOptions,
    inference: InferenceOptions,
    training: TrainingOptions,
    llm_dtype: str,
) -> LLMHeadSpec | None:
    """Where the explanation head comes from; with ``explain`` every needed part must be named.

    Nothing is read here: the LLM loads on first use, so exporting or restoring a checkpoint made
    with ``explain`` never needs the LLM files. Parts that train (or are named in
    ``untrained_head_parts``) may start untrained.
    """
    fresh = (*training.parts, *(explanation.untrained_head_parts or ()))
    needed = {
        "weights.llm": weights.llm,
        "weights.pandagpt_checkpoint": weights.pandagpt_checkpoint or ("llama_proj" in fresh),
        "weights.anomalygpt_checkpoint": weights.anomalygpt_checkpoint or ("prompt_learner" in fresh),
    }
    missing = [name for name, value in needed.items() if not value]
    if explanation.explain and missing:
        msg = (
            f"explanation.explain=True needs {', '.join(missing)}: the LLM folder (Vicuna-7B v0), the PandaGPT "
            "delta and the AnomalyGPT delta (its prompt learner), unless those parts train. See the README's "
            "weights table."
        )
        raise OptionError(msg)
    if training.head_parts and not weights.llm:
        msg = (
            f"training.trainable={training.trainable}: {training.head_parts} belong to the explanation head; "
            "pass weights.llm."
        )
        raise OptionError(msg)
    if not weights.llm:
        return None
    options: dict[str, Any] = {
        "llm_dtype": llm_dtype,
        "merge_lora": inference.merge_lora,
        "attn_implementation": inference.attn_implementation,
        "llm_quantization": inference.llm_quantization,
        "conversation": explanation.conversation,
        "fresh_parts": fresh,
        "seed": weights.seed,
    }
    return LLMHeadSpec(
        llm=str(weights.llm),
        pandagpt_checkpoint=str(weights.pandagpt_checkpoint) if weights.pandagpt_checkpoint else None,
        anomalygpt_checkpoint=str(weights.anomalygpt_checkpoint) if weights.anomalygpt_checkpoint else None,
        **options,
    )
