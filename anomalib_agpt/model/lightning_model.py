"""AnomalyGPT as an anomalib model: processors, class name, references, lean checkpoints.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_agpt import AnomalyGPT
    >>> model = AnomalyGPT(
    ...     imagebind_checkpoint="imagebind_huge.pth",
    ...     anomalygpt_checkpoint="train_supervised/pytorch_model.pt",
    ...     k_shot=1,
    ... )  # doctest: +SKIP
    >>> Engine().test(model=model, datamodule=datamodule)  # doctest: +SKIP

"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchvision.transforms.v2 import Compose, Resize

from anomalib_agpt.callbacks import ExplanationVisualizer
from anomalib_agpt.data.class_names import DEFAULT_CLASS_NAME, category_to_class_name
from anomalib_agpt.data.instructions import InstructionMix, load_instruction_data
from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import ConversationName, is_anomalous_answer
from anomalib_agpt.explanation.llm_head import LLMHeadSpec
from anomalib_agpt.explanation.llm_loading import (
    AttnImplementation,
    LLMDtype,
    LLMQuantization,
    check_llm_options,
    check_quantization_support,
)
from anomalib_agpt.explanation.metrics import AccuracyRule, AnswerAccuracy, ExplanationGrounding
from anomalib_agpt.explanation.prompt_learner import ORIGINAL_BASE_PROMPT_STD
from anomalib_agpt.explanation.questions import default_question, load_questions, paper_class_name, question_for
from anomalib_agpt.model import protocol as protocol_choices
from anomalib_agpt.model.pre_processing import (
    ClipPreProcessor,
    ResizeMode,
    build_pre_processor,
    dataset_augmentations,
    upgrade_transform_spec,
)
from anomalib_agpt.model.presets import preset_sizes, random_anomalygpt_delta, random_imagebind_state_dict
from anomalib_agpt.model.protocol import Protocol, check_protocol, dataset_family
from anomalib_agpt.model.references import list_reference_images, load_reference_images, round_reference_images
from anomalib_agpt.model.torch_model import AnomalyGPTModel, EncoderDtype, FewShotMode, check_encoder_dtype
from anomalib_agpt.training.recipe import (
    SynthesisMode,
    TrainablePart,
    epoch_seeded,
    fresh_decoder_delta,
    instruction_loss,
    rotation_reference_memory,
    save_anomalygpt_delta,
    set_trainable,
    synthesis_settings,
    training_losses,
    warmup_decay,
)
from anomalib_agpt.weights import checkpoints as ckpt
from anomalib_agpt.weights.checkpoints import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224
HEAD_PREFIX = "model.llm_head."
EVALUATOR_PREFIX = "evaluator."
ONNX_OPSET = 18  # torch.onnx (dynamo) writes 18; anomalib asks for 14, which needs a lossy down-conversion
PRE_PROCESSOR_CONFIG = "anomalib_pre_processor_config"  # where anomalib keeps the transform spec
# the ONNX optimiser logs one INFO line per pass and initialiser (hundreds per export)
ONNX_PASS_LOGGERS = ("onnx_ir", "onnxscript")
Preset = Literal["random-small"]
LabelSource = Literal["answer", "threshold"]

__all__ = ["AnomalyGPT"]


def build_torch_model(
    imagebind_checkpoint: str | Path | None,
    anomalygpt_checkpoint: str | Path | None,
    vision_heads: int,
    text_heads: int,
    few_shot_mode: FewShotMode,
    preset: Preset | None,
    seed: int,
    trainable: Sequence[str] = (),
) -> AnomalyGPTModel:
    """The tensor model from weight files, or from a random preset when explicitly asked for.

    Without ``anomalygpt_checkpoint``, a ``trainable`` that includes ``decoder`` trains one from scratch,
    as the original's training does: a fresh decoder (seeded by ``seed``) of the ImageBind checkpoint's sizes.
    """
    if preset is not None:
        if imagebind_checkpoint or anomalygpt_checkpoint:
            msg = "pass either preset or weight paths (imagebind_checkpoint, anomalygpt_checkpoint), not both."
            raise OptionError(msg)
        sizes = preset_sizes(preset)
        logger.warning("AnomalyGPT preset '%s': RANDOM weights; its numbers mean nothing for real data.", preset)
        return AnomalyGPTModel.from_state_dicts(
            random_imagebind_state_dict(sizes, seed),
            random_anomalygpt_delta(sizes, seed),
            vision_heads=sizes.vision_heads,
            text_heads=sizes.text_heads,
            few_shot_mode=few_shot_mode,
            sources=(f"preset {preset} (ImageBind part)", f"preset {preset} (AnomalyGPT part)"),
        )
    from_scratch = "decoder" in trainable
    if not imagebind_checkpoint or not (anomalygpt_checkpoint or from_scratch):
        missing = [
            name
            for name, value in (
                ("imagebind_checkpoint", imagebind_checkpoint),
                ("anomalygpt_checkpoint", anomalygpt_checkpoint or from_scratch),
            )
            if not value
        ]
        msg = (
            f"AnomalyGPT needs weights: {', '.join(missing)} not given. Pass imagebind_checkpoint="
            "<imagebind_huge.pth> and anomalygpt_checkpoint=<train_mvtec|train_visa|train_supervised/"
            "pytorch_model.pt> (local paths; see the README), or, to train a decoder from scratch, "
            "anomalygpt_checkpoint=None with trainable=[decoder, ...], or preset='random-small' for a random model."
        )
        raise OptionError(msg)
    if anomalygpt_checkpoint:
        return AnomalyGPTModel.from_files(
            imagebind_checkpoint,
            anomalygpt_checkpoint,
            vision_heads=vision_heads,
            text_heads=text_heads,
            few_shot_mode=few_shot_mode,
        )
    imagebind_path = ckpt.resolve_weight_path(imagebind_checkpoint, "imagebind_checkpoint")
    imagebind = ckpt.load_state_dict_file(imagebind_path, "imagebind_checkpoint")
    ckpt.expect_kind(imagebind, ckpt.IMAGEBIND, imagebind_path, "imagebind_checkpoint")
    sizes = ckpt.imagebind_sizes(imagebind, imagebind_path)
    logger.info("AnomalyGPT: no anomalygpt_checkpoint; a fresh decoder (seed %d) trains from scratch.", seed)
    return AnomalyGPTModel.from_state_dicts(
        imagebind,
        fresh_decoder_delta(sizes.vision_width, sizes.embed_dim, seed),
        vision_heads=vision_heads,
        text_heads=text_heads,
        few_shot_mode=few_shot_mode,
        sources=(str(imagebind_path), f"fresh decoder (seed {seed})"),
    )


def explanation_spec(
    llm: str | Path | None,
    pandagpt_checkpoint: str | Path | None,
    anomalygpt_checkpoint: str | Path | None,
    explain: bool,
    options: dict[str, Any],
) -> LLMHeadSpec | None:
    """Where the explanation head comes from; with ``explain`` every needed part must be named.

    Nothing is read here: the LLM loads on first use, so exporting or restoring a checkpoint made
    with ``explain`` never needs the LLM files. ``options`` are the head's remaining spec fields;
    parts in ``options["fresh_parts"]`` (the trainable ones) may start untrained.
    """
    fresh = options.get("fresh_parts", ())
    needed = {
        "llm": llm,
        "pandagpt_checkpoint": pandagpt_checkpoint or ("llama_proj" in fresh),
        "anomalygpt_checkpoint": anomalygpt_checkpoint or ("prompt_learner" in fresh),
    }
    missing = [name for name, value in needed.items() if not value]
    if explain and missing:
        msg = (
            f"explain=True needs {', '.join(missing)}: the LLM folder (Vicuna-7B v0), the PandaGPT delta and "
            "the AnomalyGPT delta (its prompt learner), unless those parts train. See the README's weights table."
        )
        raise OptionError(msg)
    if not llm:
        return None
    return LLMHeadSpec(
        llm=str(llm),
        pandagpt_checkpoint=str(pandagpt_checkpoint) if pandagpt_checkpoint else None,
        anomalygpt_checkpoint=str(anomalygpt_checkpoint) if anomalygpt_checkpoint else None,
        **options,
    )


@contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Raise the given loggers to WARNING for the block (anomalib sets INFO on the root logger)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


class AnomalyGPT(AnomalibModule):
    """AnomalyGPT (AAAI 2024): ImageBind-Huge patch features against text (zero-shot) or normal references.

    The options are flat, as anomalib's CLI and configs expect (``--model.k_shot 4``), and come in
    groups (the README's Options table and the configs list them so):

    - weights: ``imagebind_checkpoint``, ``anomalygpt_checkpoint``, ``vision_heads``, ``text_heads``,
      ``preset``, ``seed``;
    - protocol: ``protocol``, ``questions``, ``reference_round`` (the original evaluation's choices);
    - zero/few-shot: ``class_name``, ``k_shot``, ``few_shot_source``, ``few_shot_mode``, ``resize_mode``;
    - explanation: ``llm``, ``pandagpt_checkpoint``, ``explain``, ``question``, ``max_new_tokens``,
      ``label_source``, ``do_sample``, ``top_p``, ``temperature``, ``conversation``, ``untrained_head_parts``;
    - inference speed: ``llm_dtype``, ``merge_lora``, ``attn_implementation``, ``llm_quantization``,
      ``encoder_dtype``, ``compile_encoder``;
    - training: ``trainable``, ``synthesis``, ``learning_rate``, ``weight_decay``, ``warmup_ratio``,
      ``pixel_loss_weight``, ``lm_loss_weight``, ``few_shot_prompt_probability``, ``instruction_data``,
      ``instruction_images``;
    - anomalib components: ``pre_processor``, ``post_processor``, ``evaluator``, ``visualizer``.

    Args:
        imagebind_checkpoint: Local path of ``imagebind_huge.pth`` (relative paths are also looked up
            in ``$ANOMALIB_AGPT_HOME``).
        anomalygpt_checkpoint: Local path of an AnomalyGPT delta
            (``train_mvtec|train_visa|train_supervised/pytorch_model.pt``). ``None`` with ``trainable``
            including ``decoder``: train from scratch, as the original trains (a fresh decoder of the
            ImageBind checkpoint's sizes and, when the prompt learner trains, a fresh prompt learner whose
            base prompts are drawn from N(0, 1); both seeded by ``seed``).
        class_name: Object name for the text prompts; default: the datamodule's category
            (``metal_nut`` -> ``metal nut``), else ``object``.
        k_shot: Number of normal reference images; 0 is zero-shot.
        few_shot_source: Folder of normal reference images; default: the datamodule's train set.
            The first ``k_shot`` files in sorted order are used.
        few_shot_mode: ``replace`` (the original: the few-shot map replaces the zero-shot one) or
            ``fuse`` (mean of both).
        resize_mode: ``crop`` (the original's evaluation: short side to 224, centre crop) or
            ``squash`` (its web demo: resize to 224 x 224). Training images are squashed in both modes,
            as the original trains.
        vision_heads: Attention heads of the vision tower (weights cannot reveal them; 16 for Huge).
        text_heads: Attention heads of the text tower (16 for Huge).
        preset: Build a random model of a named size instead of loading weights (demo, tests).
        seed: Seed of the random preset.
        llm: Hugging Face folder of the LLM (Vicuna-7B v0 for the released weights).
        pandagpt_checkpoint: PandaGPT delta (``llama_proj`` and the LoRA of the LLM).
        explain: Answer ``question`` for every test/predict image (``batch.explanation``). Off by
            default: the LLM (14 GB for Vicuna-7B) loads only when an answer is first needed.
        question: Question asked about every image, verbatim; default: ``questions[category]``, else a
            description of the class followed by "Is there any anomaly in the image?".
        max_new_tokens: Longest answer, in tokens; ``None``: the protocol's (128; ``paper``: 512).
        llm_dtype: ``auto`` (fp32 on CPU, bf16 on GPU), ``auto_fp16`` (fp32 on CPU, fp16 on GPU),
            ``fp32``, ``fp16`` or ``bf16``; ``None``: the protocol's (``auto``; ``paper``: ``auto_fp16``).
        merge_lora: Fold the LoRA into the LLM's weights (faster; rounds in ``llm_dtype``).
        attn_implementation: The LLM's attention: ``sdpa`` (PyTorch's fused kernels) or ``eager``
            (plain matmul + softmax).
        llm_quantization: ``8bit`` or ``4bit`` (NF4) loads the LLM quantised through bitsandbytes
            (CUDA and the ``quant`` extra; the LoRA stays unmerged); ``None`` (default): ``llm_dtype``.
        encoder_dtype: dtype of the ImageBind towers: ``fp32`` (default, the reference's numbers),
            ``fp16``, ``bf16``, or ``auto`` (fp16 on CUDA, fp32 on CPU); ``None``: the protocol's (``fp32``;
            ``paper``: ``auto``). Features go back to float32 before the maps, so maps and scores are
            float32 in every case.
        compile_encoder: Run the vision tower through ``torch.compile`` (compiled on the first
            batch; export and checkpoints use the plain module).
        label_source: With ``explain``, ``answer`` takes ``pred_label`` from the answer ('Yes' in it
            is anomalous, the original's rule); ``threshold`` keeps anomalib's score threshold.
        do_sample: Sample instead of greedy decoding; ``None``: the protocol's (greedy; ``paper``: sampling).
        top_p: Nucleus size when sampling; ``None``: the protocol's (0.1; ``paper``: 0.1 on MVTec AD, 0.01 on VisA).
        temperature: Temperature when sampling; ``None``: 1.
        trainable: Train on the datamodule's normal images with synthetic anomalies (learning type
            ONE_CLASS): the parts that learn, e.g. ``[decoder]`` or ``[decoder, prompt_learner]``.
            ``None`` (default): nothing trains (zero-/few-shot).
        synthesis: Synthetic-anomaly settings: ``auto`` (the class's own, from the original's tables),
            ``object`` or ``texture`` (that kind's defaults).
        learning_rate: Peak AdamW learning rate (the original: 1e-3).
        weight_decay: AdamW weight decay (the original: 1e-3).
        warmup_ratio: Share of the steps with a logarithmic warm-up (at least 10 steps), then linear decay
            to 0: DeepSpeed's ``WarmupDecayLR`` as the original configures it.
        pixel_loss_weight: Weight of focal + dice over the four tap maps.
        lm_loss_weight: Weight of the answer cross-entropy (when a part of the explanation head trains).
        few_shot_prompt_probability: Share of training batches whose prompt learner sees the 1-shot map
            (reference: the first normal image of the train set in sorted order, pre-processed as for
            evaluation, in 4 rotations, encoded once) instead of the zero-shot map.
        instruction_data: Your PandaGPT- or LLaVA-style instruction JSON (image + conversation per
            entry). Each step then also takes one instruction sample per normal image of its batch (the
            original's ratio): its first question and answer, through the same answer loss, with the
            zero-shot map against ``object`` as the prompt; the step's loss is the mean of the anomaly and
            the instruction losses, as the original's alternating micro-batches. Needs a head part in
            ``trainable``. Checked whole (every entry, every image file) when fitting starts.
        instruction_images: Folder the JSON's image names are relative to; default: the JSON's folder.
        conversation: ``auto`` (the LLM's chat template if its tokenizer has one, else PandaGPT's),
            ``pandagpt`` (Vicuna v0, the released weights) or ``chat``.
        untrained_head_parts: Head parts (``llama_proj``, ``prompt_learner``, ``lora``) that may start
            from fresh random weights without training, e.g. to show the mechanics of an LLM the released
            deltas do not fit. Parts in ``trainable`` may always start fresh. ``None``: none.
        protocol: ``anomalib`` (default) or ``paper``: the original evaluation's choices (class name from
            the question, its references, sampling, fp16 on GPU, its accuracy count); explicit options win.
        questions: Category (as the datamodule spells it) -> full question, asked verbatim; or a YAML/JSON
            file of that mapping, or your own copy of the original evaluation script (read, never run)
            whose class descriptions become "<description> Is there any anomaly in the image?".
        reference_round: Pick the references as the original does: MVTec AD ``train/good/{4*round+j:03d}.png``,
            VisA the ``split_csv/1cls.csv`` train rows after ``4*round``; ``None``: the protocol's (first
            ``k_shot`` in sorted order; ``paper``: round 3 on MVTec AD, 14 on VisA).
        pre_processor: Pre-processor, or ``True`` for the CLIP pre-processing of ``resize_mode``.
        post_processor: Post-processor, or ``True`` for anomalib's default.
        evaluator: Evaluator, or ``True`` for anomalib's default image/pixel metrics.
        visualizer: Visualizer, or ``True`` for anomalib's default.

    """

    def __init__(
        self,
        imagebind_checkpoint: str | Path | None = None,
        anomalygpt_checkpoint: str | Path | None = None,
        class_name: str | None = None,
        k_shot: int = 0,
        few_shot_source: str | Path | None = None,
        few_shot_mode: FewShotMode = "replace",
        resize_mode: ResizeMode = "crop",
        vision_heads: int = 16,
        text_heads: int = 16,
        preset: Preset | None = None,
        seed: int = 0,
        llm: str | Path | None = None,
        pandagpt_checkpoint: str | Path | None = None,
        explain: bool = False,
        question: str | None = None,
        max_new_tokens: int | None = None,
        llm_dtype: LLMDtype | None = None,
        merge_lora: bool = False,
        attn_implementation: AttnImplementation = "sdpa",
        llm_quantization: LLMQuantization | None = None,
        encoder_dtype: EncoderDtype | None = None,
        compile_encoder: bool = False,
        label_source: LabelSource = "answer",
        do_sample: bool | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        trainable: list[TrainablePart] | None = None,
        synthesis: SynthesisMode = "auto",
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-3,
        warmup_ratio: float = 0.1,
        pixel_loss_weight: float = 1.0,
        lm_loss_weight: float = 1.0,
        few_shot_prompt_probability: float = 0.5,
        instruction_data: str | Path | None = None,
        instruction_images: str | Path | None = None,
        conversation: ConversationName = "auto",
        untrained_head_parts: list[TrainablePart] | None = None,
        protocol: Protocol = "anomalib",
        questions: dict[str, str] | str | Path | None = None,
        reference_round: int | None = None,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if k_shot < 0:
            msg = f"k_shot={k_shot}: expected 0 (zero-shot) or a positive number of reference images."
            raise OptionError(msg)
        check_protocol(protocol)
        if few_shot_source is not None and reference_round is not None:
            msg = (
                f"few_shot_source='{few_shot_source}' and reference_round={reference_round} both choose the "
                "references: pass one (few_shot_source: its first k_shot files; reference_round: the original's pick)."
            )
            raise OptionError(msg)
        if reference_round is not None and reference_round < 0:
            msg = f"reference_round={reference_round}: expected a round >= 0 (references start at image 4 * round)."
            raise OptionError(msg)
        if few_shot_source is not None and k_shot:
            list_reference_images(few_shot_source, k_shot)  # refuse a missing or short folder before any work
        encoder_dtype = protocol_choices.encoder_dtype(protocol, encoder_dtype)
        check_encoder_dtype(encoder_dtype)  # before any weights load
        check_llm_options(attn_implementation, llm_quantization, merge_lora)
        if llm_quantization is not None:
            check_quantization_support(llm_quantization)  # before any weights load
        head_options = {
            "llm_dtype": protocol_choices.llm_dtype(protocol, llm_dtype),
            "merge_lora": merge_lora,
            "attn_implementation": attn_implementation,
            "llm_quantization": llm_quantization,
            "conversation": conversation,
            "fresh_parts": (*(trainable or ()), *(untrained_head_parts or ())),
            "seed": seed,
        }
        spec = explanation_spec(llm, pandagpt_checkpoint, anomalygpt_checkpoint, explain, head_options)
        head_parts = [part for part in trainable or [] if part != "decoder"]
        if head_parts and spec is None:
            msg = f"trainable={trainable}: {head_parts} belong to the explanation head; pass llm (an LLM folder)."
            raise OptionError(msg)
        if instruction_data is not None and not head_parts:
            msg = (
                f"instruction_data='{instruction_data}' trains through the answer loss; add a head part "
                f"(prompt_learner, llama_proj, lora or llm) to trainable={trainable} and pass llm."
            )
            raise OptionError(msg)
        model = build_torch_model(
            imagebind_checkpoint,
            anomalygpt_checkpoint,
            vision_heads,
            text_heads,
            few_shot_mode,
            preset,
            seed,
            trainable=trainable or (),
        )
        model.llm_spec = spec
        model.configure_encoder(encoder_dtype, compile_encoder)
        self.decoding_options = {
            "do_sample": do_sample,
            "top_p": top_p,
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
        }
        model.generation = protocol_choices.decoding(protocol, None, **self.decoding_options).as_generate_kwargs()
        if pre_processor is True:
            size = model.image_size
            pre_processor = self.configure_pre_processor(image_size=(size, size), resize_mode=resize_mode)
        if evaluator is True:
            evaluator = self.configure_evaluator(explain=explain, accuracy_rule=protocol)
        if visualizer is True:
            visualizer = self.configure_visualizer()
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = model
        self.class_name = class_name
        self.k_shot = k_shot
        self.few_shot_source = few_shot_source
        self.resize_mode = resize_mode
        self.explain = explain
        self.question = question
        self.label_source = label_source
        self.trainable = list(trainable or [])
        self.synthesis = synthesis
        self.seed = seed
        self.optimiser_settings = {"lr": learning_rate, "weight_decay": weight_decay, "warmup_ratio": warmup_ratio}
        self.loss_weights = {"pixel": pixel_loss_weight, "lm": lm_loss_weight}
        self.few_shot_prompt_probability = few_shot_prompt_probability
        self.instruction_data = instruction_data
        self.instruction_images = instruction_images
        self._instruction_mix: InstructionMix | None = None
        """The instruction samples, read and checked in ``setup("fit")``."""
        self._prompt_learner_from_scratch = (
            not anomalygpt_checkpoint and preset is None and "prompt_learner" in self.trainable
        )
        self._training_references: dict[str | None, torch.Tensor] = {}
        """Memory of the prompt learner's 1-shot training reference (4 rotations) per category (``None``: the
        train set's, one class), encoded once per fit."""
        self._previous_train_image: torch.Tensor | None = None
        """The last normal image of the previous step: the next step's first patch source (per epoch)."""
        self.protocol = protocol
        self.questions = load_questions(questions)
        self.reference_round = reference_round
        self._asked: str | None = None
        if "decoder" in self.trainable:
            set_trainable(self.model, ["decoder"])  # the head parts follow in setup("fit"), once the head is loaded
        if class_name:  # otherwise the datamodule's category, known at set-up (text features are computed once)
            self.model.set_class_name(category_to_class_name(class_name))

    # ----------------------------------------------------------------------------------------
    # anomalib face
    # ----------------------------------------------------------------------------------------
    @property
    def learning_type(self) -> LearningType:
        """ONE_CLASS when training, else ZERO_SHOT without references and FEW_SHOT with them."""
        if self.trainable:
            return LearningType.ONE_CLASS
        return LearningType.FEW_SHOT if self.k_shot else LearningType.ZERO_SHOT

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Gradient clipping at 1.0 when training (the original's); devices, precision, epochs stay the user's."""
        return {"gradient_clip_val": 1.0} if self.trainable else {}

    def configure_optimizers(self) -> dict[str, Any] | None:
        """AdamW (betas 0.9/0.95) over the trainable parts, warm-up then linear decay per step."""
        if not self.trainable:
            return None
        parameters = [p for p in self.parameters() if p.requires_grad]
        settings = self.optimiser_settings
        optimizer = torch.optim.AdamW(
            parameters,
            lr=settings["lr"],
            betas=(0.9, 0.95),
            weight_decay=settings["weight_decay"],
        )
        scheduler = warmup_decay(optimizer, int(self.trainer.estimated_stepping_batches), settings["warmup_ratio"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        """When training: load what trains, squash the train set's images, shuffle its loader by (seed, epoch).

        The synthesis randomness is keyed on (seed, epoch, image); with the batch order a function of
        the epoch too, a run resumed at an epoch boundary ends with the weights of an uninterrupted one.
        """
        if stage != "fit" or not self.trainable:
            return
        if self.instruction_data is not None:  # checked whole before any weights of the head load
            samples = load_instruction_data(self.instruction_data, self.instruction_images)
            self._instruction_mix = InstructionMix(samples, self.seed)
            logger.info("AnomalyGPT: %d instruction samples from %s", len(samples), self.instruction_data)
        # Before configure_optimizers: the head's trainable parts must exist when the optimiser is built.
        self.prepare(load_llm=any(part != "decoder" for part in self.trainable))
        set_trainable(self.model, self.trainable)
        self._training_references = {}
        datamodule = self._datamodule()
        self._squash_training_images(datamodule)
        if datamodule is not None and hasattr(datamodule, "train_dataloader"):
            original = type(datamodule).train_dataloader.__get__(datamodule)
            trainer = self.trainer
            datamodule.train_dataloader = lambda: epoch_seeded(
                original(), self.seed, trainer.world_size, trainer.global_rank
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Normal images and their synthetic twins -> focal + dice on every tap map (+ answer loss)."""
        trains_head = any(part != "decoder" for part in self.trainable)
        one_shot_prompts = trains_head and self.few_shot_prompt_probability > 0
        categories = self._sample_categories(batch)
        if categories is None:  # one class: the model's
            class_names = None
            settings = synthesis_settings(self.synthesis, self.model.class_name)
            question: str | list[str] = self.asked_question()
            reference = self._training_reference_memory(batch) if one_shot_prompts else None
        else:  # each sample its own category's class name, synthesis settings, question and reference
            names = {c: self._class_name_from_context(c) or DEFAULT_CLASS_NAME for c in dict.fromkeys(categories)}
            class_names = [names[c] for c in categories]
            settings = [synthesis_settings(self.synthesis, name) for name in class_names]
            question = [self.asked_question(c) for c in categories]
            reference = [self._training_reference_memory(batch, c) for c in categories] if one_shot_prompts else None
        losses = training_losses(
            self.model,
            batch.image,
            batch.image_path,
            settings,
            (self.seed, self.current_epoch, batch_idx),
            self.loss_weights,
            head_question=question if trains_head else None,
            few_shot_prompt_probability=self.few_shot_prompt_probability,
            reference_memory=reference,
            class_names=class_names,
            previous_image=self._previous_train_image,
        )
        self._previous_train_image = batch.image[-1].detach().clone()
        total = losses.total
        if self._instruction_mix is not None:
            instruction = self._instruction_loss(self._instruction_mix, batch, batch_idx)
            total = (total + self.loss_weights["lm"] * instruction) / 2
            self.log("train_instruction_loss", instruction, batch_size=batch.image.shape[0])
        self.log("train_pixel_loss", losses.pixel, batch_size=losses.batch_size)
        if losses.answer is not None:
            self.log("train_lm_loss", losses.answer, batch_size=losses.batch_size)
        self.log("train_loss", total, prog_bar=True, batch_size=losses.batch_size)
        return total

    def on_train_epoch_start(self) -> None:
        """Each epoch's first patch source is from its own first batch (a resumed epoch starts the same)."""
        self._previous_train_image = None

    def _instruction_loss(self, mix: InstructionMix, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The answer loss on this step's instruction samples, one per normal image of the batch.

        Their images take the training images' pre-processing (squashed to the model's side).
        """
        pre_processor = self.pre_processor
        if isinstance(pre_processor, ClipPreProcessor) and pre_processor.train_transform is not None:
            transform = pre_processor.train_transform
        else:  # a user's pre-processor: its transform, then one size for the batch
            side = self.model.image_size
            steps = [pre_processor.transform] if pre_processor is not None and pre_processor.transform else []
            transform = Compose([*steps, Resize((side, side))])
        trainer = self.trainer
        mixed = mix.batch(
            self.current_epoch,
            batch_idx,
            batch.image.shape[0],
            transform,
            trainer.world_size,
            trainer.global_rank,
            device=batch.image.device,
        )
        images = mixed.images.to(dtype=batch.image.dtype)
        return instruction_loss(self.model, images, mixed.questions, mixed.answers)

    def _squash_training_images(self, datamodule: Any) -> None:  # noqa: ANN401
        """Resize the train set with the pre-processor's training resize (squash), as the original trains.

        anomalib's datamodules resize every subset in the dataset with the evaluation transform's resize
        (before collation); this swaps it on the train set only, after the datamodule's set-up.
        """
        resize = self.pre_processor.train_resize if isinstance(self.pre_processor, ClipPreProcessor) else None
        train_data = getattr(datamodule, "train_data", None)
        if resize is None or train_data is None:
            return
        train_data.augmentations = dataset_augmentations(getattr(datamodule, "train_augmentations", None), resize)

    def _sample_categories(self, batch: Batch) -> list[str] | None:
        """Each sample's category when the train set has several (a ``category_of`` datamodule, no ``class_name``)."""
        category_of = getattr(self._datamodule(), "category_of", None)
        if self.class_name or category_of is None or batch.image_path is None:
            return None
        return [category_of(path) for path in batch.image_path]

    def _training_reference_memory(self, batch: Batch, category: str | None = None) -> torch.Tensor:
        """The prompt learner's 1-shot training reference in 4 rotations, encoded on first use (per category).

        The first normal image of the datamodule's train set (of ``category``'s samples, in a multi-class
        one) in sorted order, through the evaluation pre-processing (the original takes the first file of
        the class's ``train/good`` and pre-processes it as at test time); without a train set, the first
        image of the first batch.
        """
        references = self._training_references
        if category not in references:
            references[category] = self._encode_training_reference(batch, category)
        return references[category]

    def _encode_training_reference(self, batch: Batch, category: str | None) -> torch.Tensor:
        """One category's (or the train set's) first normal image, in 4 rotations, encoded."""
        path = self._first_normal_training_image(category)
        if path is None:
            logger.warning("AnomalyGPT: no train set for the 1-shot training reference; using a batch image.")
            reference = batch.image[0]
        else:
            transform = self.pre_processor.transform if self.pre_processor is not None else None
            logger.info("AnomalyGPT: 1-shot training reference (4 rotations): %s", path)
            reference = load_reference_images([path], transform, resize_mode=self.resize_mode)[0]
        reference = reference.to(device=batch.image.device, dtype=batch.image.dtype)
        return rotation_reference_memory(self.model, reference)

    def _first_normal_training_image(self, category: str | None = None) -> str | None:
        """The datamodule's first normal train image (of ``category``) in sorted path order, if there is a train set."""
        datamodule = self._datamodule()
        train_data = getattr(datamodule, "train_data", None)
        samples = getattr(train_data, "samples", None)
        if samples is None or "image_path" not in samples:
            return None
        if "label_index" in samples:
            samples = samples[samples.label_index == 0]
        paths = sorted(str(path) for path in samples.image_path)
        if category is not None:
            paths = [path for path in paths if datamodule.category_of(path) == category]
        return paths[0] if paths else None

    def save_anomalygpt_delta(self, path: str | Path) -> Path:
        """Write the decoder (and prompt learner) as an original-format AnomalyGPT delta."""
        return save_anomalygpt_delta(self.model, path)

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        resize_mode: ResizeMode = "crop",
    ) -> PreProcessor:
        """CLIP pre-processing: bicubic resize (short side + centre crop, or squash) and CLIP mean/std."""
        if image_size and image_size[0] != image_size[1]:
            msg = f"image_size={image_size}: AnomalyGPT's encoder takes square inputs."
            raise OptionError(msg)
        return build_pre_processor(image_size[0] if image_size else DEFAULT_IMAGE_SIZE, resize_mode)

    def configure_post_processor(self) -> PostProcessor:
        """Anomalib's default: thresholds and min-max normalisation fitted on validation."""
        return PostProcessor()

    @classmethod
    def configure_evaluator(cls, explain: bool = False, accuracy_rule: AccuracyRule = "anomalib") -> Evaluator:
        """Anomalib's image/pixel AUROC and F1, plus answer accuracy (counted by ``accuracy_rule``) when explaining."""
        evaluator = AnomalibModule.configure_evaluator()
        if explain:
            evaluator.test_metrics.append(AnswerAccuracy(rule=accuracy_rule, strict=False))
            evaluator.test_metrics.append(ExplanationGrounding(strict=False))
        return evaluator

    @classmethod
    def configure_visualizer(cls) -> ExplanationVisualizer:
        """Anomalib's image visualizer plus the explanation text under the panels."""
        return ExplanationVisualizer()

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Score the batch; the post-processor fits its thresholds on these outputs."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def test_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Score, and with ``explain`` answer the question, from one pass of the encoder."""
        del args, kwargs
        if not self.explain:
            return batch.update(**self.model(batch.image)._asdict())
        scores, answers = self.model.predict_and_explain(batch.image, self.asked_question())
        batch.update(**scores._asdict())
        batch.explanation = answers
        if self.label_source == "answer":
            batch.pred_label = torch.tensor([is_anomalous_answer(a) for a in answers], device=batch.image.device)
        return batch

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Batch:
        """As ``test_step``."""
        del batch_idx, dataloader_idx
        return self.test_step(batch)

    # ----------------------------------------------------------------------------------------
    # Class name and references, resolved once before the first batch
    # ----------------------------------------------------------------------------------------
    def on_validation_start(self) -> None:
        """Prepare text features and references (after any checkpoint restore)."""
        self.prepare()

    def on_test_start(self) -> None:
        """Prepare text features, references and, with ``explain``, the LLM (after any restore)."""
        self.prepare(load_llm=self.explain)

    def on_predict_start(self) -> None:
        """Prepare text features, references and, with ``explain``, the LLM (after any restore)."""
        self.prepare(load_llm=self.explain)

    def prepare(self, load_llm: bool = False) -> None:
        """Decide the protocol's dataset-dependent choices; text features and references, each only once."""
        family = dataset_family(self._datamodule())
        if family is not None:
            self.model.generation = protocol_choices.decoding(
                self.protocol, family, **self.decoding_options
            ).as_generate_kwargs()
        self.model.set_class_name(self._class_name_from_context())
        if self.k_shot and self.model.num_reference_images == 0:
            self.model.set_references(self._reference_images())
        if load_llm:
            self._load_head()

    def _load_head(self) -> None:
        """The explanation head; a prompt learner trained from scratch starts with N(0, 1) base prompts.

        Only when the head is created without trained weights waiting for it (a restored checkpoint's).
        """
        created = self.model.llm_head is None and not self.model.pending_head_state
        head = self.model.ensure_llm_head()
        if created and getattr(self, "_prompt_learner_from_scratch", False):  # absent in modules pickled by 0.x
            head.prompt_learner.draw_base_prompts(self.seed, ORIGINAL_BASE_PROMPT_STD)

    def _datamodule(self) -> Any:  # noqa: ANN401
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _fitting(self) -> bool:
        """Whether the attached trainer is fitting (training, or validating between epochs)."""
        trainer = getattr(self, "_trainer", None)
        return trainer is not None and trainer.state.fn == TrainerFn.FITTING

    def _category(self) -> str | None:
        """The datamodule's category; ``None`` for a multi-class train set (each sample has its own)."""
        datamodule = self._datamodule()
        if datamodule is None or hasattr(datamodule, "category_of"):
            return None
        return getattr(datamodule, "category", None)

    def _class_name_from_context(self, category: str | None = None) -> str | None:
        """Constructor name; else under ``paper`` the original's rule on the question, else the category.

        ``category``: a multi-class train set's sample's (default: the datamodule's). ``None`` keeps the
        current one (a restored checkpoint's, or ``object``). While fitting, the category: the original
        trains with the dataset's class names and applies its question rule only when it evaluates.
        """
        if self.class_name:
            return category_to_class_name(self.class_name)
        category = category or self._category()
        if self.protocol == "paper" and not self._fitting() and (self.question or category or self.questions):
            return paper_class_name(self.asked_question(category))
        return category_to_class_name(category) if category else None

    def asked_question(self, category: str | None = None) -> str:
        """The question put to the LLM: ``question``; else ``questions[category]`` verbatim; else the description's.

        ``category``: a multi-class train set's sample's (default: the datamodule's, else ``class_name``).
        Under ``paper`` without ``questions``, the project's own descriptions stand in for the original's
        (said once in the log).
        """
        if self.question:
            return self.question
        category = category or self._category() or self.class_name
        asked = question_for(category, self.questions) if category and self.questions else None
        if asked is None:
            if self.protocol == "paper" and self._asked is None:
                logger.warning(
                    "AnomalyGPT: protocol='paper' without questions: asking with this project's own class "
                    "descriptions, not the original's (pass questions=<your copy of the original test script>)."
                )
            class_name = category_to_class_name(category) if category else self.model.class_name  # a restored one
            asked = default_question(class_name or DEFAULT_CLASS_NAME)
        self._asked = asked
        return asked

    def _reference_images(self) -> torch.Tensor:
        """``k_shot`` normal images through the SAME pre-processing as queries, in file order."""
        datamodule = self._datamodule()
        family = dataset_family(datamodule)
        round_ = protocol_choices.reference_round(self.protocol, family, self.reference_round)
        if self.few_shot_source is not None:
            paths = list_reference_images(self.few_shot_source, self.k_shot)
        elif round_ is not None:
            root = getattr(datamodule, "root", None)
            if root is None or family is None:
                msg = f"reference_round={round_} picks references from an MVTecAD or Visa datamodule; none is attached."
                raise OptionError(msg)
            paths = round_reference_images(root, datamodule.category, family, self.k_shot, round_)
        else:
            train_data = getattr(datamodule, "train_data", None)
            if train_data is None:
                msg = (
                    f"k_shot={self.k_shot} needs normal reference images: pass few_shot_source=<folder>, use a "
                    "datamodule with a train set, or call model.model.set_references(images)."
                )
                raise OptionError(msg)
            paths = sorted(train_data.samples.image_path)
            if len(paths) < self.k_shot:
                msg = f"k_shot={self.k_shot} but the datamodule's train set holds {len(paths)} images."
                raise OptionError(msg)
            paths = paths[: self.k_shot]
        transform = self.pre_processor.transform if self.pre_processor is not None else None
        logger.info("AnomalyGPT: encoding %d reference images once: %s", len(paths), [str(p) for p in paths])
        return load_reference_images(paths, transform, resize_mode=self.resize_mode)

    # ----------------------------------------------------------------------------------------
    # Lean checkpoints: trained parameters and buffers only
    # ----------------------------------------------------------------------------------------
    def _frozen_parameter_names(self) -> set[str]:
        return set(self._frozen_parameters())

    def _frozen_parameters(self) -> dict[str, nn.Parameter]:
        """Frozen parameters under every name they have (tied weights, e.g. an LLM's lm_head, included)."""
        return {n: p for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop frozen weights (they come back from the weight files) and metric states; keep the class name.

        An evaluator's metric buffers (e.g. AUPRO's ``fpr_limit``) are the run's measuring set-up, not
        the model: a model restored with another evaluator must still load.
        """
        super().on_save_checkpoint(checkpoint)
        frozen = self._frozen_parameter_names()
        state = {
            k: v for k, v in checkpoint["state_dict"].items() if k not in frozen and not k.startswith(EVALUATOR_PREFIX)
        }
        state |= {HEAD_PREFIX + k: v for k, v in self.model.pending_head_state.items()}
        checkpoint["state_dict"] = state
        checkpoint["anomalygpt_class_name"] = self.model.class_name

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint against everything that is not a frozen weight, then add those.

        The frozen weights are put back as the very parameter objects, so the strict load that
        follows copies nothing (a memory-mapped 4.5 GB encoder stays mapped) and still checks
        every key.
        """
        pre_processing = checkpoint.get(PRE_PROCESSOR_CONFIG)
        if pre_processing:
            pre_processing["transform"] = upgrade_transform_spec(pre_processing.get("transform"))
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if self.model.llm_head is None:  # trained head weights wait until the head loads (lazily)
            head_keys = [k for k in state if k.startswith(HEAD_PREFIX)]
            self.model.pending_head_state = {k.removeprefix(HEAD_PREFIX): state[k] for k in head_keys}
            state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(EVALUATOR_PREFIX)}  # metric set-up, not model
        own_state = self.state_dict()
        own_metrics = {k: v for k, v in own_state.items() if k.startswith(EVALUATOR_PREFIX)}
        frozen = self._frozen_parameters()
        own = set(own_state)
        missing = sorted(own - set(frozen) - set(own_metrics) - set(state))
        unexpected = sorted(set(state) - own)
        if missing or unexpected:
            msg = (
                "Lightning checkpoint does not match this AnomalyGPT (were the weight files or sizes "
                f"changed?): missing {missing or 'nothing'}; unexpected {unexpected or 'nothing'}."
            )
            raise CheckpointError(msg)
        checkpoint["state_dict"] = {**frozen, **own_metrics, **state}
        self.model.class_name = checkpoint.get("anomalygpt_class_name", self.model.class_name)

    # ----------------------------------------------------------------------------------------
    # Export: the scores path only
    # ----------------------------------------------------------------------------------------
    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> Path:
        """Export to ONNX (OpenVINO goes through here too), pre-processing included.

        The graph resizes as evaluation does (:class:`~anomalib_agpt.model.pre_processing.ClipResize`),
        computing the short-side resize and crop from the input's shape: without ``input_size`` one
        file takes any height and width in both resize modes. Exported at the opset the exporter
        writes natively, so no version conversion runs.
        """
        kwargs.setdefault("opset_version", ONNX_OPSET)
        self.model.set_class_name(self._class_name_from_context())  # before tracing: the graph holds the features
        with self.model.scores_only(), _quiet_loggers(ONNX_PASS_LOGGERS):
            return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    def to_torch(self, *args, **kwargs) -> Path:
        """Pickle the module for ``TorchInferencer`` without the LLM (text never breaks export)."""
        self.model.set_class_name(self._class_name_from_context())
        with self.model.scores_only():
            return super().to_torch(*args, **kwargs)
