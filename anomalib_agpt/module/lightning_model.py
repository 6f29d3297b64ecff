"""AnomalyGPT as an anomalib model: the face on top of the tensor path, training and the explanation head.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_agpt import AnomalyGPT, FewShotOptions, WeightOptions
    >>> model = AnomalyGPT(
    ...     weights=WeightOptions(
    ...         imagebind_checkpoint="imagebind_huge.pth",
    ...         anomalygpt_checkpoint="train_supervised/pytorch_model.pt",
    ...     ),
    ...     few_shot=FewShotOptions(k_shot=1),
    ... )  # doctest: +SKIP
    >>> Engine().test(model=model, datamodule=datamodule)  # doctest: +SKIP

"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from torch import nn

from anomalib_agpt.callbacks import ExplanationVisualizer
from anomalib_agpt.callbacks.raw_scores import RawScoreKeeper, on_raw_scores
from anomalib_agpt.data.class_names import category_to_class_name
from anomalib_agpt.data.images import ResizeMode
from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import is_anomalous_answer
from anomalib_agpt.explanation.metrics import AccuracyRule, AnswerAccuracy, ExplanationGrounding
from anomalib_agpt.explanation.prompt_learner import ORIGINAL_BASE_PROMPT_STD
from anomalib_agpt.explanation.questions import load_questions
from anomalib_agpt.model import protocol as protocol_choices
from anomalib_agpt.model.pre_processing import CLIP_MEAN, CLIP_STD, ClipResize, build_pre_processor
from anomalib_agpt.model.protocol import Protocol, dataset_family
from anomalib_agpt.module.building import build_torch_model, check_options, explanation_spec
from anomalib_agpt.module.checkpoint_hooks import LeanCheckpoints
from anomalib_agpt.module.dataset_context import DatasetContext
from anomalib_agpt.module.fitting import FittingHooks
from anomalib_agpt.module.options import (
    ExplanationOptions,
    FewShotOptions,
    InferenceOptions,
    TrainingOptions,
    WeightOptions,
    as_group,
)
from anomalib_agpt.training.recipe import save_anomalygpt_delta, set_trainable

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224
ONNX_OPSET = 18  # torch.onnx (dynamo) writes 18; anomalib asks for 14, which needs a lossy down-conversion
# the ONNX optimiser logs one INFO line per pass and initialiser (hundreds per export)
ONNX_PASS_LOGGERS = ("onnx_ir", "onnxscript")

__all__ = ["AnomalyGPT"]


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


class AnomalyGPT(LeanCheckpoints, FittingHooks, DatasetContext, AnomalibModule):
    """AnomalyGPT (AAAI 2024): ImageBind-Huge patch features against text (zero-shot) or normal references.

    The options come in typed groups (``module.options``; the README's Options table lists them), as
    nested flags and YAML sections in anomalib's CLI (``--model.few_shot.k_shot 4``). Each group also
    takes a mapping of its fields.

    Args:
        weights: Weight files (local paths), head counts, a random preset, the seed.
        few_shot: Reference images: ``k_shot``, ``source``, ``mode``, ``reference_round``.
        explanation: The text answer: ``explain``, ``question(s)``, ``label_source``, ``conversation``,
            ``untrained_head_parts``, ``decoding``.
        inference: Precision and kernels: ``llm_dtype``, ``merge_lora``, ``attn_implementation``,
            ``llm_quantization``, ``encoder_dtype``, ``compile_encoder``.
        training: What trains and how (``trainable`` ``None``: nothing trains; zero-/few-shot).
        class_name: Object name for the text prompts; default: the datamodule's category
            (``metal_nut`` -> ``metal nut``), else ``object``.
        resize_mode: ``crop`` (the original's evaluation: short side to 224, centre crop) or ``squash``
            (its web demo: resize to 224 x 224). Training images are squashed in both modes, as it trains.
        protocol: ``anomalib`` (default) or ``paper``: the original evaluation's choices for every option
            left ``None`` (class name from the question, its references, sampling, fp16 on GPU, its accuracy
            count); explicit options win.
        pre_processor: Pre-processor, or ``True`` for the CLIP pre-processing of ``resize_mode``.
        post_processor: Post-processor, or ``True`` for anomalib's default.
        evaluator: Evaluator, or ``True`` for anomalib's default image/pixel metrics (+ answer metrics).
        visualizer: Visualizer, or ``True`` for anomalib's, with the answer under the panels.

    """

    def __init__(
        self,
        weights: WeightOptions = WeightOptions(),  # noqa: B008 - frozen dataclasses: immutable defaults
        few_shot: FewShotOptions = FewShotOptions(),  # noqa: B008
        explanation: ExplanationOptions = ExplanationOptions(),  # noqa: B008
        inference: InferenceOptions = InferenceOptions(),  # noqa: B008
        training: TrainingOptions = TrainingOptions(),  # noqa: B008
        class_name: str | None = None,
        resize_mode: ResizeMode = "crop",
        protocol: Protocol = "anomalib",
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        weights = as_group(WeightOptions, weights, "weights")
        few_shot = as_group(FewShotOptions, few_shot, "few_shot")
        explanation = as_group(ExplanationOptions, explanation, "explanation")
        inference = as_group(InferenceOptions, inference, "inference")
        training = as_group(TrainingOptions, training, "training")
        encoder_dtype = protocol_choices.encoder_dtype(protocol, inference.encoder_dtype)
        check_options(few_shot, inference, training, protocol, encoder_dtype, weights)
        llm_dtype = protocol_choices.llm_dtype(protocol, inference.llm_dtype)
        spec = explanation_spec(weights, explanation, inference, training, llm_dtype)
        model = build_torch_model(weights, few_shot.mode, training)
        model.llm_spec = spec
        model.configure_encoder(encoder_dtype, inference.compile_encoder)
        model.generation = protocol_choices.decoding(protocol, None, **self._decoding(explanation)).as_generate_kwargs()
        if pre_processor is True:
            size = model.image_size
            pre_processor = self.configure_pre_processor((size, size), resize_mode, model.pixel_normalisation)
        if evaluator is True:
            evaluator = self.configure_evaluator(explain=explanation.explain, accuracy_rule=protocol)
        if visualizer is True:
            visualizer = self.configure_visualizer()
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = model
        self.weight_options = weights
        self.few_shot_options = few_shot
        self.explanation_options = explanation
        self.inference_options = inference
        self.training_options = training
        self.class_name = class_name
        self.resize_mode = resize_mode
        self.protocol = protocol
        self.seed = weights.seed
        self.questions = load_questions(explanation.questions)
        self._asked: str | None = None
        self._instruction_mix = None
        """The instruction samples, read and checked in ``setup("fit")``."""
        self._prompt_learner_from_scratch = (
            not weights.anomalygpt_checkpoint and weights.preset is None and "prompt_learner" in training.parts
        )
        self._training_references: dict[str | None, torch.Tensor] = {}
        """Memory of the prompt learner's 1-shot training reference (4 rotations) per category (``None``: the
        train set's, one class), encoded once per fit."""
        self._previous_train_image: torch.Tensor | None = None
        """The last normal image of the previous step: the next step's first patch source (per epoch)."""
        if "decoder" in training.parts:
            set_trainable(self.model, ["decoder"])  # the head parts follow in setup("fit"), once the head is loaded
        if class_name:  # otherwise the datamodule's category, known at set-up (text features are computed once)
            self.model.set_class_name(category_to_class_name(class_name))

    @staticmethod
    def _decoding(explanation: ExplanationOptions) -> dict[str, Any]:
        return dataclasses.asdict(explanation.decoding)

    @property
    def explain(self) -> bool:
        """Whether test and predict answer the question (``explanation.explain``; settable)."""
        return self.explanation_options.explain

    @explain.setter
    def explain(self, value: bool) -> None:
        self.explanation_options = dataclasses.replace(self.explanation_options, explain=value)

    @property
    def learning_type(self) -> LearningType:
        """ONE_CLASS when training, else ZERO_SHOT without references and FEW_SHOT with them."""
        if self.training_options.parts:
            return LearningType.ONE_CLASS
        return LearningType.FEW_SHOT if self.few_shot_options.k_shot else LearningType.ZERO_SHOT

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Gradient clipping at 1.0 when training (the original's); devices, precision, epochs stay the user's."""
        return {"gradient_clip_val": 1.0} if self.training_options.parts else {}

    def save_anomalygpt_delta(self, path: str | Path) -> Path:
        """Write the decoder (and prompt learner) as an original-format AnomalyGPT delta."""
        return save_anomalygpt_delta(self.model, path)

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        resize_mode: ResizeMode = "crop",
        normalisation: tuple[Sequence[float], Sequence[float]] = (CLIP_MEAN, CLIP_STD),
    ) -> PreProcessor:
        """Bicubic resize (short side + centre crop, or squash), then the tower's ``(mean, std)`` (CLIP's)."""
        if image_size and image_size[0] != image_size[1]:
            msg = f"image_size={image_size}: AnomalyGPT's encoder takes square inputs."
            raise OptionError(msg)
        side = image_size[0] if image_size else DEFAULT_IMAGE_SIZE
        return build_pre_processor(side, resize_mode, *normalisation)

    def configure_post_processor(self) -> PostProcessor:
        """Anomalib's default: thresholds and min-max normalisation fitted on validation."""
        return PostProcessor()

    @classmethod
    def configure_evaluator(cls, explain: bool = False, accuracy_rule: AccuracyRule = "anomalib") -> Evaluator:
        """Anomalib's image/pixel AUROC (on raw scores and maps) and F1, plus answer accuracy when explaining.

        ``accuracy_rule`` counts the answers (see :func:`~anomalib_agpt.explanation.metrics.answer_is_right`).
        """
        evaluator = on_raw_scores(AnomalibModule.configure_evaluator())
        if explain:
            evaluator.test_metrics.append(AnswerAccuracy(rule=accuracy_rule, strict=False))
            evaluator.test_metrics.append(ExplanationGrounding(strict=False))
        return evaluator

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's components, with a :class:`RawScoreKeeper` ahead of the post-processor."""
        return [RawScoreKeeper(), *super().configure_callbacks()]

    @classmethod
    def configure_visualizer(cls) -> ExplanationVisualizer:
        """Anomalib's image visualizer plus the explanation text under the panels."""
        return ExplanationVisualizer()

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Score the batch; the post-processor fits its thresholds on these outputs.

        Lightning's sanity check runs before the first training step and its outputs are dropped: there,
        learned anchors may still be untrained.
        """
        del args, kwargs
        trainer = self._trainer
        if trainer is not None and trainer.sanity_checking:
            with self.model.untrained_anchors_allowed():
                return batch.update(**self.model(batch.image)._asdict())
        return batch.update(**self.model(batch.image)._asdict())

    def test_step(self, batch: Batch, *args, **kwargs) -> Batch:
        """Score, and with ``explain`` answer the question, from one pass of the encoder."""
        del args, kwargs
        if not self.explain:
            return batch.update(**self.model(batch.image)._asdict())
        scores, answers = self.model.predict_and_explain(batch.image, self.asked_question())
        batch.update(**scores._asdict())
        batch.explanation = answers
        if self.explanation_options.label_source == "answer":
            batch.pred_label = torch.tensor([is_anomalous_answer(a) for a in answers], device=batch.image.device)
        return batch

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Batch:
        """As ``test_step``."""
        del batch_idx, dataloader_idx
        return self.test_step(batch)

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
            decoding = protocol_choices.decoding(self.protocol, family, **self._decoding(self.explanation_options))
            self.model.generation = decoding.as_generate_kwargs()
        self.model.set_class_name(self._class_name_from_context())
        if self.few_shot_options.k_shot and self.model.num_reference_images == 0:
            self.model.set_references(self._reference_images())
        if load_llm:
            self._load_head()

    def setup(self, stage: str) -> None:
        """Training's set-up (:class:`FittingHooks`), and under ``protocol='paper'`` the original's mask rule.

        The mask rule is set here, before any loop starts its dataloader workers (they copy the dataset
        when they start; the evaluation hooks run after that): the datamodule resizes masks with the
        pre-processor's own resize object.
        """
        super().setup(stage)
        threshold = protocol_choices.mask_threshold(self.protocol, dataset_family(self._datamodule()))
        if threshold is None or self.pre_processor is None:
            return
        for step in extract_transforms_by_type(self.pre_processor.transform, ClipResize):
            step.mask_threshold = threshold

    def _load_head(self) -> None:
        """The explanation head; a prompt learner trained from scratch starts with N(0, 1) base prompts.

        Only when the head is created without trained weights waiting for it (a restored checkpoint's).
        """
        created = self.model.llm_head is None and not self.model.pending_head_state
        head = self.model.ensure_llm_head()
        if created and self._prompt_learner_from_scratch:
            head.prompt_learner.draw_base_prompts(self.seed, ORIGINAL_BASE_PROMPT_STD)

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
        self.model.check_anchors_trained()  # the traced graph cannot refuse
        with self.model.scores_only(), _quiet_loggers(ONNX_PASS_LOGGERS):
            return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    def to_torch(self, *args, **kwargs) -> Path:
        """Pickle the module for ``TorchInferencer`` without the LLM (text never breaks export)."""
        self.model.set_class_name(self._class_name_from_context())
        self.model.check_anchors_trained()
        with self.model.scores_only():
            return super().to_torch(*args, **kwargs)
