"""AnomalyGPT's tensor path: image -> encoder (once) -> zero-/few-shot map -> score."""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components.base import DynamicBufferMixin
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt.data.class_names import DEFAULT_CLASS_NAME
from anomalib_agpt.errors import OptionError, check_choice
from anomalib_agpt.explanation.llm_head import LLMHead, LLMHeadSpec
from anomalib_agpt.explanation.questions import default_question
from anomalib_agpt.model.anomaly_maps import (
    AnomalyDecoder,
    few_shot_map,
    few_shot_similarity,
    normalise_memory,
    zero_shot_logits,
    zero_shot_map,
)
from anomalib_agpt.model.dinov2_encoder import Dinov2VisionEncoder
from anomalib_agpt.model.encoder import (
    NUM_TAPS,
    ImageBindTextEncoder,
    ImageBindVisionEncoder,
    VisionFeatures,
    build_encoders,
)
from anomalib_agpt.model.prompting import prompt_sentences
from anomalib_agpt.weights import checkpoints as ckpt

logger = logging.getLogger(__name__)

FewShotMode = Literal["replace", "fuse"]
VisionEncoder = ImageBindVisionEncoder | Dinov2VisionEncoder
EncoderDtype = Literal["fp32", "fp16", "bf16", "auto"]
_ENCODER_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_encoder_dtype(encoder_dtype: str) -> None:
    """The one rule for ``encoder_dtype``'s values (also asked before any weights load)."""
    check_choice("encoder_dtype", encoder_dtype, typing.get_args(EncoderDtype))


def resolve_encoder_dtype(encoder_dtype: EncoderDtype, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA (half the towers' memory, tensor cores), fp32 elsewhere (the reference's)."""
    check_encoder_dtype(encoder_dtype)
    if encoder_dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _ENCODER_DTYPES[encoder_dtype]


ANCHOR_SPLIT = 1e-3
"""How far apart the learned anchors start (the logits' scale is 100: apart by more, patches start saturated)."""


def learned_anchors_start(embed_dim: int, seed: int) -> torch.Tensor:
    """``(2, D)`` unit anchors [normal, abnormal] that start (almost) together: every patch starts near p = 0.5.

    With the fixed logit scale of 100, two random unit anchors would put most patches' logits 10+ apart,
    where the focal and dice gradients vanish (``log(p + 1e-5)`` is flat below 1e-5): a decoder trained from
    such a start collapses to "all normal" on the first steps and never leaves it. Anchors that start
    together give every patch p ~= 0.5 and full gradients.
    """
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, embed_dim, generator=generator)
    split = ANCHOR_SPLIT * torch.randn(2, embed_dim, generator=generator)
    return F.normalize(shared + split * shared.norm(), dim=-1)


class AnomalyGPTModel(DynamicBufferMixin):
    """Encoder, decoder, class text features and reference memory; ``forward`` -> ``InferenceBatch``.

    Text features and the (normalised) reference memory are buffers, so Lightning checkpoints and
    exported models carry them and queries never recompute them. A vision tower without a text tower
    (DINOv2) compares with learned anchors instead: ``text_features`` is then a parameter that trains
    with the decoder, and ``anchors_trained`` says whether it has (an untrained zero-shot map is refused).
    """

    def __init__(
        self,
        vision_encoder: VisionEncoder,
        text_encoder: ImageBindTextEncoder | None,
        decoder: AnomalyDecoder,
        few_shot_mode: FewShotMode = "replace",
        anchor_seed: int = 0,
    ) -> None:
        super().__init__()
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.few_shot_mode = few_shot_mode
        width = vision_encoder.width
        embed_dim = decoder.fc[0].weight.shape[0]
        if text_encoder is None:
            self.text_features = torch.nn.Parameter(learned_anchors_start(embed_dim, anchor_seed), requires_grad=False)
            self.register_buffer("anchors_trained", torch.tensor(False))
        else:
            self.register_buffer("text_features", torch.zeros(2, embed_dim))
        self.register_buffer("reference_memory", torch.zeros(NUM_TAPS, 0, width))
        self.class_name: str | None = None
        self.llm_head: LLMHead | None = None
        self.llm_spec: LLMHeadSpec | None = None
        self.anomalygpt_source: str | None = None
        self.pending_head_state: dict[str, torch.Tensor] = {}
        """Trained head weights from a checkpoint, applied when the head loads (it loads lazily)."""
        self.generation: dict[str, float | int | bool] = {"max_new_tokens": 128}
        self.encoder_dtype: EncoderDtype = "fp32"
        """dtype the ImageBind towers run in (see :meth:`configure_encoder`); fp32 is the reference's."""
        self.compile_encoder = False
        """Run the vision tower through ``torch.compile`` (compiled on first use)."""
        self._compiled_encoder: Callable[[torch.Tensor], VisionFeatures] | None = None
        self._eager_encoder = False
        """Set while exporting: torch.export and pickling need the plain module."""
        self._untrained_anchors_allowed = False
        self._text_feature_cache: dict[str, torch.Tensor] = {}
        """Text features of other classes than ``class_name`` (multi-class training), each computed once."""

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (``to_torch``, ``deepcopy``) without the compiled forward; it is rebuilt on first use."""
        state = super().__getstate__()
        state["_compiled_encoder"] = None
        state["_text_feature_cache"] = {}  # recomputable, and not part of the model
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also models pickled before the encoder options existed (eager fp32, as they ran)."""
        defaults = {
            "encoder_dtype": "fp32",
            "compile_encoder": False,
            "_eager_encoder": False,
            "_text_feature_cache": {},
            "_untrained_anchors_allowed": False,
        }
        super().__setstate__(defaults | state | {"_compiled_encoder": None})

    # ----------------------------------------------------------------------------------------
    # Construction from the original files
    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_state_dicts(
        cls,
        imagebind: Mapping[str, torch.Tensor],
        anomalygpt: Mapping[str, torch.Tensor],
        vision_heads: int = 16,
        text_heads: int = 16,
        few_shot_mode: FewShotMode = "replace",
        sources: tuple[str, str] = ("<imagebind state dict>", "<anomalygpt state dict>"),
    ) -> AnomalyGPTModel:
        """Build from state dicts in the original formats (sizes read from their shapes)."""
        imagebind_source, anomalygpt_source = sources
        ckpt.expect_kind(imagebind, ckpt.IMAGEBIND, imagebind_source, "imagebind_checkpoint")
        ckpt.expect_kind(anomalygpt, ckpt.ANOMALYGPT, anomalygpt_source, "anomalygpt_checkpoint")
        sizes = ckpt.imagebind_sizes(imagebind, imagebind_source)
        vision_state, text_state, logit_scale = ckpt.convert_imagebind(imagebind, imagebind_source)
        vision, text = build_encoders(
            sizes,
            vision_state,
            text_state,
            logit_scale,
            vision_heads,
            text_heads,
            imagebind_source,
        )
        decoder_state, _prompt_learner_state = ckpt.split_anomalygpt_delta(anomalygpt, anomalygpt_source)
        num_layers, in_width, out_dim = ckpt.decoder_sizes(decoder_state, anomalygpt_source)
        if (num_layers, in_width, out_dim) != (NUM_TAPS, sizes.vision_width, sizes.embed_dim):
            msg = (
                f"AnomalyGPT delta '{anomalygpt_source}' has a decoder of {num_layers} x Linear({in_width} -> "
                f"{out_dim}); the ImageBind checkpoint '{imagebind_source}' needs {NUM_TAPS} x "
                f"Linear({sizes.vision_width} -> {sizes.embed_dim}). Are the two files from the same model?"
            )
            raise ckpt.CheckpointError(msg)
        decoder = AnomalyDecoder(num_layers, in_width, out_dim)
        ckpt.load_strict(decoder, decoder_state, f"AnomalyGPT delta '{anomalygpt_source}' (image_decoder)")
        decoder.requires_grad_(False)
        return cls(vision, text, decoder, few_shot_mode=few_shot_mode)

    @classmethod
    def from_files(
        cls,
        imagebind_checkpoint: str | Path,
        anomalygpt_checkpoint: str | Path,
        vision_heads: int = 16,
        text_heads: int = 16,
        few_shot_mode: FewShotMode = "replace",
    ) -> AnomalyGPTModel:
        """Build from ``imagebind_huge.pth`` and an AnomalyGPT delta, memory-mapped."""
        imagebind_path = ckpt.resolve_weight_path(imagebind_checkpoint, "imagebind_checkpoint")
        anomalygpt_path = ckpt.resolve_weight_path(anomalygpt_checkpoint, "anomalygpt_checkpoint")
        model = cls.from_state_dicts(
            ckpt.load_state_dict_file(imagebind_path, "imagebind_checkpoint"),
            ckpt.load_state_dict_file(anomalygpt_path, "anomalygpt_checkpoint"),
            vision_heads=vision_heads,
            text_heads=text_heads,
            few_shot_mode=few_shot_mode,
            sources=(str(imagebind_path), str(anomalygpt_path)),
        )
        model.anomalygpt_source = str(anomalygpt_path)
        return model

    @classmethod
    def with_learned_anchors(
        cls,
        vision_encoder: Dinov2VisionEncoder,
        seed: int = 0,
        few_shot_mode: FewShotMode = "replace",
    ) -> AnomalyGPTModel:
        """A tower without text (DINOv2): a fresh decoder into the tower's own width and learned anchors.

        Both start from ``seed``; the zero-shot map needs them trained (``training.trainable=[decoder]``).
        """
        torch.manual_seed(seed)
        decoder = AnomalyDecoder(NUM_TAPS, vision_encoder.width, vision_encoder.embed_dim)
        decoder.requires_grad_(False)
        return cls(vision_encoder, None, decoder, few_shot_mode=few_shot_mode, anchor_seed=seed)

    @property
    def learned_anchors(self) -> bool:
        """Whether the zero-shot map compares with learned anchors (no text tower) instead of class text."""
        return self.text_encoder is None

    # ----------------------------------------------------------------------------------------
    # Encoder options: dtype and torch.compile
    # ----------------------------------------------------------------------------------------
    def configure_encoder(self, dtype: EncoderDtype = "fp32", compile: bool = False) -> None:
        """Choose the towers' dtype and whether the vision tower is compiled; both apply on the next call.

        ``fp16``/``bf16`` cast the towers' weights (half the memory); features are cast back to
        float32 before any map, so maps, scores and the reference memory stay float32.
        """
        check_encoder_dtype(dtype)
        self.encoder_dtype = dtype
        self.compile_encoder = bool(compile)
        self._compiled_encoder = None

    def _encoder_in_dtype(self, device: torch.device) -> torch.dtype:
        """Cast both towers to ``encoder_dtype`` for ``device`` if they are not yet (a no-op in fp32)."""
        dtype = resolve_encoder_dtype(self.encoder_dtype, device)
        if self.vision_encoder.dtype != dtype:
            logger.info("AnomalyGPT: running the encoder towers in %s", dtype)
            self.vision_encoder.to(dtype)
            if self.text_encoder is not None:
                self.text_encoder.to(dtype)
        return dtype

    def encode(self, images: torch.Tensor) -> VisionFeatures:
        """One pass of the vision tower in ``encoder_dtype`` (compiled if asked); float32 features."""
        dtype = self._encoder_in_dtype(images.device)
        encoder: Callable[[torch.Tensor], VisionFeatures] = self.vision_encoder
        if self.compile_encoder and not self._eager_encoder and not torch.compiler.is_compiling():
            if self._compiled_encoder is None:
                # The bound forward, not the module: parameters keep their names for checkpoints and export.
                self._compiled_encoder = torch.compile(self.vision_encoder.forward)
            encoder = self._compiled_encoder
        features = encoder(images)
        if dtype == torch.float32:
            return features
        return VisionFeatures(
            patch_tokens=tuple(tokens.float() for tokens in features.patch_tokens),
            embedding=features.embedding.float(),
        )

    # ----------------------------------------------------------------------------------------
    # Set-up: text features and references, computed once
    # ----------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of the square input the encoder was trained for (224 for ImageBind-Huge)."""
        return self.vision_encoder.image_size

    @property
    def pixel_normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` the tower expects its input normalised with (CLIP's for ImageBind, ImageNet's for DINOv2)."""
        return self.vision_encoder.pixel_mean, self.vision_encoder.pixel_std

    @torch.no_grad()
    def class_text_features(self, class_name: str) -> torch.Tensor:
        """``(2, D)`` [normal, abnormal]: sentence embeddings averaged per group, renormalised."""
        if self.text_encoder is None:
            msg = "this AnomalyGPT has no text tower (a DINOv2 backbone): its anchors are learned, not class text."
            raise OptionError(msg)
        normal, abnormal = prompt_sentences(class_name)
        self._encoder_in_dtype(self.text_features.device)
        embeddings = self.text_encoder.encode(normal + abnormal).float()
        groups = (embeddings[: len(normal)], embeddings[len(normal) :])
        return torch.stack([F.normalize(group.mean(dim=0), dim=-1) for group in groups])

    @torch.inference_mode(False)  # buffers set here must stay trainable and loadable (see below)
    def set_class_name(self, class_name: str | None) -> None:
        """Compute and keep the text features for ``class_name``, once.

        ``None`` keeps the current class (``object`` when there is none yet). Lightning calls this
        from hooks that run under ``torch.inference_mode``; a buffer made there would be an inference
        tensor that no later ``load_state_dict`` or training step may update in place.
        """
        class_name = class_name or self.class_name or DEFAULT_CLASS_NAME
        if class_name == self.class_name:
            return
        if self.learned_anchors:  # the same learned anchors serve every class
            self.class_name = class_name
            return
        self.text_features = self.text_features_for(class_name).clone()  # the buffer is loaded in place
        self.class_name = class_name

    @torch.inference_mode(False)  # a normal tensor, as set_class_name's
    def text_features_for(self, class_name: str) -> torch.Tensor:
        """``(2, D)`` text features of ``class_name`` without changing the model's class: computed once per class.

        The model's own class gives its ``text_features`` buffer; others (a multi-class train set's
        classes) are cached outside the state dict, as the text tower is frozen.
        """
        if class_name == self.class_name or self.learned_anchors:
            return self.text_features
        cached = self._text_feature_cache.get(class_name)
        if cached is None:
            logger.info("AnomalyGPT: computing text features for class name '%s'", class_name)
            cached = self.class_text_features(class_name)
        cached = cached.to(self.text_features)  # a no-op unless the model moved since
        self._text_feature_cache[class_name] = cached
        return cached

    @torch.inference_mode(False)  # a normal tensor even when called from an inference-mode hook
    @torch.no_grad()
    def set_references(self, images: torch.Tensor) -> None:
        """Set the few-shot memory from pre-processed ``(k, 3, S, S)`` normal images (encoded once)."""
        if images.ndim != 4 or images.shape[0] == 0:
            msg = f"set_references needs a non-empty (k, 3, H, W) batch of normal images, got {tuple(images.shape)}"
            raise OptionError(msg)
        features = self.encode(images.to(self.reference_memory.device))
        self.reference_memory = normalise_memory(features.patch_tokens).to(self.reference_memory.dtype)

    @property
    def num_reference_images(self) -> int:
        """How many reference images the few-shot memory holds (0: zero-shot)."""
        tokens_per_image = self.vision_encoder.grid_size**2
        return self.reference_memory.shape[1] // tokens_per_image

    # ----------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------
    def anomaly_map(self, features: VisionFeatures, size: tuple[int, int]) -> torch.Tensor:
        """Final ``(B, 1, H, W)`` map from encoder features: zero-shot, few-shot, or their mean."""
        self.set_class_name(None)  # text features of 'object' when no class was set (a no-op once set)
        has_references = self.reference_memory.shape[1] > 0
        if has_references and self.few_shot_mode == "replace":
            return few_shot_map(few_shot_similarity(features.patch_tokens, self.reference_memory), size)
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):  # export checks before tracing
            self.check_anchors_trained()
        logits = zero_shot_logits(self.decoder(features.patch_tokens), self.text_features)
        zero_shot = zero_shot_map(logits, size)
        if not has_references:
            return zero_shot
        few_shot = few_shot_map(few_shot_similarity(features.patch_tokens, self.reference_memory), size)
        return (zero_shot + few_shot) / 2

    def check_anchors_trained(self) -> None:
        """Refuse a zero-shot map from learned anchors that never trained: it would be noise, not a map."""
        replaced = self.reference_memory.shape[1] > 0 and self.few_shot_mode == "replace"
        if replaced or not self.learned_anchors or self._untrained_anchors_allowed:
            return
        if not bool(self.anchors_trained):
            msg = (
                "a zero-shot map on a backbone without a text tower (weights.backbone) compares with learned "
                "anchors, and these have not trained: train it (training.trainable=[decoder, ...]) or give "
                "few_shot.k_shot reference images."
            )
            raise OptionError(msg)

    @contextmanager
    def untrained_anchors_allowed(self) -> Iterator[None]:
        """Allow maps from untrained anchors for the block: Lightning's sanity check, whose outputs are dropped."""
        self._untrained_anchors_allowed = True
        try:
            yield
        finally:
            self._untrained_anchors_allowed = False

    def mark_anchors_trained(self) -> None:
        """Record that the learned anchors (and decoder) took a training step: the zero-shot map is allowed."""
        if self.learned_anchors:
            self.anchors_trained.fill_(True)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Pre-processed ``(B, 3, S, S)`` images -> ``InferenceBatch(pred_score, anomaly_map)``."""
        return self.scores(self.encode(images), (images.shape[-2], images.shape[-1]))

    def scores(self, features: VisionFeatures, size: tuple[int, int]) -> InferenceBatch:
        """Map and image score (the map's maximum) from encoder features."""
        anomaly_map = self.anomaly_map(features, size)
        return InferenceBatch(pred_score=anomaly_map.flatten(1).amax(dim=1), anomaly_map=anomaly_map)

    # ----------------------------------------------------------------------------------------
    # Explanations (the LLM head loads on first use)
    # ----------------------------------------------------------------------------------------
    @torch.inference_mode(False)  # the head's weights must not be inference tensors (they may train)
    def ensure_llm_head(self) -> LLMHead:
        """The explanation head, loaded from ``llm_spec`` the first time it is needed."""
        if self.llm_head is None:
            if self.llm_spec is None:
                msg = "explanations need llm=<LLM folder> (and pandagpt_checkpoint for the released weights)."
                raise OptionError(msg)
            prompt_state: dict[str, torch.Tensor] = {}
            if self.llm_spec.anomalygpt_checkpoint is not None:
                path = ckpt.resolve_weight_path(self.llm_spec.anomalygpt_checkpoint, "anomalygpt_checkpoint")
                delta = ckpt.load_state_dict_file(path, "anomalygpt_checkpoint")
                _, prompt_state = ckpt.split_anomalygpt_delta(delta, path)
            device = self.reference_memory.device
            logger.info("AnomalyGPT: loading the explanation LLM from %s", self.llm_spec.llm)
            head = LLMHead.from_spec(self.llm_spec, prompt_state, self.vision_encoder.embed_dim, device)
            if self.pending_head_state:
                ckpt.load_strict_subset(head, self.pending_head_state, "Lightning checkpoint (explanation head)")
                self.pending_head_state = {}
            self.llm_head = head
        return self.llm_head

    @contextmanager
    def scores_only(self) -> Iterator[None]:
        """Temporarily detach the LLM head and run the encoder eagerly (export and pickling: scores path only)."""
        head = self._modules.pop("llm_head", None)
        pending, self.pending_head_state = self.pending_head_state, {}
        self.llm_head = None
        self._eager_encoder = True
        try:
            yield
        finally:
            self.llm_head = head
            self.pending_head_state = pending
            self._eager_encoder = False

    def _questions(self, question: str | Sequence[str] | None, batch_size: int) -> list[str]:
        if question is None:
            question = default_question(self.class_name or DEFAULT_CLASS_NAME)
        questions = [question] * batch_size if isinstance(question, str) else list(question)
        if len(questions) != batch_size or any(not q.strip() for q in questions):
            msg = f"need one non-empty question per image ({batch_size}), got {questions!r}"
            raise OptionError(msg)
        return questions

    @torch.no_grad()
    def build_llm_inputs(
        self,
        images: torch.Tensor,
        question: str | Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs_embeds, attention_mask)`` of the LLM for pre-processed images (left-padded)."""
        features = self.encode(images)
        anomaly_map = self.anomaly_map(features, (images.shape[-2], images.shape[-1]))
        return self.llm_inputs(features, anomaly_map, question)

    def llm_inputs(
        self,
        features: VisionFeatures,
        anomaly_map: torch.Tensor,
        question: str | Sequence[str] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM inputs from already computed features and map (nothing is encoded again)."""
        questions = self._questions(question, anomaly_map.shape[0])
        return self.ensure_llm_head().build_inputs(features.embedding, anomaly_map, questions)

    @torch.no_grad()
    def predict_and_explain(
        self,
        images: torch.Tensor,
        question: str | Sequence[str] | None = None,
    ) -> tuple[InferenceBatch, list[str]]:
        """Scores and answers for a batch, from ONE pass of the encoder."""
        features = self.encode(images)
        scores = self.scores(features, (images.shape[-2], images.shape[-1]))
        inputs_embeds, attention_mask = self.llm_inputs(features, scores.anomaly_map, question)
        return scores, self.ensure_llm_head().generate(inputs_embeds, attention_mask, **self.generation)

    def explain(self, images: torch.Tensor, question: str | Sequence[str] | None = None) -> list[str]:
        """Answers to ``question`` (default: the class's anomaly question) for pre-processed images."""
        return self.predict_and_explain(images, question)[1]
